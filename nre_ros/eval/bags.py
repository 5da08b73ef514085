"""Write posed image sequences to ROS 2 bags and read them back, with ``rosbags`` (no ROS needed).

Bag contents (all stamps = the image timestamp, rounded to whole microseconds as in TUM files;
the bag's receive time of a message equals its header stamp):

| topic | type | frame / meaning |
|---|---|---|
| ``/camera/color/image_raw`` | sensor_msgs/Image ``rgb8`` | ``camera_color_optical_frame`` |
| ``/camera/color/camera_info`` | sensor_msgs/CameraInfo | K, P, ``plumb_bob`` D (5 values),
  ``rational_polynomial`` (8) or ``equidistant`` (4) from camera.yaml; the images are NOT undistorted |
| ``/camera/aligned_depth_to_color/image_raw`` | Image ``32FC1`` (metres) or ``16UC1`` (mm,
  REP 118), 0 = invalid | optional; registered to the colour image |
| ``/ground_truth`` | geometry_msgs/PoseStamped | ``header.frame_id = 'map'``: the pose of the
  camera optical frame in the map (= the TUM world frame), i.e. ``T_map_cam`` |
| ``/tf_static`` | tf2_msgs/TFMessage, transient-local | ``base_link ->
  camera_color_optical_frame`` = ``T_BASE_CAM`` (REP 103 optical rotation, camera 5 cm
  ahead of and 10 cm above base) |
| ``/tf`` | tf2_msgs/TFMessage | ``odom -> base_link`` simulated, see ``OdomDrift`` |

Simulated odometry: the true ``T_map_base(t) = T_map_cam(t) @ inv(T_BASE_CAM)``. Odometry starts
at the first frame (``T_odom_base(t0) = I``) and drifts: ``T_map_odom(t) = T_map_base(t0) @ W(t)``,
where ``W`` is a seeded random walk, translation ``N(0, sigma_t^2 dt)`` per axis and a rotation
about the odom z axis ``N(0, sigma_yaw^2 dt)``;
``T_odom_base(t) = inv(T_map_odom(t)) @ T_map_base(t)``.
So the correct ``map -> odom`` a localizer should publish is ``T_map_odom(t)``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nre_ros import messages as msgs
from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.geometry import invert, make_transform, matrix_to_quat, so3_exp

logger = logging.getLogger(__name__)

TOPIC_IMAGE = '/camera/color/image_raw'
TOPIC_CAMERA_INFO = '/camera/color/camera_info'
TOPIC_DEPTH = '/camera/aligned_depth_to_color/image_raw'
TOPIC_GROUND_TRUTH = '/ground_truth'
FRAME_MAP, FRAME_ODOM, FRAME_BASE = 'map', 'odom', 'base_link'
FRAME_CAMERA = 'camera_color_optical_frame'
STORAGES = ('mcap', 'sqlite3')
DEPTH_ENCODINGS = ('32FC1', '16UC1')
IMAGE_FORMATS = ('raw', 'jpeg', 'png')   # raw: sensor_msgs/Image; else CompressedImage
POSES_AS = ('topic', 'tf', 'both')       # ground truth on /ground_truth, as TF map -> odom, both

# base_link (x forward, y left, z up) -> optical (x right, y down, z forward), REP 103.
R_BASE_CAM = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
T_BASE_CAM = make_transform(R_BASE_CAM, [0.05, 0.0, 0.10])


@dataclass(frozen=True)
class OdomDrift:
    """Random-walk drift of the simulated odometry (per square root of a second)."""

    sigma_t_m: float = 0.02
    sigma_yaw_deg: float = 0.5


@dataclass(frozen=True)
class BagSample:
    """One frame to write. ``T_world_cam`` maps camera-frame points to the world (map)."""

    stamp_ns: int
    rgb: np.ndarray                      # (H, W, 3) uint8 RGB
    T_world_cam: np.ndarray              # (4, 4)
    depth_m: np.ndarray | None = None    # (H, W) float32 metres, 0 = invalid


@dataclass(frozen=True)
class BagFrame:
    """One image read from a bag with what was recorded at the same stamp (None if absent)."""

    stamp_ns: int
    rgb: np.ndarray                      # (H, W, 3) uint8 RGB
    camera: Camera | None
    T_world_cam: np.ndarray | None       # ground truth, camera in map
    depth_m: np.ndarray | None = None    # (H, W) float32 metres, 0 = invalid
    T_odom_base: np.ndarray | None = None

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns * 1e-9


def seconds_to_ns(t: float) -> int:
    """TUM seconds (6 decimals) -> integer nanoseconds, rounded to whole microseconds."""
    return int(round(float(t) * 1e6)) * 1000


def typestore(distro: str = 'humble'):
    from rosbags.typesys import Stores, get_typestore
    stores = {'humble': Stores.ROS2_HUMBLE, 'jazzy': Stores.ROS2_JAZZY}
    if distro not in stores:
        raise InputError(f'unknown ROS distro {distro!r} for the bag types; '
                         f'use one of {list(stores)}')
    return get_typestore(stores[distro])


def simulate_odometry(stamps_ns: np.ndarray, T_map_base: np.ndarray, drift: OdomDrift,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Simulated odometry from ground truth (see the module docstring).

    Args:
        stamps_ns: (N,) increasing stamps.
        T_map_base: (N, 4, 4) true base poses.
    Returns:
        T_odom_base: (N, 4, 4) what odometry reports.
        T_map_odom: (N, 4, 4) the true map -> odom correction at each stamp.
    """
    rng = np.random.default_rng(seed)
    n = len(stamps_ns)
    dt = np.diff(np.asarray(stamps_ns, dtype=np.float64), prepend=stamps_ns[0] if n else 0) * 1e-9
    dt = np.clip(dt, 0.0, None)
    steps_t = rng.normal(size=(n, 3)) * drift.sigma_t_m * np.sqrt(dt)[:, None]
    steps_yaw = rng.normal(size=n) * np.radians(drift.sigma_yaw_deg) * np.sqrt(dt)
    p, yaw = np.cumsum(steps_t, axis=0), np.cumsum(steps_yaw)
    W = make_transform(so3_exp(np.stack([np.zeros(n), np.zeros(n), yaw], axis=1)), p)
    T_map_odom = T_map_base[0] @ W if n else W
    return invert(T_map_odom) @ T_map_base, T_map_odom


# ----------------------------------------------------------------------------- messages
def _header(ts, stamp_ns: int, frame_id: str):
    Time = ts.types['builtin_interfaces/msg/Time']
    Header = ts.types['std_msgs/msg/Header']
    sec, nanosec = msgs.ns_to_sec_nanosec(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _image_msg(ts, stamp_ns: int, array: np.ndarray, encoding: str):
    f = msgs.encode_image(array, encoding, bigendian=False)
    return ts.types['sensor_msgs/msg/Image'](
        header=_header(ts, stamp_ns, FRAME_CAMERA), height=f.height, width=f.width,
        encoding=f.encoding, is_bigendian=f.is_bigendian, step=f.step, data=f.data)


def _compressed_msg(ts, stamp_ns: int, rgb: np.ndarray, fmt: str):
    import cv2
    ok, data = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', rgb[:, :, ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == 'jpeg' else [])
    if not ok:
        raise InputError(f'cannot encode an image as {fmt}')
    return ts.types['sensor_msgs/msg/CompressedImage'](
        header=_header(ts, stamp_ns, FRAME_CAMERA), format=fmt, data=data.reshape(-1))


def _camera_info_msg(ts, stamp_ns: int, camera: Camera):
    CameraInfo = ts.types['sensor_msgs/msg/CameraInfo']
    Roi = ts.types['sensor_msgs/msg/RegionOfInterest']
    return CameraInfo(header=_header(ts, stamp_ns, FRAME_CAMERA), binning_x=0, binning_y=0,
                      roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
                      **msgs.camera_info_fields(camera))


def _pose_msg(ts, T: np.ndarray):
    g = ts.types
    q = matrix_to_quat(T[:3, :3])
    return g['geometry_msgs/msg/Pose'](
        position=g['geometry_msgs/msg/Point'](x=float(T[0, 3]), y=float(T[1, 3]),
                                              z=float(T[2, 3])),
        orientation=g['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))


def _tf_msg(ts, stamp_ns: int, parent: str, child: str, T: np.ndarray):
    g = ts.types
    q = matrix_to_quat(T[:3, :3])
    tf = g['geometry_msgs/msg/TransformStamped'](
        header=_header(ts, stamp_ns, parent), child_frame_id=child,
        transform=g['geometry_msgs/msg/Transform'](
            translation=g['geometry_msgs/msg/Vector3'](x=float(T[0, 3]), y=float(T[1, 3]),
                                                       z=float(T[2, 3])),
            rotation=g['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3])))
    return g['tf2_msgs/msg/TFMessage'](transforms=[tf])


def _static_qos():
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    infinite = QosTime(9223372036, 854775807)
    return [Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                infinite, infinite, QosLiveliness.AUTOMATIC, infinite, False)]


# ----------------------------------------------------------------------------- writing
def write_bag(samples: Iterable[BagSample], camera: Camera, out: str | Path, *,
              storage: str = 'mcap', depth_encoding: str | None = None,
              drift: OdomDrift = OdomDrift(), seed: int = 0, distro: str = 'humble',
              version: int = 8, image_format: str = 'raw', poses_as: str = 'topic',
              pose_offset_ns: int = 0) -> int:
    """Write samples (increasing stamps) to a new bag directory ``out``; returns the frame count.

    Args:
        depth_encoding: None (no depth topic), '32FC1' (metres) or '16UC1' (millimetres).
        version: rosbag2 metadata version (8 is read by Humble and Jazzy).
        image_format: 'raw' (Image rgb8 on TOPIC_IMAGE) or 'jpeg' / 'png' (CompressedImage on
            TOPIC_IMAGE + '/compressed', as image_transport names it).
        poses_as: ground truth as PoseStamped on TOPIC_GROUND_TRUTH ('topic'), as the TF
            ``map -> odom`` (= the true correction, so map -> camera chains to the ground truth)
            on /tf ('tf'), or both.
        pose_offset_ns: stamp (header and receive time) of each ground-truth message relative
            to its image: a pose source on another clock, for interpolation tests.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    if storage not in STORAGES:
        raise InputError(f'storage must be one of {STORAGES}, got {storage!r}')
    if depth_encoding not in (None, *DEPTH_ENCODINGS):
        raise InputError(f'depth encoding must be one of {DEPTH_ENCODINGS}, '
                         f'got {depth_encoding!r}')
    if image_format not in IMAGE_FORMATS or poses_as not in POSES_AS:
        raise InputError(f'image format must be one of {IMAGE_FORMATS} and poses one of '
                         f'{POSES_AS}, got {image_format!r}, {poses_as!r}')
    out = Path(out)
    if out.exists():
        raise InputError(f'bag {out} already exists; remove it or pick another name')
    samples = list(samples)
    if not samples:
        raise InputError('no frames to write')
    stamps = np.array([s.stamp_ns for s in samples], dtype=np.int64)
    if np.any(np.diff(stamps) <= 0):
        raise InputError('frame stamps must be strictly increasing')
    T_map_base = np.stack([s.T_world_cam for s in samples]) @ invert(T_BASE_CAM)
    T_odom_base, T_map_odom = simulate_odometry(stamps, T_map_base, drift, seed)
    ts = typestore(distro)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(out, version=version, storage_plugin=plugin) as writer:
        def conn(topic, msgtype, **kw):
            return writer.add_connection(topic, msgtype, typestore=ts, **kw)
        c_img = conn(TOPIC_IMAGE, 'sensor_msgs/msg/Image') if image_format == 'raw' else \
            conn(TOPIC_IMAGE + '/compressed', 'sensor_msgs/msg/CompressedImage')
        c_info = conn(TOPIC_CAMERA_INFO, 'sensor_msgs/msg/CameraInfo')
        c_depth = conn(TOPIC_DEPTH, 'sensor_msgs/msg/Image') if depth_encoding else None
        c_gt = conn(TOPIC_GROUND_TRUTH, 'geometry_msgs/msg/PoseStamped') \
            if poses_as != 'tf' else None
        c_static = conn('/tf_static', 'tf2_msgs/msg/TFMessage', offered_qos_profiles=_static_qos())
        c_tf = conn('/tf', 'tf2_msgs/msg/TFMessage')

        def put(c, t, msg):
            writer.write(c, int(t), ts.serialize_cdr(msg, c.msgtype))

        put(c_static, stamps[0], _tf_msg(ts, stamps[0], FRAME_BASE, FRAME_CAMERA, T_BASE_CAM))
        PoseStamped = ts.types['geometry_msgs/msg/PoseStamped']
        for s, T_ob, T_mo in zip(samples, T_odom_base, T_map_odom):
            t = s.stamp_ns
            put(c_tf, t, _tf_msg(ts, t, FRAME_ODOM, FRAME_BASE, T_ob))
            if poses_as != 'topic':
                put(c_tf, t, _tf_msg(ts, t, FRAME_MAP, FRAME_ODOM, T_mo))
            put(c_info, t, _camera_info_msg(ts, t, camera))
            if c_gt is not None:
                tg = t + int(pose_offset_ns)
                put(c_gt, tg, PoseStamped(header=_header(ts, tg, FRAME_MAP),
                                          pose=_pose_msg(ts, s.T_world_cam)))
            if c_depth is not None:
                if s.depth_m is None:
                    raise InputError(f'frame at {t} ns has no depth but depth was requested')
                depth = (s.depth_m.astype(np.float32) if depth_encoding == '32FC1' else
                         np.clip(np.round(s.depth_m * 1000.0), 0, 65535).astype(np.uint16))
                put(c_depth, t, _image_msg(ts, t, depth, depth_encoding))
            rgb = np.asarray(s.rgb)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise InputError(f'rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}')
            put(c_img, t, _image_msg(ts, t, rgb, 'rgb8') if image_format == 'raw' else
                _compressed_msg(ts, t, rgb, image_format))
    logger.info('wrote %d frames to %s (%s)', len(samples), out, storage)
    return len(samples)


def write_sequence_bag(seq, out: str | Path, *, every: int = 1, split: str | None = None,
                       depth_encoding: str | None = None, **kwargs) -> int:
    """Write a ``nre_ros.datasets.TumSequence`` (optionally one split, every n-th frame)."""
    if every < 1:
        raise InputError(f'--every must be >= 1, got {every}')
    frames = (seq.split(split) if split else list(seq.frames))[::every]
    frames = sorted(frames, key=lambda f: f.timestamp)
    samples = (BagSample(seconds_to_ns(f.timestamp), seq.load_rgb(f), f.T_world_cam,
                         seq.load_depth(f) if depth_encoding else None) for f in frames)
    return write_bag(samples, seq.camera, out, depth_encoding=depth_encoding, **kwargs)


# ----------------------------------------------------------------------------- reading
def topic_connections(reader) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in reader.connections:
        out.setdefault(c.topic, []).append(c)
    return out


def count_images(path: str | Path, image_topic: str = TOPIC_IMAGE) -> int:
    """Number of messages on the image topic (from the bag metadata, no decoding)."""
    from rosbags.rosbag2 import Reader
    with Reader(path) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == image_topic)


@dataclass
class BagTruth:
    """Ground truth and odometry of a bag by header stamp (ns), and the static base -> camera."""

    T_map_cam: dict[int, np.ndarray]
    T_odom_base: dict[int, np.ndarray]
    T_base_cam: np.ndarray | None
    start_ns: int = 0                    # first message time of the bag


def read_truth(path: str | Path, gt_topic: str = TOPIC_GROUND_TRUTH) -> BagTruth:
    """Ground truth (``gt_topic``), odom -> base (/tf) and base -> camera (/tf_static) of a bag;
    small topics only, no image decoding."""
    from rosbags.rosbag2 import Reader
    path = Path(path)
    if not path.exists():
        raise InputError(f'bag {path} does not exist')
    ts = typestore('humble')
    gts: dict[int, np.ndarray] = {}
    odom: dict[int, np.ndarray] = {}
    with Reader(path) as reader:
        start_ns = int(reader.start_time)
        topics = topic_connections(reader)
        conns = topics.get(gt_topic, []) + topics.get('/tf', [])
        for conn, _, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == gt_topic:
                gts[msgs.stamp_to_ns(msg.header.stamp)] = msgs.pose_to_matrix(msg.pose)
                continue
            for tf in msg.transforms:
                if tf.header.frame_id == FRAME_ODOM and tf.child_frame_id == FRAME_BASE:
                    odom[msgs.stamp_to_ns(tf.header.stamp)] = \
                        msgs.transform_to_matrix(tf.transform)
    return BagTruth(gts, odom, read_static_tf(path, FRAME_BASE, FRAME_CAMERA), start_ns)


def read_bag(path: str | Path, *, image_topic: str = TOPIC_IMAGE,
             camera_info_topic: str | None = None, depth_topic: str = TOPIC_DEPTH,
             gt_topic: str = TOPIC_GROUND_TRUTH, with_depth: bool = True,
             ground_truth: dict[int, np.ndarray] | None = None) -> Iterator[BagFrame]:
    """Yield the images (Image or CompressedImage) of a bag in stamp order with the messages of
    the same header stamp.

    Camera info (default: the image topic's sibling ``camera_info``), ground truth and
    odom -> base are matched by exact header stamp; ``ground_truth`` (``T_map_cam`` by image
    stamp, e.g. ``nre_ros.bagio.poses.ground_truth_by_stamp``: interpolated from any pose topic,
    TF or TUM file) replaces ``gt_topic``. Small topics are read first, then images are streamed
    (one image in memory at a time).
    """
    from rosbags.rosbag2 import Reader

    from nre_ros.bagio.reader import sibling_camera_info_topic
    camera_info_topic = camera_info_topic or sibling_camera_info_topic(image_topic)
    truth = read_truth(path, gt_topic)
    if ground_truth is not None:
        truth.T_map_cam = dict(ground_truth)
    ts = typestore('humble')
    with Reader(path) as reader:
        topics = topic_connections(reader)
        if image_topic not in topics:
            raise InputError(f'bag {path} has no topic {image_topic}; topics: {sorted(topics)}')
        cams: dict[int, Camera] = {}
        for conn, _, raw in reader.messages(connections=topics.get(camera_info_topic, [])):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            cams[msgs.stamp_to_ns(msg.header.stamp)] = msgs.camera_info_to_camera(msg)
        gts, odom = truth.T_map_cam, truth.T_odom_base
        depth_conns = topics.get(depth_topic, []) if with_depth else []
        depths: dict[int, np.ndarray] = {}
        pending = None   # image waiting for a depth image of the same stamp
        stream = reader.messages(connections=topics[image_topic] + depth_conns)
        for conn, _, raw in stream:
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            stamp = msgs.stamp_to_ns(msg.header.stamp)
            if pending is not None and pending[0] != stamp:
                yield _frame(pending, cams, gts, depths, odom)
                pending = None
            if conn.topic == depth_topic:
                depths[stamp] = msgs.depth_to_metres(msg)
            else:
                pending = (stamp, msgs.compressed_to_rgb(msg)
                           if conn.msgtype == 'sensor_msgs/msg/CompressedImage'
                           else msgs.image_to_rgb(msg))
            if pending is not None and (not depth_conns or pending[0] in depths):
                yield _frame(pending, cams, gts, depths, odom)
                pending = None
        if pending is not None:
            yield _frame(pending, cams, gts, depths, odom)


def _frame(pending, cams, gts, depths, odom) -> BagFrame:
    stamp, rgb = pending
    return BagFrame(stamp, rgb, cams.get(stamp), gts.get(stamp), depths.pop(stamp, None),
                    odom.get(stamp))


def read_static_tf(path: str | Path, parent: str = FRAME_BASE,
                   child: str = FRAME_CAMERA) -> np.ndarray | None:
    """``T_parent_child`` from /tf_static, or None if the bag has none."""
    from rosbags.rosbag2 import Reader
    ts = typestore('humble')
    with Reader(path) as reader:
        conns = topic_connections(reader).get('/tf_static', [])
        for conn, _, raw in reader.messages(connections=conns):
            for tf in ts.deserialize_cdr(raw, conn.msgtype).transforms:
                if tf.header.frame_id == parent and tf.child_frame_id == child:
                    return msgs.transform_to_matrix(tf.transform)
    return None
