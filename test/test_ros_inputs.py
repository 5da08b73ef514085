"""Optional node inputs over real DDS: depth (use_depth) and image_transport=compressed."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

import test_ros_helpers as h  # noqa: E402  (sets ROS_DOMAIN_ID before rclpy.init)
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from nre_ros import messages as msgs  # noqa: E402
from nre_ros.errors import InputError  # noqa: E402
from nre_ros.ros import conversions as conv  # noqa: E402
from test_ros_node import CAM_FRAME, H, S, W, ctx, now_ns, running  # noqa: E402,F401,F811


def _wait_processed(node, n, timeout=3.0):
    assert h.wait_until(lambda: node.stats.frames_processed >= n and not node.busy, timeout), \
        node.stats


def test_depth_paired_by_stamp_and_bad_depth(running):
    node, rig, factory = running(use_depth=True, depth_timeout=1.0)   # generous: CI load
    node_depth = node.resolve_topic_name('depth')
    assert node_depth == '/depth'      # not remapped in make_node: subscribe there
    depth_pub = rig.create_publisher(Image, '/depth', qos_profile_sensor_data)
    assert h.wait_until(lambda: depth_pub.get_subscription_count() > 0)
    rig.send_static()
    fake = lambda: factory.made[0]  # noqa: E731
    # 1. depth (16UC1 mm) sent before the image, plus one with another stamp: the right one
    t1 = now_ns(node) - S // 2
    rig.send_odom(t1)
    mm = np.full((H, W), 1500, np.uint16)
    mm[0, 0] = 0
    other = conv.numpy_to_image(np.full((H, W), 9999, np.uint16), '16UC1')
    other.header.stamp = conv.ns_to_stamp(t1 - S // 10)
    depth_pub.publish(other)
    d = conv.numpy_to_image(mm, '16UC1')
    d.header.stamp, d.header.frame_id = conv.ns_to_stamp(t1), CAM_FRAME
    depth_pub.publish(d)
    time.sleep(0.05)
    rig.send_frame(t1)
    assert h.wait_until(lambda: len(rig.poses) == 1, 3.0), node.stats
    depth = fake().depths[0]
    assert depth.shape == (H, W) and depth.dtype == np.float32
    assert depth[0, 0] == 0.0 and np.allclose(depth[1:, 1:], 1.5)
    # 2. depth arriving after the image (within depth_timeout), 32FC1 metres
    t2 = t1 + S // 20
    rig.send_odom(t2)
    rig.send_frame(t2)
    m = conv.numpy_to_image(np.full((H, W), 2.25, np.float32), '32FC1')
    m.header.stamp = conv.ns_to_stamp(t2)
    time.sleep(0.05)
    depth_pub.publish(m)
    assert h.wait_until(lambda: len(rig.poses) == 2, 3.0), node.stats
    assert np.allclose(fake().depths[1], 2.25)
    # 3. no depth at all: localized without it, counted
    t3 = t2 + S // 20
    rig.send_odom(t3)
    rig.send_frame(t3)
    assert h.wait_until(lambda: len(rig.poses) == 3, 3.0), node.stats
    assert fake().depths[2] is None and node.stats.frames_without_depth == 1
    # 4. depth of the wrong size: bad input, no pose, diagnostic says why
    t4 = t3 + S // 20
    rig.send_odom(t4)
    small = conv.numpy_to_image(np.ones((H // 2, W // 2), np.float32), '32FC1')
    small.header.stamp = conv.ns_to_stamp(t4)
    depth_pub.publish(small)
    time.sleep(0.05)
    rig.send_frame(t4)
    _wait_processed(node, 4)
    rig.diags.clear()
    assert h.wait_until(lambda: rig.last_diag().startswith('Bad input: depth: depth image'),
                        3.0), rig.last_diag()
    assert len(rig.poses) == 3 and len(fake().calls) == 3
    assert node._state_machine.current_state[1] == 'active'


def _compressed(stamp_ns, data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.header.stamp, msg.header.frame_id = conv.ns_to_stamp(stamp_ns), CAM_FRAME
    msg.data.frombytes(data)
    return msg


def test_compressed_input_jpeg_png_and_garbage(running):
    import cv2
    node, rig, factory = running(wait_image=False, image_transport='compressed')
    pub = rig.create_publisher(CompressedImage, 'camera/image_raw/compressed',
                               qos_profile_sensor_data)
    assert h.wait_until(lambda: pub.get_subscription_count() > 0)
    rig.send_static()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :, 0] = 200          # red in RGB
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    frames = [('jpeg', cv2.imencode('.jpg', bgr)[1].tobytes()),
              ('rgb8; png compressed bgr8', cv2.imencode('.png', bgr)[1].tobytes()),
              ('jpeg', b'\xff\xd8 definitely not a jpeg'),
              ('compressedDepth png', cv2.imencode('.png', bgr)[1].tobytes()),
              ('jpeg', b'')]
    base = now_ns(node) - S
    for i, (fmt, data) in enumerate(frames):
        t = base + i * S // 10
        rig.send_odom(t)
        time.sleep(0.02)
        rig.send_frame(t)   # CameraInfo (+ a raw image nobody subscribes to)
        pub.publish(_compressed(t, data, fmt))
        _wait_processed(node, i + 1)
        if i == 1:
            assert h.wait_until(lambda: len(rig.poses) == 2, 3.0), node.stats
    fake = factory.made[0]
    assert len(fake.calls) == 2 and len(rig.poses) == 2
    assert fake.calls[0][0] == (H, W, 3)
    assert node.stats.bad_inputs == 3
    assert node._state_machine.current_state[1] == 'active'
    rig.diags.clear()
    assert h.wait_until(lambda: rig.last_diag().startswith('Bad input: compressed image'),
                        3.0), rig.last_diag()


def test_compressed_to_rgb_colours():
    import cv2
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 2] = 255            # blue
    png = cv2.imencode('.png', np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()
    out = msgs.compressed_to_rgb(_compressed(1, png, 'png'))
    np.testing.assert_array_equal(out, rgb)
    with pytest.raises(InputError, match='not supported'):
        msgs.compressed_to_rgb(_compressed(1, png, 'tiff'))


def test_without_interfaces_no_load_map_service(running, monkeypatch):
    import nre_ros.ros.node as node_module
    monkeypatch.setattr(node_module, 'LoadMap', None)
    node, rig, _ = running()
    names = [n for n, _ in node.get_service_names_and_types_by_node(node.get_name(), '/')]
    assert '/nre_relocalization/reset' in names
    assert '/nre_relocalization/load_map' not in names


def test_image_before_the_previous_camera_info_is_still_paired(running):
    """Image and CameraInfo are delivered independently: image i+1 may arrive before
    CameraInfo i. Both frames must still be paired (the node used to keep one waiting image)."""
    from sensor_msgs.msg import CameraInfo
    node, rig, _ = running(queue_size=3)
    rig.send_static()
    t1 = now_ns(node) - S // 2
    t2 = t1 + S // 20
    infos, images = [], []
    for t in (t1, t2):
        rig.send_odom(t)
        stamp = conv.ns_to_stamp(t)
        info = CameraInfo(width=W, height=H, distortion_model='plumb_bob', d=[0.0] * 5,
                          k=[50.0, 0, 32, 0, 50.0, 24, 0, 0, 1])
        info.header.stamp, info.header.frame_id = stamp, CAM_FRAME
        image = conv.numpy_to_image(np.zeros((H, W, 3), np.uint8), 'rgb8')
        image.header.stamp, image.header.frame_id = stamp, CAM_FRAME
        infos.append(info)
        images.append(image)
    rig.img_pub.publish(images[0])
    time.sleep(0.1)
    rig.img_pub.publish(images[1])
    assert h.wait_until(lambda: node.stats.frames_received == 2, 3.0), node.stats
    time.sleep(0.1)                               # both images wait for their CameraInfo
    rig.info_pub.publish(infos[0])
    assert h.wait_until(lambda: len(rig.poses) == 1, 3.0), node.stats
    rig.info_pub.publish(infos[1])
    assert h.wait_until(lambda: len(rig.poses) == 2, 3.0), node.stats
    assert [msgs.stamp_to_ns(p.header.stamp) for p in rig.poses] == [t1, t2]
    assert node.stats.frames_unpaired == 0
