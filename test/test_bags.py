"""Bag round trip with rosbags (nre_ros/eval/bags.py): both storage plugins, real images."""
from pathlib import Path

import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence
from nre_ros.errors import InputError
from nre_ros.eval import bags
from nre_ros.geometry import invert, make_transform, so3_exp

REPO = Path(__file__).resolve().parents[1]
DEMO_QUERIES = REPO / 'maps' / 'demo' / 'queries'
DEMO_BAG = REPO / 'maps' / 'demo' / 'queries_bag'


@pytest.fixture(scope='module')
def demo_seq():
    return TumSequence(DEMO_QUERIES)


@pytest.mark.parametrize('storage', bags.STORAGES)
def test_round_trip_real_images(tmp_path, demo_seq, storage):
    out = tmp_path / f'bag_{storage}'
    n = bags.write_sequence_bag(demo_seq, out, storage=storage, every=2)
    assert n == 4
    assert bags.count_images(out) == 4
    frames = list(bags.read_bag(out))
    expected = demo_seq.frames[::2]
    assert [f.stamp_ns for f in frames] == [bags.seconds_to_ns(e.timestamp) for e in expected]
    for f, e in zip(frames, expected):
        np.testing.assert_array_equal(f.rgb, demo_seq.load_rgb(e))
        np.testing.assert_allclose(f.T_world_cam, e.T_world_cam, atol=1e-12)
        np.testing.assert_array_equal(f.camera.K, demo_seq.camera.K)
        np.testing.assert_array_equal(f.camera.dist, demo_seq.camera.dist)
        assert f.depth_m is None
    np.testing.assert_allclose(bags.read_static_tf(out), bags.T_BASE_CAM, atol=1e-12)


def test_stamps_are_exact_microseconds():
    assert bags.seconds_to_ns(1305031229.729064) == 1305031229729064000
    assert bags.seconds_to_ns(0.5) == 500_000_000


@pytest.mark.parametrize('storage', bags.STORAGES)
@pytest.mark.parametrize('encoding', bags.DEPTH_ENCODINGS)
def test_round_trip_depth_odometry_and_undistorted_camera(tmp_path, storage, encoding):
    rng = np.random.default_rng(1)
    camera = Camera.from_params(32, 24, 30.0, 31.0, 15.5, 11.5)        # no distortion
    samples = []
    for i in range(5):
        T = make_transform(so3_exp(rng.normal(size=3) * 0.3), rng.normal(size=3))
        depth = rng.uniform(0.3, 5.0, size=(24, 32)).astype(np.float32)
        depth[0, :5] = 0.0                                              # invalid pixels
        rgb = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        samples.append(bags.BagSample(1_000_000_000 * (100 + i) + 123, rgb, T, depth))
    drift = bags.OdomDrift(0.05, 2.0)
    bags.write_bag(samples, camera, tmp_path / 'b', storage=storage, depth_encoding=encoding,
                   drift=drift, seed=7)
    frames = list(bags.read_bag(tmp_path / 'b'))
    assert len(frames) == 5
    stamps = np.array([s.stamp_ns for s in samples])
    T_map_base = np.stack([s.T_world_cam for s in samples]) @ invert(bags.T_BASE_CAM)
    T_odom_base, T_map_odom = bags.simulate_odometry(stamps, T_map_base, drift, seed=7)
    for f, s, T_ob, T_mo in zip(frames, samples, T_odom_base, T_map_odom):
        assert f.stamp_ns == s.stamp_ns
        np.testing.assert_array_equal(f.rgb, s.rgb)
        assert f.camera.dist.size == 0
        tol = 0.0 if encoding == '32FC1' else 0.0005 + 1e-6              # mm quantization
        np.testing.assert_allclose(f.depth_m, s.depth_m, atol=tol, rtol=0)
        np.testing.assert_allclose(f.T_odom_base, T_ob, atol=1e-12)
        # map -> odom composed with odom -> base (at the image stamp) is the true base pose
        np.testing.assert_allclose(T_mo @ f.T_odom_base, f.T_world_cam @ invert(bags.T_BASE_CAM),
                                   atol=1e-9)
    np.testing.assert_allclose(frames[0].T_odom_base, np.eye(4), atol=1e-12)
    assert not np.allclose(T_map_odom[-1], T_map_odom[0], atol=1e-3)    # it does drift


def test_write_rejects_bad_input(tmp_path):
    camera = Camera.from_params(4, 4, 3.0, 3.0, 1.5, 1.5)
    s = bags.BagSample(10, np.zeros((4, 4, 3), np.uint8), np.eye(4))
    with pytest.raises(InputError, match='increasing'):
        bags.write_bag([s, s], camera, tmp_path / 'a')
    with pytest.raises(InputError, match='storage'):
        bags.write_bag([s], camera, tmp_path / 'b', storage='rosbag1')
    bags.write_bag([s], camera, tmp_path / 'c')
    with pytest.raises(InputError, match='exists'):
        bags.write_bag([s], camera, tmp_path / 'c')
    with pytest.raises(InputError, match='no topic'):
        list(bags.read_bag(tmp_path / 'c', image_topic='/nope'))


def test_shipped_demo_bag_matches_demo_queries(demo_seq):
    if not DEMO_BAG.is_dir():
        pytest.skip('demo bag not shipped')
    frames = list(bags.read_bag(DEMO_BAG))
    assert len(frames) == len(demo_seq) == 8
    for f, e in zip(frames, demo_seq.frames):
        assert f.stamp_ns == bags.seconds_to_ns(e.timestamp)
        np.testing.assert_array_equal(f.rgb, demo_seq.load_rgb(e))
        np.testing.assert_allclose(f.T_world_cam, e.T_world_cam, atol=1e-12)
