"""Open a rosbag2 (sqlite3 or mcap), look up topics, stream and decode messages.

Every error names the bag and the topic, and lists the topics the bag has when one is missing.
Stamps are header stamps in integer nanoseconds; ``log_ns`` is the bag's receive time, used to
fetch one message again later (``Bag.message_at``).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nre_ros import messages as msgs
from nre_ros.camera import Camera
from nre_ros.errors import InputError

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/PoseWithCovarianceStamped',
              'nav_msgs/msg/Odometry', 'geometry_msgs/msg/TransformStamped')
TF_TOPICS = ('/tf', '/tf_static')


def stamp_ns(header) -> int:
    """Header stamp -> integer nanoseconds."""
    return msgs.stamp_to_ns(header.stamp)


def sibling_camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic of an image topic, as image_transport names it.

    ``/cam/color/image_raw`` and ``/cam/color/image_raw/compressed`` -> ``/cam/color/camera_info``.
    """
    parts = image_topic.rstrip('/').split('/')
    if parts[-1] in ('compressed', 'theora', 'compressedDepth') and len(parts) > 2:
        parts = parts[:-1]
    return '/'.join(parts[:-1] + ['camera_info'])


@dataclass(frozen=True)
class Message:
    """One deserialized message: header stamp (or receive time when it has no header)."""

    topic: str
    msgtype: str
    stamp_ns: int
    log_ns: int
    msg: object


class Bag:
    """An open rosbag2 (use as a context manager)."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import Reader
        from rosbags.typesys import Stores, get_typestore
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f'bag {self.path} does not exist')
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:                     # rosbags raises its own error types
            raise InputError(f'cannot open bag {self.path}: {exc}') from exc
        self._ts = get_typestore(Stores.ROS2_HUMBLE)
        self.connections: dict[str, list] = {}
        for c in self._reader.connections:
            self.connections.setdefault(c.topic, []).append(c)

    def __enter__(self) -> 'Bag':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {t: cs[0].msgtype for t, cs in self.connections.items()}

    def count(self, topic: str) -> int:
        return sum(c.msgcount for c in self.connections.get(topic, []))

    def require(self, topic: str, what: str, types: tuple[str, ...]) -> str:
        """The message type of ``topic``; InputError naming it when absent, empty or mistyped."""
        if topic not in self.connections:
            raise InputError(f'bag {self.path} has no {what} topic {topic}; topics: '
                             f'{", ".join(f"{t} ({m})" for t, m in sorted(self.topics.items()))}')
        msgtype = self.topics[topic]
        if msgtype not in types:
            raise InputError(f'bag {self.path}: {what} topic {topic} has type {msgtype}, '
                             f'expected {" or ".join(types)}')
        if self.count(topic) == 0:
            raise InputError(f'bag {self.path}: {what} topic {topic} has no messages')
        return msgtype

    def messages(self, topics: tuple[str, ...] | list[str], start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[Message]:
        """Messages of ``topics`` in receive-time order (``stop_ns`` exclusive)."""
        conns = [c for t in topics for c in self.connections.get(t, [])]
        if not conns:
            return
        start_ns = None if start_ns is None else int(start_ns)   # numpy ints do not bind in
        stop_ns = None if stop_ns is None else int(stop_ns)      # sqlite3 queries
        for conn, log_ns, raw in self._reader.messages(connections=conns, start=start_ns,
                                                       stop=stop_ns):
            try:
                msg = self._ts.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:                 # corrupt payload
                raise InputError(f'bag {self.path}: cannot decode a {conn.msgtype} message on '
                                 f'{conn.topic} at {log_ns} ns: {exc}') from exc
            header = getattr(msg, 'header', None)
            stamp = stamp_ns(header) if header is not None else int(log_ns)
            yield Message(conn.topic, conn.msgtype, stamp, int(log_ns), msg)

    def message_at(self, topic: str, log_ns: int, stamp: int | None = None) -> Message:
        """The message of ``topic`` received at ``log_ns`` (with header stamp ``stamp``)."""
        for m in self.messages([topic], log_ns, log_ns + 1):
            if stamp is None or m.stamp_ns == stamp:
                return m
        raise InputError(f'bag {self.path}: no message on {topic} at {log_ns} ns')


def decode_color(m: Message) -> np.ndarray:
    """Image or CompressedImage message -> (H, W, 3) uint8 RGB; InputError naming the topic."""
    try:
        if m.msgtype == 'sensor_msgs/msg/CompressedImage':
            return msgs.compressed_to_rgb(m.msg)
        return msgs.image_to_rgb(m.msg)
    except InputError as exc:
        raise InputError(f'image topic {m.topic}: cannot read the image at stamp '
                         f'{m.stamp_ns} ns: {exc}') from exc


def decode_depth(m: Message) -> np.ndarray:
    """Depth Image (16UC1 mm or 32FC1 m) -> (H, W) float32 metres, 0 = invalid."""
    try:
        return msgs.depth_to_metres(m.msg)
    except InputError as exc:
        raise InputError(f'depth topic {m.topic}: {exc}') from exc


def decode_camera_info(m: Message) -> Camera:
    """CameraInfo -> Camera; InputError naming the topic when unusable."""
    try:
        return msgs.camera_info_to_camera(m.msg)
    except InputError as exc:
        raise InputError(f'camera info topic {m.topic}: {exc}') from exc
