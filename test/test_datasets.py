import cv2
import numpy as np
import pytest

from nre_ros.datasets import TumSequence, read_tum_poses, write_tum_poses
from nre_ros.errors import InputError
from nre_ros.geometry import invert, is_rigid, transform_points


def test_fr1_rpy_layout(fr1_rpy):
    assert len(fr1_rpy) == 238
    assert all(is_rigid(f.T_world_cam) for f in fr1_rpy.frames)
    assert len(fr1_rpy.split('hard_map')) == 142 and len(fr1_rpy.split('hard_query')) == 96
    assert fr1_rpy.camera.has_distortion


def test_cabinet_layout(cabinet):
    assert len(cabinet) == 58
    assert len(cabinet.split('map')) == 44 and len(cabinet.split('query')) == 14
    assert not cabinet.camera.has_distortion


def _reproject_depth(seq, a, b, T_b_a):
    """Pixels of frame a with depth, moved into frame b: (uv_a, uv_b, z_b, depth_b_at_uv_b)."""
    depth_a = seq.load_depth(a)
    v, u = np.nonzero(depth_a > 0)
    sel = np.random.default_rng(0).choice(len(u), 5000, replace=False)
    uv_a = np.stack([u[sel], v[sel]], 1).astype(np.float64)
    pts_b = transform_points(T_b_a, seq.camera.unproject(uv_a, depth_a[v[sel], u[sel]]))
    uv_b, valid = seq.camera.project(pts_b)
    ui, vi = np.round(uv_b[valid]).astype(int).T
    ui, vi = np.clip(ui, 0, 639), np.clip(vi, 0, 479)
    depth_b = seq.load_depth(b)[vi, ui]
    ok = depth_b > 0
    return np.abs(depth_b[ok] - pts_b[valid, 2][ok]) / depth_b[ok]


def test_depth_reprojection_with_ground_truth_poses(fr1_rpy):
    """Depth of frame 0 moved into frame 1 with the GT poses agrees with frame 1's depth."""
    a, b = fr1_rpy[0], fr1_rpy[1]
    T_b_a = invert(b.T_world_cam) @ a.T_world_cam
    rel_err = _reproject_depth(fr1_rpy, a, b, T_b_a)
    rel_err_identity = _reproject_depth(fr1_rpy, a, b, np.eye(4))
    assert np.median(rel_err) < 0.015
    assert np.median(rel_err_identity) > 3 * np.median(rel_err)


@pytest.mark.parametrize('ia, ib', [(10, 11), (100, 101), (150, 152)])
def test_ground_truth_poses_predict_sift_matches(fr1_rpy, ia, ib):
    """A keypoint of frame a lifted with its depth lands within a few pixels of its SIFT match."""
    a, b = fr1_rpy[ia], fr1_rpy[ib]
    ga = cv2.cvtColor(fr1_rpy.load_rgb(a), cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(fr1_rpy.load_rgb(b), cv2.COLOR_RGB2GRAY)
    sift = cv2.SIFT_create(2000)
    ka, da = sift.detectAndCompute(ga, None)
    kb, db = sift.detectAndCompute(gb, None)
    matches = [m for m, n in cv2.BFMatcher().knnMatch(da, db, k=2) if m.distance < 0.7 * n.distance]
    uv_a = np.array([ka[m.queryIdx].pt for m in matches])
    uv_b = np.array([kb[m.trainIdx].pt for m in matches])
    depth = fr1_rpy.load_depth(a)[np.round(uv_a[:, 1]).astype(int), np.round(uv_a[:, 0]).astype(int)]
    ok = depth > 0
    T_b_a = invert(b.T_world_cam) @ a.T_world_cam
    pred, valid = fr1_rpy.camera.project(transform_points(
        T_b_a, fr1_rpy.camera.unproject(uv_a[ok], depth[ok])))
    err = np.linalg.norm(pred - uv_b[ok], axis=1)[valid]
    assert len(err) > 50
    assert np.median(err) < 5.0   # README: GT accuracy ~1-2 deg (motion blur, sync)
    pred_id, _ = fr1_rpy.camera.project(fr1_rpy.camera.unproject(uv_a[ok], depth[ok]))
    assert np.median(np.linalg.norm(pred_id - uv_b[ok], axis=1)) > 5 * np.median(err)


def test_tum_file_round_trip(tmp_path, fr1_rpy):
    stamps = np.array([f.timestamp for f in fr1_rpy.frames[:10]])
    poses = np.stack([f.T_world_cam for f in fr1_rpy.frames[:10]])
    write_tum_poses(tmp_path / 'p.txt', stamps, poses)
    s2, p2 = read_tum_poses(tmp_path / 'p.txt')
    np.testing.assert_allclose(s2, stamps, atol=1e-6)
    np.testing.assert_allclose(p2, poses, atol=1e-7)


def test_bad_trajectory_file(tmp_path):
    (tmp_path / 'bad.txt').write_text('1.0 2.0 3.0\n')
    with pytest.raises(InputError, match='expected 8 values'):
        read_tum_poses(tmp_path / 'bad.txt')
    with pytest.raises(InputError, match='does not exist'):
        TumSequence(tmp_path / 'missing')
