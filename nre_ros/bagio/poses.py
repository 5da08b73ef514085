"""Where a recording's camera poses come from, taken to the camera's optical frame.

Three sources (``PoseSource``):

- a topic of ``PoseStamped``, ``PoseWithCovarianceStamped``, ``nav_msgs/Odometry`` or
  ``TransformStamped``: ``T_frame_body`` with ``frame = header.frame_id`` (the map frame) and
  ``body`` = the Odometry's ``child_frame_id``, else ``body_frame``, else the camera frame;
- a TF chain ``parent -> child`` recorded in the bag's /tf (and /tf_static);
- a TUM file (``t tx ty tz qx qy qz qw``, body-to-map, seconds).

The bag's TF then takes ``body`` to the camera frame (the image's ``header.frame_id``):
``T_map_cam(t) = T_map_body(t) @ T_body_cam(t)``, each part interpolated at the image stamp
(``nre_ros.trajectory``: served when the nearest measurement is within ``tolerance_s``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nre_ros import messages as msgs
from nre_ros.bagio.reader import POSE_TYPES, Bag
from nre_ros.bagio.tf import TfTree
from nre_ros.errors import InputError
from nre_ros.trajectory import DEFAULT_TOLERANCE_S, Trajectory


@dataclass(frozen=True)
class PoseSource:
    """Exactly one of ``topic``, ``tf`` (parent, child) or ``tum_file``."""

    topic: str | None = None
    tf: tuple[str, str] | None = None
    tum_file: str | None = None
    body_frame: str | None = None       # the frame a PoseStamped/TUM pose is of (default: camera)
    map_frame: str = 'map'              # frame of a TUM file's poses
    tolerance_s: float = DEFAULT_TOLERANCE_S

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.topic, self.tf, self.tum_file)]
        if sum(given) != 1:
            raise InputError('give exactly one pose source: a pose topic, a TF chain '
                             '(parent child) or a TUM file')
        if self.tolerance_s <= 0:
            raise InputError(f'pose tolerance must be > 0 s, got {self.tolerance_s}')

    def describe(self) -> str:
        if self.topic is not None:
            return f'pose topic {self.topic}'
        if self.tf is not None:
            return f'TF {self.tf[0]} -> {self.tf[1]}'
        return f'TUM file {self.tum_file}'


@dataclass(frozen=True)
class CameraPoses:
    """``T_map_cam`` at any stamp: ``body`` poses in ``map_frame`` and the TF body -> camera."""

    source: PoseSource
    map_frame: str
    camera_frame: str
    body: Trajectory | None            # T_map_body samples (None: TF source)
    tf: TfTree
    body_frame: str

    def at(self, stamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 4, 4) ``T_map_cam`` and (M,) ok at the stamps."""
        tol = self.source.tolerance_s
        if self.body is not None:
            T, ok = self.body.interpolate(stamps_ns, tol)
        else:
            T, ok = self.tf.lookup(self.map_frame, self.body_frame, stamps_ns, tol)
        if self.body_frame != self.camera_frame:
            E, ok_e = self.tf.lookup(self.body_frame, self.camera_frame, stamps_ns, tol)
            T, ok = T @ E, ok & ok_e
        return T, ok

    def span_s(self) -> tuple[float, float]:
        """Measured time span (s) of the body poses (of the first dynamic TF edge for TF)."""
        if self.body is not None:
            return self.body.span_s()
        spans = [e.span_s() for e in self.tf.dynamic.values()]
        if not spans:
            return float('-inf'), float('inf')
        return max(s[0] for s in spans), min(s[1] for s in spans)


def camera_poses(bag: Bag, source: PoseSource, camera_frame: str,
                 tf: TfTree | None = None) -> CameraPoses:
    """Read the pose source (and the bag's TF) for the camera ``camera_frame``."""
    tf = tf if tf is not None else TfTree.from_bag(bag)
    camera_frame = camera_frame.lstrip('/')
    if source.tf is not None:
        parent, child = (f.lstrip('/') for f in source.tf)
        tf.path(parent, child)                      # errors early when unconnected
        if child != camera_frame:
            tf.path(child, camera_frame)
        return CameraPoses(source, parent, camera_frame, None, tf, child)
    if source.tum_file is not None:
        from nre_ros.datasets import read_tum_poses
        path = Path(source.tum_file)
        if not path.is_file():
            raise InputError(f'pose file {path} does not exist')
        stamps, T = read_tum_poses(path)
        if not len(stamps):
            raise InputError(f'pose file {path} holds no pose')
        body = (source.body_frame or camera_frame).lstrip('/')
        if body != camera_frame:
            tf.path(body, camera_frame)
        return CameraPoses(source, source.map_frame, camera_frame,
                           Trajectory.from_seconds(stamps, T), tf, body)
    return _topic_poses(bag, source, camera_frame, tf)


def _topic_poses(bag: Bag, source: PoseSource, camera_frame: str, tf: TfTree) -> CameraPoses:
    topic = source.topic
    msgtype = bag.require(topic, 'pose', POSE_TYPES)
    stamps, poses, frames, children = [], [], set(), set()
    for m in bag.messages([topic]):
        msg = m.msg
        if msgtype == 'geometry_msgs/msg/TransformStamped':
            T = msgs.transform_to_matrix(msg.transform)
            children.add(msg.child_frame_id.lstrip('/'))
        else:
            pose = msg.pose.pose if msgtype != 'geometry_msgs/msg/PoseStamped' else msg.pose
            T = msgs.pose_to_matrix(pose)
            if msgtype == 'nav_msgs/msg/Odometry':
                children.add(msg.child_frame_id.lstrip('/'))
        stamps.append(m.stamp_ns)
        poses.append(T)
        frames.add(msg.header.frame_id.lstrip('/'))
    if len(frames) > 1 or len(children) > 1:
        raise InputError(f'pose topic {topic} mixes frames {sorted(frames)} / child frames '
                         f'{sorted(children)}; one trajectory per topic')
    map_frame = frames.pop() or 'map'
    body = (children.pop() if children and next(iter(children)) else
            (source.body_frame or camera_frame)).lstrip('/')
    if body != camera_frame:
        try:
            tf.path(body, camera_frame)
        except InputError as exc:
            raise InputError(f'pose topic {topic} gives poses of {body!r}, but {exc}') from exc
    return CameraPoses(source, map_frame, camera_frame,
                       Trajectory(np.array(stamps, np.int64), np.stack(poses)), tf, body)


def ground_truth_by_stamp(bag_path: str | Path, image_topic: str, source: PoseSource
                          ) -> tuple[dict[int, np.ndarray], str]:
    """Ground truth for evaluation: ``T_map_cam`` at each image header stamp of ``image_topic``
    that has a pose within tolerance (others are absent), and the map frame.

    Reads only the image headers, the pose source and TF (images are not decoded).
    """
    from nre_ros.bagio.reader import IMAGE_TYPES
    with Bag(bag_path) as bag:
        bag.require(image_topic, 'image', IMAGE_TYPES)
        stamps, frames = [], set()
        for m in bag.messages([image_topic]):
            stamps.append(m.stamp_ns)
            frames.add(m.msg.header.frame_id.lstrip('/'))
        if len(frames) != 1 or not next(iter(frames)):
            raise InputError(f'image topic {image_topic}: one non-empty header.frame_id '
                             f'needed to place the camera in TF, got {sorted(frames)}')
        poses = camera_poses(bag, source, frames.pop())
        T, ok = poses.at(np.array(stamps, np.int64))
    if not ok.any():
        a, b = poses.span_s()
        raise InputError(f'{source.describe()}: no pose within {source.tolerance_s} s of any '
                         f'image on {image_topic} (poses span {a:.3f} .. {b:.3f} s)')
    return {int(s): T[i] for i, s in enumerate(stamps) if ok[i]}, poses.map_frame
