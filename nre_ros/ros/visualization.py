"""What RViz shows (``rviz/nre_ros.rviz``): the map's points and keyframes, latched in the map
frame, and a debug image of each processed query.

The builders (numpy in, message fields or arrays out) need no ROS; the ``*_msg`` constructors
import the rclpy message types when called. Frames: map points ``p_map = map_T_model(p_model)``,
keyframe poses ``T_map_cam`` (OpenCV optical frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nre_ros.camera import Camera
from nre_ros.geometry import Sim3
from nre_ros.results import Failure, Result

# the node's topics (relative to its name; latched = transient local, depth 1)
MAP_POINTS_TOPIC = '~/map_points'      # sensor_msgs/PointCloud2, latched, map frame
KEYFRAMES_TOPIC = '~/keyframes'        # geometry_msgs/PoseArray, latched, T_map_cam
DEBUG_IMAGE_TOPIC = '~/debug_image'    # sensor_msgs/Image rgb8, with publish_debug_image

FLOAT32 = 7          # sensor_msgs/PointField.FLOAT32
# x, y, z and RViz's packed colour (0x00RRGGBB in the bytes of a float32), 16 bytes a point
CLOUD_FIELDS = (('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, FLOAT32, 1),
                ('rgb', 12, FLOAT32, 1))
POINT_STEP = 16
# disk of radius 2 px: the stencil drawn at each projected point (no loop over points)
_DISK = np.array([(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if dy * dy + dx * dx <= 5])


@dataclass(frozen=True)
class CloudFields:
    """The fields of a sensor_msgs/PointCloud2 (unorganized: height 1)."""

    width: int
    data: bytes
    fields: tuple = CLOUD_FIELDS
    height: int = 1
    point_step: int = POINT_STEP
    is_bigendian: bool = False
    is_dense: bool = True

    @property
    def row_step(self) -> int:
        return self.point_step * self.width


def map_points_in_map(points_model: np.ndarray, map_T_model: Sim3) -> np.ndarray:
    """(P, 3) map points (model frame) -> (P, 3) float64 in the map frame."""
    p = np.asarray(points_model, np.float64).reshape(-1, 3)
    return map_T_model.scale * p @ np.asarray(map_T_model.rotation).T + map_T_model.translation


def keyframe_poses_in_map(kf_T_cam_world: np.ndarray, map_T_model: Sim3) -> np.ndarray:
    """(K, 4, 4) keyframe ``T_cam_model`` -> (K, 4, 4) rigid ``T_map_cam``."""
    return map_T_model.camera_pose_in_map(np.asarray(kf_T_cam_world, np.float64))


def point_cloud_fields(points: np.ndarray, rgb: np.ndarray | None = None) -> CloudFields:
    """(N, 3) points and (N, 3) uint8 colours -> PointCloud2 fields (x, y, z, rgb float32)."""
    points = np.asarray(points, np.float32).reshape(-1, 3)
    n = len(points)
    rgb = np.full((n, 3), 255, np.uint8) if rgb is None else np.asarray(rgb, np.uint8)
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) \
        | rgb[:, 2].astype(np.uint32)
    rec = np.empty(n, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<u4')])
    rec['x'], rec['y'], rec['z'], rec['rgb'] = points[:, 0], points[:, 1], points[:, 2], packed
    return CloudFields(width=n, data=rec.tobytes(), is_dense=bool(np.all(np.isfinite(points))))


def cloud_to_numpy(msg) -> tuple[np.ndarray, np.ndarray]:
    """PointCloud2 (fields as ``point_cloud_fields`` writes them) -> (N, 3) float32 points,
    (N, 3) uint8 colours. Reads message fields only (rclpy, rosbags or CloudFields)."""
    names = [f.name if hasattr(f, 'name') else f[0] for f in msg.fields]
    if names != ['x', 'y', 'z', 'rgb'] or msg.point_step != POINT_STEP or msg.is_bigendian:
        raise ValueError(f'not an x, y, z, rgb little-endian cloud: {names}')
    rec = np.frombuffer(bytes(msg.data), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                                ('rgb', '<u4')])
    pts = np.stack([rec['x'], rec['y'], rec['z']], axis=1)
    rgb = np.stack([(rec['rgb'] >> s) & 0xFF for s in (16, 8, 0)], axis=1).astype(np.uint8)
    return pts, rgb


def nre_colours(nre: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) NRE -> (N, 3) uint8 RGB: green at the lowest cost, through yellow, to red at the
    support threshold (and above)."""
    nre = np.asarray(nre, np.float64)
    lo = float(np.min(nre)) if nre.size else 0.0
    a = np.clip((nre - lo) / max(threshold - lo, 1e-9), 0.0, 1.0)
    r = np.clip(2 * a, 0, 1)
    g = np.clip(2 * (1 - a), 0, 1)
    return (255 * np.stack([r, g, np.zeros_like(a)], axis=1)).astype(np.uint8)


def _splat(image: np.ndarray, uv: np.ndarray, colours: np.ndarray, stencil: np.ndarray) -> None:
    """Paint ``stencil`` offsets (M, 2) (dy, dx) around each pixel (N, 2) with (N, 3) colours."""
    h, w = image.shape[:2]
    c = np.round(uv).astype(np.int64)
    for dy, dx in stencil:                   # a few offsets; vectorized over the points
        y, x = c[:, 1] + dy, c[:, 0] + dx
        ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        image[y[ok], x[ok]] = colours[ok]


def debug_image(rgb: np.ndarray, camera: Camera, outcome: Result | Failure,
                points_model: np.ndarray | None = None) -> np.ndarray:
    """The query with the points behind the pose drawn by NRE cost.

    Args:
        rgb: (H, W, 3) uint8 query as given to the relocalizer; camera: its camera.
        outcome: the relocalizer's answer. A Result with ``support`` and ``points_model`` (the
            map's (P, 3) model-frame points) has its supported points drawn as disks coloured by
            NRE (green = lowest, red = at the support threshold) and the others as grey dots.
            A Failure writes its reason on the image.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    if not outcome.ok:
        caption = f'no pose: {outcome.reason}'
    elif (outcome.support is None or outcome.support.point_idx is None or points_model is None
          or np.max(outcome.support.point_idx, initial=-1) >= len(points_model)):
        caption = f'pose: {outcome.num_supported} supported / {outcome.num_points} points'
    else:
        s = outcome.support
        T = np.asarray(outcome.T_cam_world, np.float64)
        p_cam = np.asarray(points_model, np.float64)[s.point_idx] @ T[:3, :3].T + T[:3, 3]
        uv, visible = camera.project(p_cam)
        grey = np.full((int(np.sum(visible & ~s.supported)), 3), 160, np.uint8)
        _splat(out, uv[visible & ~s.supported], grey, np.zeros((1, 2), int))
        sel = visible & s.supported
        _splat(out, uv[sel], nre_colours(s.nre[sel], s.threshold), _DISK)
        caption = f'pose: {int(s.supported.sum())} supported / {len(s.nre)} points'
    scale = max(0.4, out.shape[1] / 1600)
    cv2.putText(out, caption, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    return out


# ---------------------------------------------------------------------- rclpy messages
def point_cloud_msg(fields: CloudFields, frame_id: str, stamp):
    """sensor_msgs/PointCloud2 of ``fields`` in ``frame_id``."""
    from sensor_msgs.msg import PointCloud2, PointField
    msg = PointCloud2()
    msg.header.frame_id, msg.header.stamp = frame_id, stamp
    msg.height, msg.width = fields.height, fields.width
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields.fields]
    msg.is_bigendian, msg.point_step, msg.row_step = fields.is_bigendian, fields.point_step, \
        fields.row_step
    msg.data = fields.data
    msg.is_dense = fields.is_dense
    return msg


def pose_array_msg(T_map_cam: np.ndarray, frame_id: str, stamp):
    """geometry_msgs/PoseArray of (K, 4, 4) poses in ``frame_id``."""
    from geometry_msgs.msg import PoseArray

    from nre_ros.ros.conversions import matrix_to_pose
    msg = PoseArray()
    msg.header.frame_id, msg.header.stamp = frame_id, stamp
    msg.poses = [matrix_to_pose(T) for T in np.asarray(T_map_cam).reshape(-1, 4, 4)]
    return msg


def image_msg(rgb: np.ndarray, frame_id: str, stamp):
    """sensor_msgs/Image ``rgb8`` of an (H, W, 3) uint8 array."""
    from nre_ros.ros.conversions import numpy_to_image
    msg = numpy_to_image(np.ascontiguousarray(rgb, np.uint8), 'rgb8')
    msg.header.frame_id, msg.header.stamp = frame_id, stamp
    return msg


class VisualizationPublisher:
    """The node's RViz outputs: latched map points and keyframes (published when the node
    activates and after ``~/load_map``) and, if ``debug_image``, a debug image per processed
    frame. Uses lifecycle publishers: nothing goes out while the node is inactive."""

    def __init__(self, node, map_frame: str, debug_image: bool) -> None:
        from geometry_msgs.msg import PoseArray
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node, self.map_frame = node, map_frame
        self._cloud = node.create_lifecycle_publisher(PointCloud2, MAP_POINTS_TOPIC, latched)
        self._keyframes = node.create_lifecycle_publisher(PoseArray, KEYFRAMES_TOPIC, latched)
        self._debug = node.create_lifecycle_publisher(Image, DEBUG_IMAGE_TOPIC, 1) \
            if debug_image else None

    def publish_map(self, reloc) -> None:
        """Map points and keyframe poses of ``reloc.map`` (skipped if it has no map)."""
        m = getattr(reloc, 'map', None)
        if m is None:
            return
        stamp = self.node.get_clock().now().to_msg()
        sim = reloc.map_T_model
        cloud = point_cloud_fields(map_points_in_map(m.points_world, sim), m.points_rgb)
        self._cloud.publish(point_cloud_msg(cloud, self.map_frame, stamp))
        self._keyframes.publish(pose_array_msg(keyframe_poses_in_map(m.kf_T_cam_world, sim),
                                               self.map_frame, stamp))

    def publish_debug(self, rgb: np.ndarray, camera: Camera, outcome, header, reloc) -> None:
        """Debug image of one processed frame, with the image's stamp and frame."""
        if self._debug is None:
            return
        m = getattr(reloc, 'map', None)
        image = debug_image(rgb, camera, outcome, None if m is None else m.points_world)
        self._debug.publish(image_msg(image, header.frame_id, header.stamp))

    def destroy(self) -> None:
        for pub in (self._cloud, self._keyframes, self._debug):
            if pub is not None:
                self.node.destroy_lifecycle_publisher(pub)
        self._cloud = self._keyframes = self._debug = None
