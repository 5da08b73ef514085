"""The node's RViz topics, read back over DDS: latched map points and keyframes, debug image."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

import test_ros_helpers as h  # noqa: E402
from geometry_msgs.msg import PoseArray  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from test_ros_node import CAM_FRAME, H, S, W, ctx, now_ns, running  # noqa: E402,F401

from nre_ros import messages as msgs  # noqa: E402
from nre_ros.camera import Camera  # noqa: E402
from nre_ros.geometry import Sim3, make_transform, so3_exp  # noqa: E402
from nre_ros.results import PointSupport  # noqa: E402
from nre_ros.ros import visualization as viz  # noqa: E402

LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
METRIC = SimpleNamespace(units='m', map_T_model=None)      # what the node reads of a map
SIM = Sim3(so3_exp([0.0, 0.0, 0.7]), np.array([1.0, -2.0, 0.3]), 1.5)


def _fake_map(n_points=30, n_kf=4):
    rng = np.random.default_rng(0)
    kf = np.stack([make_transform(so3_exp(rng.normal(size=3)), rng.normal(size=3))
                   for _ in range(n_kf)])
    return SimpleNamespace(points_world=rng.normal(size=(n_points, 3)).astype(np.float32),
                           points_rgb=rng.integers(0, 256, (n_points, 3)).astype(np.uint8),
                           kf_T_cam_world=kf, metadata=METRIC)


def _subscribe(rig, msg_type, topic, qos):
    got = []
    rig.create_subscription(msg_type, topic, got.append, qos)
    return got


def test_map_points_and_keyframes_are_latched_in_the_map_frame(running):
    fake_map = _fake_map()
    node, rig, _ = running(fake={'map_': fake_map, 'map_T_model': SIM})
    # subscribers that join after the node activated still get the (latched) messages
    clouds = _subscribe(rig, PointCloud2, '/nre_relocalization/map_points', LATCHED)
    kfs = _subscribe(rig, PoseArray, '/nre_relocalization/keyframes', LATCHED)
    assert h.wait_until(lambda: clouds and kfs, 5.0)
    cloud = clouds[0]
    assert cloud.header.frame_id == 'map' and cloud.width == 30 and cloud.height == 1
    pts, rgb = viz.cloud_to_numpy(cloud)
    np.testing.assert_allclose(pts, viz.map_points_in_map(fake_map.points_world, SIM),
                               atol=1e-5)
    np.testing.assert_array_equal(rgb, fake_map.points_rgb)
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb']
    assert kfs[0].header.frame_id == 'map' and len(kfs[0].poses) == 4
    got = np.stack([msgs.pose_to_matrix(p) for p in kfs[0].poses])
    np.testing.assert_allclose(got, viz.keyframe_poses_in_map(fake_map.kf_T_cam_world, SIM),
                               atol=1e-9)
    assert rig.count_publishers('/nre_relocalization/debug_image') == 0   # off by default


def test_debug_image_shows_the_supported_points(running):
    cam = Camera.from_params(W, H, 50.0, 50.0, 32.0, 24.0)
    uv = np.array([[12.0, 38.0], [50.0, 30.0]])   # below the caption
    p_cam = cam.unproject(uv, np.array([2.0, 3.0]))
    p_model = p_cam @ h.T_MAP_CAM[:3, :3].T + h.T_MAP_CAM[:3, 3]   # fake pose: T_MAP_CAM
    fake_map = SimpleNamespace(points_world=p_model.astype(np.float64),
                               points_rgb=np.zeros((2, 3), np.uint8),
                               kf_T_cam_world=np.eye(4)[None], metadata=METRIC)
    support = PointSupport(np.array([0.5, 9.0], np.float32), 4.0, np.array([0, 1]))
    node, rig, _ = running(publish_debug_image=True,
                           fake={'map_': fake_map, 'support': support})
    images = _subscribe(rig, Image, '/nre_relocalization/debug_image', 1)
    assert h.wait_until(lambda: rig.count_publishers('/nre_relocalization/debug_image') == 1)
    rig.send_static()
    t_img = now_ns(node) - S // 2
    rig.send_odom(t_img)
    rig.send_frame(t_img)
    assert h.wait_until(lambda: images, 5.0), node.stats
    msg = images[0]
    assert msgs.stamp_to_ns(msg.header.stamp) == t_img and msg.header.frame_id == CAM_FRAME
    img = msgs.image_to_rgb(msg)
    assert img.shape == (H, W, 3)
    assert tuple(img[38, 12]) == (0, 255, 0)           # supported, lowest cost: green disk
    assert tuple(img[38, 14]) == (0, 255, 0)
    assert tuple(img[30, 50]) == (160, 160, 160)       # unsupported: grey dot
    assert tuple(img[30, 52]) == (0, 0, 0)


def test_a_loaded_map_replaces_the_latched_cloud(running):
    pytest.importorskip('nre_ros_interfaces.srv', reason='nre_ros_interfaces not built')
    from nre_ros_interfaces.srv import LoadMap
    from test_ros_load_map import _call
    node, rig, _ = running(fake={'map_': _fake_map(30, 4)})
    other = _fake_map(12, 2)
    node._factory = lambda path, cfg: h.FakeRelocalizer(map_=other)
    client = rig.create_client(LoadMap, '/nre_relocalization/load_map')
    assert client.wait_for_service(timeout_sec=3.0)
    assert _call(client, LoadMap.Request(map_path='other.nremap')).success
    clouds = _subscribe(rig, PointCloud2, '/nre_relocalization/map_points', LATCHED)
    kfs = _subscribe(rig, PoseArray, '/nre_relocalization/keyframes', LATCHED)
    assert h.wait_until(lambda: clouds and kfs, 5.0)
    assert clouds[-1].width == 12 and len(kfs[-1].poses) == 2      # the new map, latched
    pts, _ = viz.cloud_to_numpy(clouds[-1])
    np.testing.assert_allclose(pts, other.points_world, atol=1e-6)
