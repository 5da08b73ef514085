"""Pose interpolation (nre_ros.trajectory) and TF chains of a bag (nre_ros.bagio.tf)."""
from __future__ import annotations

import numpy as np
import pytest

from nre_ros.bagio.tf import TfTree
from nre_ros.errors import InputError
from nre_ros.geometry import invert, make_transform, so3_exp
from nre_ros.trajectory import Trajectory


def _motion(t_s: np.ndarray) -> np.ndarray:
    """Constant-rate yaw (0.5 rad/s about a tilted axis) and linear translation: slerp and
    linear interpolation are exact for it."""
    axis = np.array([0.2, -0.3, 1.0]) / np.linalg.norm([0.2, -0.3, 1.0])
    R = so3_exp(0.5 * t_s[:, None] * axis)
    return make_transform(R, np.stack([1 + 0.3 * t_s, -0.2 * t_s, 0.05 * t_s], 1))


def test_interpolation_is_exact_for_uniform_motion_and_respects_tolerance():
    knots = np.array([0.0, 0.1, 0.2, 0.5, 0.6])
    traj = Trajectory.from_seconds(knots + 100, _motion(knots))
    q = np.array([0.0, 0.05, 0.13, 0.3, 0.58, 0.6, 0.63, 0.75, -0.04])
    T, ok = traj.interpolate(np.round((q + 100) * 1e9).astype(np.int64), tolerance_s=0.05)
    # 0.3 is 0.1 s from its nearest pose, 0.75 is 0.15 s past the end: not served
    assert ok.tolist() == [True, True, True, False, True, True, True, False, True]
    inside = ok & (q >= 0) & (q <= 0.6)
    assert np.allclose(T[inside], _motion(q[inside]), atol=1e-9)
    assert np.allclose(T[q == 0.63], _motion(np.array([0.6])))      # held at the end
    assert np.allclose(T[q == -0.04], _motion(np.array([0.0])))


def test_trajectory_sorts_and_rejects_bad_input():
    traj = Trajectory(np.array([3, 1, 2]), _motion(np.array([3.0, 1.0, 2.0])))
    assert traj.stamps_ns.tolist() == [1, 2, 3]
    assert np.allclose(traj.T[0], _motion(np.array([1.0]))[0])
    with pytest.raises(InputError, match='stamps'):
        Trajectory(np.array([1, 2]), _motion(np.array([1.0])))
    empty = Trajectory(np.zeros(0, np.int64), np.zeros((0, 4, 4)))
    assert not empty.interpolate(np.array([5]))[1].any()


def test_tf_chain_composes_static_and_interpolated_dynamic_edges():
    stamps = np.array([0, 1_000_000_000], np.int64)
    T_map_odom = _motion(np.array([0.0, 1.0]))
    T_odom_base = make_transform(so3_exp(np.array([[0, 0, 0.1], [0, 0, 0.3]])),
                                 [[0, 0, 0], [1, 0, 0]])
    T_base_cam = make_transform(so3_exp(np.array([0.0, 0.2, 0.0])), [0.05, 0, 0.1])
    tf = TfTree({('base_link', 'cam'): T_base_cam},
                {('map', 'odom'): Trajectory(stamps, T_map_odom),
                 ('odom', 'base_link'): Trajectory(stamps, T_odom_base)})
    T, ok = tf.lookup('map', 'cam', np.array([0, 500_000_000]), tolerance_s=0.6)
    assert ok.all()
    assert np.allclose(T[0], T_map_odom[0] @ T_odom_base[0] @ T_base_cam)
    mid_odom_base = make_transform(so3_exp(np.array([0, 0, 0.2])), [0.5, 0, 0])
    assert np.allclose(T[1], _motion(np.array([0.5]))[0] @ mid_odom_base @ T_base_cam)
    T_inv, _ = tf.lookup('cam', 'map', np.array([0]), tolerance_s=0.6)
    assert np.allclose(T_inv[0], invert(T[0]))
    assert not tf.lookup('map', 'cam', np.array([3_000_000_000]), tolerance_s=0.6)[1][0]
    with pytest.raises(InputError, match='lidar'):
        tf.lookup('map', 'lidar', np.array([0]))
