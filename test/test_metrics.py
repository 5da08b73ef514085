import numpy as np
import pytest
from scipy.linalg import expm

from nre_ros.eval.metrics import errors, left_increment, nees, summarize
from nre_ros.geometry import make_transform, se3_log, skew, so3_exp


def hat(xi):
    M = np.zeros((4, 4))
    M[:3, :3] = skew(xi[3:])
    M[:3, 3] = xi[:3]
    return M


def test_se3_log_inverts_expm():
    xi = np.array([0.3, -0.1, 0.7, 0.4, -0.9, 0.2])
    np.testing.assert_allclose(se3_log(expm(hat(xi))), xi, atol=1e-10)
    np.testing.assert_allclose(se3_log(np.eye(4)), np.zeros(6), atol=1e-12)


def test_hand_computed_recall_and_medians():
    T_gt = np.stack([np.eye(4)] * 5)
    shift = lambda d: make_transform(np.eye(3), [d, 0, 0])          # noqa: E731
    rot = lambda deg: make_transform(so3_exp([0, 0, np.radians(deg)]), [0, 0, 0])  # noqa: E731
    T_est = [shift(0.1), shift(0.4), rot(3.0), shift(6.0), None]
    t, r = errors(T_est, T_gt)
    np.testing.assert_allclose(t[:4], [0.1, 0.4, 0.0, 6.0], atol=1e-9)
    np.testing.assert_allclose(r[:4], [0, 0, 3.0, 0], atol=1e-9)
    assert np.isinf(t[4])
    s = summarize(t, r, ms=[10, 20, 30, 40, 50])
    assert s.recall == (pytest.approx(1 / 5), pytest.approx(3 / 5), pytest.approx(3 / 5))
    assert s.num_published == 4
    assert s.median_t_m == pytest.approx(0.25)        # median of 0.1, 0.4, 0.0, 6.0
    assert s.false_fix_rate == pytest.approx(1 / 4)   # the 6 m fix
    assert s.ms_p50 == pytest.approx(30)


def test_nees_of_consistent_gaussian_errors_is_six():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6)) * 0.01
    cov = A @ A.T + 1e-5 * np.eye(6)
    T_gt = make_transform(so3_exp([0.2, 0.1, -0.3]), [1.0, 2.0, 3.0])
    L = np.linalg.cholesky(cov)
    values = [nees(expm(hat(L @ rng.normal(size=6))) @ T_gt, T_gt, cov) for _ in range(2000)]
    assert np.mean(values) == pytest.approx(6.0, rel=0.07)
    xi = np.array([0.01, 0, 0, 0, 0, 0.02])
    np.testing.assert_allclose(left_increment(expm(hat(xi)) @ T_gt, T_gt), xi, atol=1e-12)
