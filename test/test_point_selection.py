"""Tracking's capped point set: spread over the image, not the first points of a dense corner."""
import numpy as np

from nre_ros.maps.retrieval import SPREAD_GRID, spread_over_image

SIZE = (640, 480)


def _cells(uv, grid=SPREAD_GRID):
    return set(map(tuple, np.floor(uv / SIZE * grid).astype(int)))


def test_a_dense_corner_does_not_take_the_whole_cap():
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 60, size=(1000, 2))                 # all in the top-left cell
    spread = rng.uniform(0, 1, size=(200, 2)) * SIZE
    uv = np.concatenate([corner, spread])
    valid = np.ones(len(uv), bool)
    idx = spread_over_image(uv, valid, SIZE, 100)
    assert len(idx) == 100 and len(np.unique(idx)) == 100 and np.all(np.diff(idx) > 0)
    assert len(_cells(uv[:100])) == 1                           # the first 100 points: one cell
    assert len(_cells(uv[idx])) == len(_cells(uv))              # the selection: every cell
    assert np.sum(idx < 1000) <= 100 // 48 + 2                  # the corner gets its share only


def test_round_robin_takes_each_cells_first_points_in_order():
    gx, gy = SPREAD_GRID
    centres = (np.stack(np.meshgrid(np.arange(gx), np.arange(gy)), -1).reshape(-1, 2) + 0.5) \
        / SPREAD_GRID * SIZE
    uv = np.concatenate([centres, centres + 1.0, centres + 2.0])   # 3 points per cell
    valid = np.ones(len(uv), bool)
    n = gx * gy
    np.testing.assert_array_equal(spread_over_image(uv, valid, SIZE, n), np.arange(n))
    np.testing.assert_array_equal(spread_over_image(uv, valid, SIZE, 2 * n), np.arange(2 * n))


def test_points_off_the_image_come_last():
    uv = np.array([[10.0, 10.0], [-50.0, 20.0], [600.0, 400.0], [700.0, 20.0], [20.0, 12.0]])
    valid = np.array([True, False, True, False, True])
    np.testing.assert_array_equal(spread_over_image(uv, valid, SIZE, 3), [0, 2, 4])
    np.testing.assert_array_equal(spread_over_image(uv, valid, SIZE, 4), [0, 1, 2, 4])
    assert len(spread_over_image(uv, valid, SIZE, 10)) == 5
