"""The node with the real pipeline on real TUM fr1 images (maps/demo); slow: opt in, -m slow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
MAP = REPO / 'maps' / 'demo' / 'fr1_rpy.nremap'
QUERIES = REPO / 'maps' / 'demo' / 'queries'


@pytest.fixture(scope='module')
def pipeline():
    try:
        import nre_ros.pipeline  # noqa: F401
    except ImportError as exc:
        pytest.skip(f'nre_ros.pipeline does not import yet: {exc}')
    if not MAP.exists():
        pytest.skip(f'demo map {MAP} not found')


def test_real_pipeline_localizes_tum_queries(pipeline):
    import cv2
    import rclpy
    import test_ros_helpers as h
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo

    from nre_ros.camera import Camera
    from nre_ros.geometry import pose_error, tum_to_pose
    from nre_ros import messages as msgs
    from nre_ros.ros import conversions as conv
    from nre_ros.ros.node import RelocalizationNode
    from test_ros_node import Rig

    cam = Camera.from_yaml(QUERIES / 'camera.yaml')
    rows = [ln.split() for ln in (QUERIES / 'poses_T_world_cam.txt').read_text().splitlines()
            if ln.strip() and not ln.startswith('#')][:2]
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        params = dict(map_path=str(MAP), tf_mode='map_to_base', min_consistent_fixes=1,
                      max_rate=0.0, tf_lookup_timeout=1.0, publish_debug_image=True)
        node = RelocalizationNode(context=ctx, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()],
            cli_args=['--ros-args', '-r', 'image:=camera/image_raw'])
        rig = Rig(ctx)
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        clouds, debug = [], []
        rig.create_subscription(PointCloud2, '/nre_relocalization/map_points', clouds.append,
                                latched)
        rig.create_subscription(Image, '/nre_relocalization/debug_image', debug.append, 5)
        spin = h.Spinner(ctx, node, rig)
        assert node.autostart()
        # base_link == camera optical frame: the published base pose is T_world_cam
        from nre_ros.ros.tf import make_transform_stamped
        rig.static.send([make_transform_stamped(np.eye(4), 'base_link', 'cam', 1)])
        assert h.wait_until(lambda: rig.img_pub.get_subscription_count() > 0, 5.0)
        for i, row in enumerate(rows):
            stamp_ns = int(round(float(row[0]) * 1e9))
            bgr = cv2.imread(str(QUERIES / 'rgb' / f'{row[0]}.jpg'))
            image = conv.numpy_to_image(np.ascontiguousarray(bgr), 'bgr8')
            info = CameraInfo(width=cam.width, height=cam.height, k=cam.K.reshape(-1).tolist(),
                              distortion_model='plumb_bob', d=cam.dist.tolist())
            info.header.stamp = image.header.stamp = conv.ns_to_stamp(stamp_ns)
            info.header.frame_id = image.header.frame_id = 'cam'
            rig.info_pub.publish(info)
            rig.img_pub.publish(image)
            assert h.wait_until(lambda: len(rig.poses) > i or node.stats.failures, 120.0)
            assert len(rig.poses) == i + 1, node.stats
            pose = rig.poses[i]
            assert msgs.stamp_to_ns(pose.header.stamp) == stamp_ns
            T_map_cam = msgs.pose_to_matrix(pose.pose.pose)
            T_gt = tum_to_pose(np.array([float(x) for x in row[1:]]))
            dt, dr = pose_error(np.linalg.inv(T_map_cam), np.linalg.inv(T_gt))
            assert dt < 0.10 and dr < 3.0, (dt, dr)
            cov = np.array(pose.pose.covariance).reshape(6, 6)
            assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0
            # RViz: the debug image of this frame shows its supported points (green to red)
            assert h.wait_until(lambda: len(debug) > i, 5.0)
            shown = msgs.image_to_rgb(debug[i])
            assert msgs.stamp_to_ns(debug[i].header.stamp) == stamp_ns
            drawn = (shown[..., 2] == 0) & (shown[..., :2].max(axis=2) == 255)
            assert drawn.sum() > 500, drawn.sum()
        from nre_ros.maps.format import load_map
        from nre_ros.ros.visualization import cloud_to_numpy
        assert clouds and clouds[0].header.frame_id == 'map'
        demo = load_map(MAP)
        pts, rgb = cloud_to_numpy(clouds[0])
        np.testing.assert_allclose(pts, demo.points_world, atol=1e-6)   # no map_T_model
        np.testing.assert_array_equal(rgb, demo.points_rgb)
        spin.stop()
        node.on_shutdown(None)
        node.destroy_node()
        rig.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
