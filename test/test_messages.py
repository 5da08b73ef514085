"""nre_ros.messages: ROS-free message conversions, on rosbags messages (no rclpy needed)."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from nre_ros import messages as msgs
from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.geometry import make_transform, matrix_to_quat, so3_exp

RNG = np.random.default_rng(0)
TS = get_typestore(Stores.ROS2_HUMBLE)
T = TS.types


def _header(ns=0):
    sec, nanosec = msgs.ns_to_sec_nanosec(ns)
    stamp = T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
    return T['std_msgs/msg/Header'](stamp=stamp, frame_id='cam')


def _image(height, width, encoding, step, data=b'', is_bigendian=0):
    return T['sensor_msgs/msg/Image'](header=_header(), height=height, width=width,
                                      encoding=encoding, is_bigendian=is_bigendian, step=step,
                                      data=np.frombuffer(bytes(data), np.uint8))


def _to_msg(arr, encoding, **kw):
    f = msgs.encode_image(arr, encoding, **kw)
    msg = _image(f.height, f.width, f.encoding, f.step, f.data.tobytes(), f.is_bigendian)
    # through CDR and back: what a bag reader hands over
    name = 'sensor_msgs/msg/Image'
    return TS.deserialize_cdr(TS.serialize_cdr(msg, name), name)


def _sample(encoding, h=5, w=7):
    dtype, c = msgs.ENCODINGS[encoding]
    if dtype is np.float32:
        arr = RNG.normal(size=(h, w, c)).astype(np.float32)
    else:
        arr = RNG.integers(0, np.iinfo(dtype).max, size=(h, w, c), endpoint=True).astype(dtype)
    return arr[:, :, 0] if c == 1 else arr


@pytest.mark.parametrize('encoding', sorted(msgs.ENCODINGS))
@pytest.mark.parametrize('padding', [0, 3])
@pytest.mark.parametrize('bigendian', [False, True])
def test_image_round_trip(encoding, padding, bigendian):
    arr = _sample(encoding)
    msg = _to_msg(arr, encoding, padding=padding, bigendian=bigendian)
    itemsize = np.dtype(msgs.ENCODINGS[encoding][0]).itemsize
    assert msg.step == arr.shape[1] * msgs.ENCODINGS[encoding][1] * itemsize + padding
    assert msg.is_bigendian == int(bigendian)
    out = msgs.image_to_numpy(msg)
    assert out.dtype.isnative and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_big_endian_bytes_are_decoded():
    msg = _image(1, 2, '16UC1', 4, bytes([0x01, 0x02, 0x03, 0x04]), is_bigendian=1)
    np.testing.assert_array_equal(msgs.image_to_numpy(msg), [[0x0102, 0x0304]])
    msg.is_bigendian = 0
    np.testing.assert_array_equal(msgs.image_to_numpy(msg), [[0x0201, 0x0403]])


def test_image_to_rgb_per_encoding():
    rgb = _sample('rgb8')
    np.testing.assert_array_equal(msgs.image_to_rgb(_to_msg(rgb, 'rgb8')), rgb)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(msgs.image_to_rgb(_to_msg(bgr, 'bgr8', padding=5)), rgb)
    rgba = np.concatenate([rgb, _sample('mono8')[:, :, None]], axis=2)
    np.testing.assert_array_equal(msgs.image_to_rgb(_to_msg(rgba, 'rgba8')), rgb)
    np.testing.assert_array_equal(msgs.image_to_rgb(_to_msg(rgba[:, :, [2, 1, 0, 3]], 'bgra8')),
                                  rgb)
    mono = _sample('mono8')
    out = msgs.image_to_rgb(_to_msg(mono, 'mono8'))
    assert out.shape == mono.shape + (3,) and np.all(out == mono[:, :, None])
    mono16 = _sample('mono16')
    out = msgs.image_to_rgb(_to_msg(mono16, 'mono16', bigendian=True))
    assert out.dtype == np.uint8 and np.all(out[:, :, 1] == (mono16 >> 8))


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_depth_encodings(encoding):
    arr = np.array([[1000, 0], [2500, 65535]], np.uint16) if encoding == '16UC1' else \
        np.array([[1.0, np.nan], [2.5, 65.535]], np.float32)
    msg = _to_msg(arr, encoding)
    np.testing.assert_allclose(msgs.depth_to_metres(msg), [[1.0, 0.0], [2.5, 65.535]],
                               rtol=1e-6)
    with pytest.raises(InputError, match='depth encoding'):
        msgs.image_to_rgb(msg)
    with pytest.raises(InputError, match='depth encoding must be'):
        msgs.depth_to_metres(_to_msg(_sample('rgb8'), 'rgb8'))


def test_bad_images_rejected():
    with pytest.raises(InputError, match="unsupported image encoding 'nv21'"):
        msgs.image_to_numpy(_image(2, 2, 'nv21', 4))
    with pytest.raises(InputError, match='zero size'):
        msgs.image_to_numpy(_image(0, 4, 'rgb8', 12))
    with pytest.raises(InputError, match='step'):
        msgs.image_to_numpy(_image(2, 4, 'rgb8', 10, bytes(20)))
    with pytest.raises(InputError, match='expected height\\*step = 4'):
        msgs.image_to_numpy(_image(2, 2, 'mono8', 2, b'\x00\x01\x02'))
    with pytest.raises(InputError, match='needs dtype'):
        msgs.encode_image(np.zeros((2, 2), np.uint16), 'rgb8')


def _compressed(data: bytes, fmt: str):
    return T['sensor_msgs/msg/CompressedImage'](header=_header(), format=fmt,
                                                data=np.frombuffer(data, np.uint8))


def test_compressed_png_is_exact_and_garbage_rejected():
    import cv2
    rgb = _sample('rgb8', 16, 20)
    png = cv2.imencode('.png', np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()
    for fmt in ('png', 'rgb8; png compressed bgr8', ''):
        np.testing.assert_array_equal(msgs.compressed_to_rgb(_compressed(png, fmt)), rgb)
    with pytest.raises(InputError, match='not supported'):
        msgs.compressed_to_rgb(_compressed(png, 'compressedDepth png'))
    with pytest.raises(InputError, match='could not be decoded'):
        msgs.compressed_to_rgb(_compressed(b'not an image', 'jpeg'))
    with pytest.raises(InputError, match='no data'):
        msgs.compressed_to_rgb(_compressed(b'', 'jpeg'))


def _info(w=640, h=480, k=(500.0, 0.0, 320.0, 0.0, 505.0, 240.0, 0.0, 0.0, 1.0),
          model='plumb_bob', d=(0.1, -0.05, 0.001, 0.002, 0.01), binning=0):
    roi = T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                do_rectify=False)
    return T['sensor_msgs/msg/CameraInfo'](
        header=_header(), height=h, width=w, distortion_model=model, d=np.array(d, float),
        k=np.array(k, float), r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=binning,
        binning_y=binning, roi=roi)


def test_camera_info_to_camera():
    cam = msgs.camera_info_to_camera(_info())
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (640, 480, 500, 505, 320,
                                                                       240)
    np.testing.assert_allclose(cam.dist, [0.1, -0.05, 0.001, 0.002, 0.01])
    cam = msgs.camera_info_to_camera(_info(model='rational_polynomial', d=[0.1] * 8))
    assert cam.dist.size == 8
    cam = msgs.camera_info_to_camera(_info(model='', d=[]))
    assert cam.dist.size == 0
    cam = msgs.camera_info_to_camera(_info(model='equidistant', d=[0.1, 0.01, 0.0, 0.0]))
    assert cam.fisheye and cam.dist.size == 4
    cam = msgs.camera_info_to_camera(_info(binning=2))
    assert (cam.width, cam.height, cam.fx) == (320, 240, 250)
    assert cam.cx == pytest.approx(0.5 * 320.5 - 0.5)
    info = _info()
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 10, 20, 320, 240
    cam = msgs.camera_info_to_camera(info)
    assert (cam.width, cam.height, cam.cx, cam.cy) == (320, 240, 310, 220)


@pytest.mark.parametrize('info, match', [
    (_info(k=[0.0] * 9), 'K is not a valid'),
    (_info(k=[500, 0, 320, 0, float('nan'), 240, 0, 0, 1]), 'K is not a valid'),
    (_info(w=0), 'zero size'),
    (_info(model='kannala_brandt', d=[0.1, 0.0, 0.0, 0.0]), "unsupported distortion model"),
    (_info(model='equidistant', d=[0.1] * 5), 'equidistant needs 4'),
    (_info(model='plumb_bob', d=[0.1, 0.2]), 'plumb_bob needs'),
    (_info(model='rational_polynomial', d=[0.1] * 5), 'rational_polynomial needs 8'),
    (_info(k=[500, 1.0, 320, 0, 500, 240, 0, 0, 1]), 'camera_info rejected'),
])
def test_bad_camera_info_rejected(info, match):
    with pytest.raises(InputError, match=match):
        msgs.camera_info_to_camera(info)


@pytest.mark.parametrize('dist, fisheye', [
    (np.zeros(0), False), (np.array([0.1, -0.05, 0.001, 0.002, 0.01]), False),
    (np.linspace(-0.1, 0.1, 8), False), (np.array([0.1, 0.01, -0.002, 0.001]), True)])
def test_camera_info_fields_round_trip(dist, fisheye):
    camera = Camera(64, 48, Camera.from_params(64, 48, 50.0, 51.0, 31.5, 23.5).K, dist, fisheye)
    msg = T['sensor_msgs/msg/CameraInfo'](
        header=_header(), binning_x=0, binning_y=0,
        roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                  do_rectify=False),
        **msgs.camera_info_fields(camera))
    back = msgs.camera_info_to_camera(msg)
    np.testing.assert_array_equal(back.K, camera.K)
    np.testing.assert_array_equal(back.dist, camera.dist)
    assert (back.width, back.height, back.fisheye) == (64, 48, fisheye)


def test_image_camera_size_check():
    cam = msgs.camera_info_to_camera(_info())
    msgs.check_image_matches_camera((480, 640), cam)
    with pytest.raises(InputError, match='image is 320x240 but camera_info describes 640x480'):
        msgs.check_image_matches_camera((240, 320), cam)


def _pose(Tm):
    q = matrix_to_quat(Tm[:3, :3])
    return T['geometry_msgs/msg/Pose'](
        position=T['geometry_msgs/msg/Point'](x=Tm[0, 3], y=Tm[1, 3], z=Tm[2, 3]),
        orientation=T['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))


def test_pose_to_matrix_and_bad_quaternion():
    Tm = make_transform(so3_exp(RNG.normal(size=3)), RNG.normal(size=3))
    np.testing.assert_allclose(msgs.pose_to_matrix(_pose(Tm)), Tm, atol=1e-12)
    bad = _pose(Tm)
    bad.orientation.x = bad.orientation.y = bad.orientation.z = bad.orientation.w = 0.0
    with pytest.raises(InputError, match='invalid quaternion'):
        msgs.pose_to_matrix(bad)
    bad = _pose(Tm)
    bad.position.x = float('nan')
    with pytest.raises(InputError, match='non-finite translation'):
        msgs.pose_to_matrix(bad)


def test_stamps():
    ns = 1_305_031_229_729_064_000
    assert msgs.stamp_to_ns(_header(ns).stamp) == ns
    assert msgs.ns_to_sec_nanosec(1_500_000_001) == (1, 500_000_001)
