"""TF for the node: tf2_ros where it imports, else a small buffer/listener/broadcaster of our own.

The node only needs: ``lookup(target, source, time_ns) -> T_target_source`` (4, 4),
``can_transform``, ``wait_for(..., timeout_s)`` off the executor thread, and a broadcaster that
publishes ``tf2_msgs/TFMessage`` on /tf (reliable, volatile) and /tf_static (reliable,
transient_local). ``TfBuffer`` implements tf2's behaviour without tf2: per child frame a
time-sorted cache (``cache_time_s``) with linear / slerp interpolation, static transforms valid
at all times, lookups chained through the frame tree via the common ancestor, time 0 = latest
common time. No extrapolation: a time outside a dynamic cache raises ``TfLookupError``.
"""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation, Slerp

from nre_ros.geometry import invert, make_transform
from nre_ros.messages import stamp_to_ns, transform_to_matrix
from nre_ros.ros.conversions import matrix_to_transform, ns_to_stamp

try:  # a real ROS install
    import tf2_ros  # type: ignore[import-not-found]
except ImportError:
    tf2_ros = None
try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # tf2_msgs is not on PyPI: scripts/install_ros.sh builds it
    TFMessage = None

TF_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                           reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TfLookupError(Exception):
    """No transform between the frames at the requested time (names both and says why)."""


@dataclass
class _Cache:
    parent: str
    static: bool
    stamps: list[int]             # sorted nanoseconds
    rotations: list[np.ndarray]   # (4,) quaternions xyzw
    translations: list[np.ndarray]


def _quat(T: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(T[:3, :3]).as_quat()


class TfBuffer:
    """Thread-safe transform buffer with tf2's lookup semantics (see module docstring)."""

    def __init__(self, cache_time_s: float = 10.0):
        self.cache_ns = int(cache_time_s * 1e9)
        self._frames: dict[str, _Cache] = {}
        self._lock = threading.Condition()

    # ------------------------------------------------------------------ filling
    def set_transform(self, msg: TransformStamped, is_static: bool = False) -> None:
        """Insert one TransformStamped (parent = header.frame_id, child = child_frame_id)."""
        self.set_matrix(msg.header.frame_id, msg.child_frame_id,
                        transform_to_matrix(msg.transform), stamp_to_ns(msg.header.stamp),
                        is_static)

    def set_matrix(self, parent: str, child: str, T_parent_child: np.ndarray, stamp_ns: int,
                   is_static: bool = False) -> None:
        parent, child = parent.lstrip('/'), child.lstrip('/')
        if not parent or not child or parent == child:
            return  # tf2 rejects these too (with an error log)
        q, t = _quat(T_parent_child), np.asarray(T_parent_child[:3, 3], dtype=np.float64)
        with self._lock:
            cache = self._frames.get(child)
            if cache is None or cache.static != is_static or cache.parent != parent:
                cache = _Cache(parent, is_static, [], [], [])   # re-parenting resets history
                self._frames[child] = cache
            if is_static:
                cache.stamps, cache.rotations, cache.translations = [stamp_ns], [q], [t]
            else:
                i = bisect.bisect_left(cache.stamps, stamp_ns)
                if i < len(cache.stamps) and cache.stamps[i] == stamp_ns:
                    cache.rotations[i], cache.translations[i] = q, t   # TF_REPEATED_DATA
                else:
                    cache.stamps.insert(i, stamp_ns)
                    cache.rotations.insert(i, q)
                    cache.translations.insert(i, t)
                cut = bisect.bisect_left(cache.stamps, cache.stamps[-1] - self.cache_ns)
                if cut:
                    del cache.stamps[:cut], cache.rotations[:cut], cache.translations[:cut]
            self._lock.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    # ------------------------------------------------------------------ queries
    def all_frames(self) -> set[str]:
        with self._lock:
            return set(self._frames) | {c.parent for c in self._frames.values()}

    def _path_to_root(self, frame: str) -> list[str]:
        path, seen = [frame], {frame}
        while frame in self._frames:
            frame = self._frames[frame].parent
            if frame in seen:
                raise TfLookupError(f'TF loop through frame {frame!r}')
            path.append(frame)
            seen.add(frame)
        return path

    def _chain(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Frames from source up to the common ancestor, and from target up to it."""
        up_s, up_t = self._path_to_root(source), self._path_to_root(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            known = sorted(set(self._frames) | {c.parent for c in self._frames.values()})
            raise TfLookupError(f'frames {target!r} and {source!r} are not connected '
                                f'(known frames: {known})')
        return up_s[:up_s.index(common)], up_t[:up_t.index(common)]

    def _latest_common_ns(self, frames: list[str]) -> int:
        latest = [self._frames[f].stamps[-1] for f in frames if not self._frames[f].static]
        return min(latest) if latest else 0

    def _edge(self, child: str, stamp_ns: int) -> np.ndarray:
        """T_parent_child at stamp_ns (interpolated)."""
        c = self._frames[child]
        if c.static:
            return make_transform(Rotation.from_quat(c.rotations[0]).as_matrix(),
                                  c.translations[0])
        if not c.stamps[0] <= stamp_ns <= c.stamps[-1]:
            raise TfLookupError(
                f'lookup of {c.parent!r} -> {child!r} at t={stamp_ns * 1e-9:.6f} s would '
                f'extrapolate (data from {c.stamps[0] * 1e-9:.6f} to {c.stamps[-1] * 1e-9:.6f})')
        i = bisect.bisect_left(c.stamps, stamp_ns)
        if c.stamps[i] == stamp_ns:
            return make_transform(Rotation.from_quat(c.rotations[i]).as_matrix(),
                                  c.translations[i])
        t0, t1 = c.stamps[i - 1], c.stamps[i]
        a = (stamp_ns - t0) / (t1 - t0)
        rots = Rotation.from_quat(np.stack([c.rotations[i - 1], c.rotations[i]]))
        R = Slerp([0.0, 1.0], rots)([a]).as_matrix()[0]
        t = (1 - a) * c.translations[i - 1] + a * c.translations[i]
        return make_transform(R, t)

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """(4, 4) T_target_source at ``stamp_ns`` (0 = latest common time); TfLookupError."""
        target, source = target.lstrip('/'), source.lstrip('/')
        if target == source:
            return np.eye(4)
        with self._lock:
            from_source, from_target = self._chain(target, source)
            if stamp_ns == 0:
                stamp_ns = self._latest_common_ns(from_source + from_target)
            T_root_source = np.eye(4)
            for f in from_source:
                T_root_source = self._edge(f, stamp_ns) @ T_root_source
            T_root_target = np.eye(4)
            for f in from_target:
                T_root_target = self._edge(f, stamp_ns) @ T_root_target
        return invert(T_root_target) @ T_root_source

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
            return True
        except TfLookupError:
            return False

    def wait_for(self, target: str, source: str, stamp_ns: int, timeout_s: float,
                 stop: threading.Event | None = None) -> np.ndarray:
        """Block (off the executor thread!) until the lookup succeeds or ``timeout_s`` passes.

        Raises:
            TfLookupError: with the last lookup's reason once the timeout expires.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            try:
                return self.lookup(target, source, stamp_ns)
            except TfLookupError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    raise TfLookupError(f'{exc} (waited {timeout_s:.3f} s)') from None
                with self._lock:
                    self._lock.wait(min(remaining, 0.01))


class TfListener:
    """Fills a TfBuffer from /tf and /tf_static. ``destroy()`` removes the subscriptions."""

    def __init__(self, buffer: TfBuffer, node, callback_group=None):
        if TFMessage is None:
            raise ImportError('tf2_msgs is not installed (run scripts/install_ros.sh)')
        self.buffer, self.node = buffer, node
        self._subs = [
            node.create_subscription(TFMessage, '/tf', self._on_tf, TF_QOS,
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, '/tf_static', self._on_static, TF_STATIC_QOS,
                                     callback_group=callback_group),
        ]

    def _on_tf(self, msg) -> None:
        for t in msg.transforms:
            self._insert(t, False)

    def _on_static(self, msg) -> None:
        for t in msg.transforms:
            self._insert(t, True)

    def _insert(self, t: TransformStamped, static: bool) -> None:
        try:
            self.buffer.set_transform(t, is_static=static)
        except Exception as exc:  # noqa: BLE001 - a bad message must not kill the listener
            self.node.get_logger().warning(f'ignoring bad TF {t.header.frame_id!r} -> '
                                           f'{t.child_frame_id!r}: {exc}',
                                           throttle_duration_sec=5.0)

    def destroy(self) -> None:
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs = []


def make_transform_stamped(T_parent_child: np.ndarray, parent: str, child: str,
                           stamp_ns: int) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.transform = matrix_to_transform(T_parent_child)
    return msg


class _Tf2RosBuffer:
    """The same interface over a real tf2_ros.Buffer (used where tf2_ros imports)."""

    def __init__(self, cache_time_s: float):
        from rclpy.duration import Duration
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))

    def set_transform(self, msg: TransformStamped, is_static: bool = False) -> None:
        if is_static:
            self._buffer.set_transform_static(msg, 'nre_ros')
        else:
            self._buffer.set_transform(msg, 'nre_ros')

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        from rclpy.time import Time
        try:
            msg = self._buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns))
        except tf2_ros.TransformException as exc:
            raise TfLookupError(str(exc)) from None
        return transform_to_matrix(msg.transform)

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        from rclpy.time import Time
        return bool(self._buffer.can_transform(target, source, Time(nanoseconds=stamp_ns)))

    def wait_for(self, target: str, source: str, stamp_ns: int, timeout_s: float,
                 stop: threading.Event | None = None) -> np.ndarray:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            try:
                return self.lookup(target, source, stamp_ns)
            except TfLookupError as exc:
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    raise TfLookupError(f'{exc} (waited {timeout_s:.3f} s)') from None
                time.sleep(0.005)


class _Tf2RosListener:
    def __init__(self, buffer: _Tf2RosBuffer, node, callback_group=None):
        self._listener = tf2_ros.TransformListener(buffer._buffer, node, spin_thread=False)

    def destroy(self) -> None:
        self._listener.unregister()


def make_buffer_and_listener(node, cache_time_s: float = 10.0, callback_group=None,
                             prefer_tf2_ros: bool = True):
    """(buffer, listener): tf2_ros-backed where it imports, else TfBuffer + TfListener."""
    if tf2_ros is not None and prefer_tf2_ros:
        buffer = _Tf2RosBuffer(cache_time_s)
        return buffer, _Tf2RosListener(buffer, node, callback_group)
    buffer = TfBuffer(cache_time_s)
    return buffer, TfListener(buffer, node, callback_group)


class TfBroadcaster:
    """Publishes TFMessage on /tf (or /tf_static, all transforms in one latched message)."""

    def __init__(self, node, static: bool = False, lifecycle: bool = False):
        if TFMessage is None:
            raise ImportError('tf2_msgs is not installed (run scripts/install_ros.sh)')
        self.node, self.static = node, static
        self._static_msgs: dict[str, TransformStamped] = {}
        create = node.create_lifecycle_publisher if lifecycle else node.create_publisher
        self.publisher = create(TFMessage, '/tf_static' if static else '/tf',
                                TF_STATIC_QOS if static else TF_QOS)
        self._lifecycle = lifecycle

    def send(self, transforms: list[TransformStamped]) -> None:
        if self.static:
            for t in transforms:
                self._static_msgs[t.child_frame_id] = t
            transforms = list(self._static_msgs.values())
        self.publisher.publish(TFMessage(transforms=list(transforms)))

    def destroy(self) -> None:
        if self._lifecycle:
            self.node.destroy_lifecycle_publisher(self.publisher)
        else:
            self.node.destroy_publisher(self.publisher)
