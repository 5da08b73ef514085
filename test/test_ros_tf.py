"""Own TF buffer (nre_ros.ros.tf): interpolation, chains, static, timeouts, and /tf over DDS."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

import test_ros_helpers as h  # noqa: E402  (sets ROS_DOMAIN_ID before rclpy.init)

from nre_ros.geometry import invert, make_transform, so3_exp, so3_log  # noqa: E402
from nre_ros.ros.tf import TfBuffer, TfLookupError  # noqa: E402

S = 1_000_000_000


def T(rotvec, t):
    return make_transform(so3_exp(np.asarray(rotvec, float)), np.asarray(t, float))


def test_identity_and_unknown_frames():
    buf = TfBuffer()
    np.testing.assert_array_equal(buf.lookup('a', 'a', 5), np.eye(4))
    with pytest.raises(TfLookupError, match="'a' and 'b' are not connected"):
        buf.lookup('a', 'b', 0)
    assert not buf.can_transform('a', 'b', 0)


def test_interpolation_slerp_and_linear():
    buf = TfBuffer()
    buf.set_matrix('odom', 'base', T([0, 0, 0.0], [0, 0, 0]), 10 * S)
    buf.set_matrix('odom', 'base', T([0, 0, 1.0], [2, 0, 0]), 11 * S)
    mid = buf.lookup('odom', 'base', 10 * S + S // 4)
    np.testing.assert_allclose(mid[:3, 3], [0.5, 0, 0], atol=1e-12)
    np.testing.assert_allclose(so3_log(mid[:3, :3]), [0, 0, 0.25], atol=1e-12)
    np.testing.assert_allclose(buf.lookup('odom', 'base', 11 * S)[:3, 3], [2, 0, 0])
    np.testing.assert_allclose(buf.lookup('odom', 'base', 0)[:3, 3], [2, 0, 0])  # latest
    np.testing.assert_allclose(buf.lookup('base', 'odom', 11 * S), invert(T([0, 0, 1], [2, 0, 0])),
                               atol=1e-12)
    with pytest.raises(TfLookupError, match='extrapolate'):
        buf.lookup('odom', 'base', 12 * S)
    with pytest.raises(TfLookupError, match='extrapolate'):
        buf.lookup('odom', 'base', 9 * S)


def test_chain_through_common_ancestor_with_static():
    buf = TfBuffer()
    T_map_odom, T_base_cam, T_base_lidar = T([0, 0, 0.3], [1, 2, 0]), T([0.1, 0.2, 0.3], [0.2, 0,
                                                                                          0.3]), \
        T([0, 0, 1.0], [0, 0.1, 0.5])
    buf.set_matrix('map', 'odom', T_map_odom, 5 * S)
    buf.set_matrix('map', 'odom', T_map_odom, 15 * S)
    for t, x in ((5, 0.0), (15, 1.0)):
        buf.set_matrix('odom', 'base', T([0, 0, 0], [x, 0, 0]), t * S)
    buf.set_matrix('base', 'cam', T_base_cam, 0, is_static=True)
    buf.set_matrix('base', 'lidar', T_base_lidar, 0, is_static=True)
    T_odom_base = T([0, 0, 0], [0.5, 0, 0])
    np.testing.assert_allclose(buf.lookup('map', 'cam', 10 * S),
                               T_map_odom @ T_odom_base @ T_base_cam, atol=1e-12)
    np.testing.assert_allclose(buf.lookup('cam', 'lidar', 123 * S),   # static at any time
                               invert(T_base_cam) @ T_base_lidar, atol=1e-12)
    np.testing.assert_allclose(buf.lookup('lidar', 'map', 10 * S),
                               invert(T_map_odom @ T_odom_base @ T_base_lidar), atol=1e-12)
    assert buf.all_frames() == {'map', 'odom', 'base', 'cam', 'lidar'}


def test_cache_time_and_repeated_stamp():
    buf = TfBuffer(cache_time_s=2.0)
    for t in range(10):
        buf.set_matrix('odom', 'base', T([0, 0, 0], [t, 0, 0]), t * S)
    buf.set_matrix('odom', 'base', T([0, 0, 0], [99, 0, 0]), 9 * S)  # replaces
    assert buf.can_transform('odom', 'base', 7 * S)
    assert not buf.can_transform('odom', 'base', 6 * S)
    np.testing.assert_allclose(buf.lookup('odom', 'base', 9 * S)[:3, 3], [99, 0, 0])


def test_wait_for_times_out_and_wakes_up():
    buf = TfBuffer()
    t0 = time.monotonic()
    with pytest.raises(TfLookupError, match='waited 0.100 s'):
        buf.wait_for('odom', 'base', 5 * S, 0.1)
    assert 0.09 < time.monotonic() - t0 < 0.5
    buf.set_matrix('odom', 'base', T([0, 0, 0], [0, 0, 0]), 4 * S)
    timer = threading.Timer(0.05, lambda: buf.set_matrix('odom', 'base', T([0, 0, 0], [2, 0, 0]),
                                                         6 * S))
    timer.start()
    out = buf.wait_for('odom', 'base', 5 * S, 2.0)
    np.testing.assert_allclose(out[:3, 3], [1, 0, 0])


def test_listener_and_broadcasters_over_dds():
    import rclpy
    from rclpy.node import Node

    from nre_ros.ros.tf import TfBroadcaster, TfListener, make_transform_stamped
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        talker, listener_node = Node('tf_talker', context=ctx), Node('tf_listener', context=ctx)
        static = TfBroadcaster(talker, static=True)
        static.send([make_transform_stamped(T([0, 0, 0], [0, 0, 1]), 'base', 'cam', 1)])
        static.send([make_transform_stamped(T([0, 0, 0], [0, 1, 0]), 'base', 'lidar', 1)])
        spin = h.Spinner(ctx, talker, listener_node)
        buf = TfBuffer()
        listener = TfListener(buf, listener_node)  # late joiner: gets /tf_static (latched)
        dyn = TfBroadcaster(talker)
        for t in (1, 2):
            dyn.send([make_transform_stamped(T([0, 0, 0], [t, 0, 0]), 'odom', 'base', t * S)])
        assert h.wait_until(lambda: buf.can_transform('odom', 'lidar', 2 * S), 5.0)
        np.testing.assert_allclose(buf.lookup('odom', 'cam', 3 * S // 2)[:3, 3], [1.5, 0, 1])
        np.testing.assert_allclose(buf.lookup('cam', 'lidar', 0)[:3, 3], [0, 1, -1])
        listener.destroy()
        spin.stop()
    finally:
        rclpy.try_shutdown(context=ctx)
