"""The ROS side of ``nre-ros evaluate --live`` (nre_ros.eval.live): a recorder node in the
evaluating process that drives the node's lifecycle, publishes a bag's topics as raw CDR and
records what the node publishes (``~/pose``, map -> odom on /tf, /diagnostics).

``record_session`` is the whole exchange; the node process, the records and the report are
nre_ros.eval.live's. One SingleThreadedExecutor in a background thread (``Spinner``).
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from tf2_msgs.msg import TFMessage

from nre_ros import messages as msgs
from nre_ros.errors import InputError, NreError
from nre_ros.eval.bags import (FRAME_MAP, TOPIC_CAMERA_INFO, TOPIC_DEPTH, TOPIC_IMAGE, BagTruth,
                               topic_connections, typestore)
from nre_ros.ros.conversions import ns_to_stamp
from nre_ros.ros.tf import TF_QOS, TF_STATIC_QOS

logger = logging.getLogger(__name__)

DISCOVERY_SETTLE_S = 1.0   # after topics match, before the first frame (see record_session)


def _msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image."""
    pkg, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


@dataclass
class TfSample:
    recv_s: float
    parent: str
    child: str
    stamp_ns: int
    T: np.ndarray


@dataclass
class Recording:
    """Everything the recorder saw (monotonic seconds of this process)."""

    sent: dict[int, float] = field(default_factory=dict)          # image stamp -> send time
    order: list[int] = field(default_factory=list)                # image stamps as sent
    poses: dict[int, tuple[float, object]] = field(default_factory=dict)  # stamp -> (recv, msg)
    unmatched_poses: int = 0
    duplicate_poses: int = 0
    tf: list[TfSample] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)
    diagnostics_recv_s: float = float('nan')
    messages_sent: int = 0
    first_send_s: float = float('nan')
    last_send_s: float = float('nan')


class Recorder:
    """A plain node in this process: publishers for the bag topics, recorder of the outputs."""

    def __init__(self, context, node_name: str, pose_topic: str | None = None,
                 map_frame: str = FRAME_MAP):
        self.node = Node('nre_live_replay', context=context)
        self.node_name = node_name if node_name.startswith('/') else '/' + node_name
        self.map_frame = map_frame
        self.rec = Recording()
        self._lock = threading.Lock()
        self._pubs: dict[str, object] = {}
        pose_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pose_topic = pose_topic or f'{self.node_name}/pose'
        self.node.create_subscription(PoseWithCovarianceStamped, self.pose_topic, self._on_pose,
                                      pose_qos)
        self.node.create_subscription(TFMessage, '/tf', self._on_tf, TF_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.hardware_id = f'nre_ros/{self.node_name.rsplit("/", 1)[-1]}'
        self._clock_pub = None

    # ------------------------------------------------------------------ publishers
    def publisher(self, topic: str, msgtype: str):
        """Publisher for a bag topic (reliable; /tf_static transient local; images keep 5)."""
        if topic not in self._pubs:
            qos = {'/tf': TF_QOS, '/tf_static': TF_STATIC_QOS}.get(
                topic, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
            self._pubs[topic] = self.node.create_publisher(_msg_class(msgtype), topic, qos)
        return self._pubs[topic]

    def publish_clock(self, stamp_ns: int) -> None:
        if self._clock_pub is None:
            self._clock_pub = self.node.create_publisher(Clock, '/clock', 10)
        self._clock_pub.publish(Clock(clock=ns_to_stamp(int(stamp_ns))))

    def mark_sent(self, stamp_ns: int) -> None:
        now = time.monotonic()
        with self._lock:
            if stamp_ns not in self.rec.sent:
                self.rec.order.append(stamp_ns)
            self.rec.sent[stamp_ns] = now
            if not np.isfinite(self.rec.first_send_s):
                self.rec.first_send_s = now
            self.rec.last_send_s = now

    # ------------------------------------------------------------------ callbacks
    def _on_pose(self, msg) -> None:
        now = time.monotonic()
        stamp = msgs.stamp_to_ns(msg.header.stamp)
        with self._lock:
            if stamp not in self.rec.sent:
                self.rec.unmatched_poses += 1     # e.g. a latched pose of an earlier run
            elif stamp in self.rec.poses:
                self.rec.duplicate_poses += 1
            else:
                self.rec.poses[stamp] = (now, msg)

    def _on_tf(self, msg) -> None:
        now = time.monotonic()
        for t in msg.transforms:
            if t.header.frame_id.lstrip('/') == self.map_frame:
                with self._lock:
                    self.rec.tf.append(TfSample(now, self.map_frame, t.child_frame_id.lstrip('/'),
                                                msgs.stamp_to_ns(t.header.stamp),
                                                msgs.transform_to_matrix(t.transform)))

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.hardware_id == self.hardware_id:
                with self._lock:
                    self.rec.diagnostics = {kv.key: kv.value for kv in st.values}
                    self.rec.diagnostics['_message'] = st.message
                    self.rec.diagnostics_recv_s = time.monotonic()

    def snapshot(self) -> Recording:
        with self._lock:
            return Recording(dict(self.rec.sent), list(self.rec.order), dict(self.rec.poses),
                             self.rec.unmatched_poses, self.rec.duplicate_poses,
                             list(self.rec.tf), dict(self.rec.diagnostics),
                             self.rec.diagnostics_recv_s, self.rec.messages_sent,
                             self.rec.first_send_s, self.rec.last_send_s)

    def num_poses(self) -> int:
        with self._lock:
            return len(self.rec.poses)

    # ------------------------------------------------------------------ lifecycle
    def ensure_active(self, executor_wait, configure_timeout_s: float = 300.0) -> dict:
        """Bring the node to ``active`` through its lifecycle services; time each transition.

        Returns {'initial_state', 'configure_s', 'activate_s'} (NaN for steps not needed).
        """
        get_state = self.node.create_client(GetState, f'{self.node_name}/get_state')
        change = self.node.create_client(ChangeState, f'{self.node_name}/change_state')
        if not get_state.wait_for_service(timeout_sec=configure_timeout_s):
            raise NreError(f'no lifecycle node {self.node_name} answered on '
                           f'{self.node_name}/get_state within {configure_timeout_s:.0f} s')
        change.wait_for_service(timeout_sec=10.0)

        def call(client, request, timeout_s):
            t0 = time.monotonic()
            fut = client.call_async(request)
            if not executor_wait(fut.done, timeout_s):
                raise NreError(f'{client.srv_name} did not answer within {timeout_s:.0f} s')
            return fut.result(), time.monotonic() - t0

        state = call(get_state, GetState.Request(), 10.0)[0].current_state.label
        out = {'initial_state': state, 'configure_s': float('nan'),
               'activate_s': float('nan')}
        if state == 'unconfigured':
            res, out['configure_s'] = call(change, ChangeState.Request(transition=Transition(
                id=Transition.TRANSITION_CONFIGURE)), configure_timeout_s)
            if not res.success:
                raise NreError(f'configure of {self.node_name} failed (see the node log)')
            state = 'inactive'
        if state == 'inactive':
            res, out['activate_s'] = call(change, ChangeState.Request(transition=Transition(
                id=Transition.TRANSITION_ACTIVATE)), 30.0)
            if not res.success:
                raise NreError(f'activate of {self.node_name} failed (see the node log)')
        elif state != 'active':
            raise NreError(f'node {self.node_name} is in state {state!r}; expected '
                           'unconfigured, inactive or active')
        self.node.destroy_client(get_state)
        self.node.destroy_client(change)
        return out


class Spinner:
    """SingleThreadedExecutor in a background thread (rclpy's MultiThreadedExecutor busy-polls
    and would take a core from the node it measures)."""

    def __init__(self, context, node):
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self._spin, name='nre_live_spin', daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - context shut down at the end
            pass

    @staticmethod
    def wait(pred, timeout_s: float, period_s: float = 0.01) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(period_s)
        return bool(pred())

    def stop(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)


# ============================================================================= bag side
def create_publishers(recorder: Recorder, bag: str | Path, use_depth: bool = False) -> list:
    """Publishers of every bag topic ``play_bag`` will send, created before playing so that
    discovery can match them first (a publisher created at its first message loses that message
    to a best-effort subscriber not yet matched: the first CameraInfo went missing)."""
    from rosbags.rosbag2 import Reader
    wanted = {TOPIC_IMAGE, TOPIC_CAMERA_INFO, '/tf', '/tf_static'} | (
        {TOPIC_DEPTH} if use_depth else set())
    with Reader(bag) as reader:
        topics = topic_connections(reader)
        return [recorder.publisher(t, conns[0].msgtype) for t, conns in sorted(topics.items())
                if t in wanted and conns]


def play_bag(recorder: Recorder, bag: str | Path, *, rate: float = 1.0, use_depth: bool = False,
             clock: bool = True, clock_period_s: float = 0.02,
             progress=None) -> None:
    """Publish the bag's sensor topics raw at ``rate`` x bag time (stamps = bag stamps).

    Image, CameraInfo, /tf, /tf_static (and the depth topic with ``use_depth``); the ground
    truth is not published, nor any /tf transform from the map frame (ground truth recorded as
    TF map -> odom, or another localizer's map -> odom): the node publishes map -> odom itself.
    With ``clock``, /clock carries bag time between messages (and equals a message's stamp
    when it is sent).
    """
    from rosbags.rosbag2 import Reader
    if rate <= 0:
        raise InputError(f'--rate must be > 0, got {rate}')
    ts = typestore('humble')
    wanted = {TOPIC_IMAGE, TOPIC_CAMERA_INFO, '/tf', '/tf_static'} | (
        {TOPIC_DEPTH} if use_depth else set())
    with Reader(bag) as reader:
        topics = topic_connections(reader)
        if TOPIC_IMAGE not in topics:
            raise InputError(f'bag {bag} has no topic {TOPIC_IMAGE}; topics: {sorted(topics)}')
        if use_depth and TOPIC_DEPTH not in topics:
            raise InputError(f'--use-depth: bag {bag} has no depth topic {TOPIC_DEPTH}')
        conns = [c for t in wanted for c in topics.get(t, [])]
        t0_bag = start = None
        for conn, t_ns, raw in reader.messages(connections=conns):
            pub = recorder.publisher(conn.topic, conn.msgtype)
            if start is None:
                t0_bag, start = t_ns, time.monotonic()
            target = start + (t_ns - t0_bag) * 1e-9 / rate
            while True:
                now = time.monotonic()
                if clock:
                    recorder.publish_clock(min(t0_bag + int((now - start) * rate * 1e9), t_ns))
                if now >= target:
                    break
                time.sleep(min(clock_period_s if clock else 1.0, target - now))
            if conn.topic == TOPIC_IMAGE:
                stamp = msgs.stamp_to_ns(ts.deserialize_cdr(raw, conn.msgtype).header.stamp)
                recorder.mark_sent(stamp)
                if progress:
                    progress()
            if conn.topic == '/tf':
                raw = without_map_transforms(ts, raw, conn.msgtype)
                if raw is None:
                    continue
            pub.publish(bytes(raw))
            recorder.rec.messages_sent += 1


def without_map_transforms(ts, raw: bytes, msgtype: str) -> bytes | None:
    """A /tf message (CDR) without its transforms whose parent is the map frame: the same
    bytes when it has none, None when nothing is left."""
    msg = ts.deserialize_cdr(raw, msgtype)
    kept = [t for t in msg.transforms if t.header.frame_id.lstrip('/') != FRAME_MAP]
    if len(kept) == len(msg.transforms):
        return raw
    if not kept:
        return None
    msg.transforms = kept
    return bytes(ts.serialize_cdr(msg, msgtype))


# ============================================================================= session
def record_session(bag: str | Path, truth: BagTruth, total: int, opts, proc, live: dict,
                   show_progress: bool = True) -> Recording:
    """Bring the node to active, play ``bag`` through it and record its outputs.

    Args:
        opts: nre_ros.eval.live.LiveOptions. proc: its NodeProcess, or None when attached
            (a node exit is then not watched).
        live: filled with the lifecycle timings and RSS.
    """
    from tqdm import tqdm
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    recorder = Recorder(ctx, opts.node_name, opts.pose_topic)
    spin = Spinner(ctx, recorder.node)
    try:
        def wait(pred, timeout_s):
            def check():
                if proc is not None and not proc.alive():
                    raise NreError(f'the node exited with code {proc.proc.returncode}:\n'
                                   f'{proc.log_tail()}')
                return pred()
            return Spinner.wait(check, timeout_s)
        if opts.clock:   # bag time from the start, so the node's clock is not at 0
            recorder.publish_clock(truth.start_ns)
        try:
            live.update(recorder.ensure_active(wait, opts.startup_timeout_s))
        except NreError as exc:
            tail = proc.log_tail() if proc else ''
            raise NreError(f'{exc}\n{tail}') from None
        live['rss_start_mb'] = proc.status_kb('VmRSS') / 1024 if proc else float('nan')
        img_pub = recorder.publisher(TOPIC_IMAGE, 'sensor_msgs/msg/Image')
        if not wait(lambda: img_pub.get_subscription_count() > 0
                    and recorder.node.count_publishers(recorder.pose_topic) > 0, 30.0):
            raise NreError(f'the node does not subscribe to {TOPIC_IMAGE} or publish '
                           f'{recorder.pose_topic} (remaps? node name {opts.node_name}?)')
        pubs = create_publishers(recorder, bag, opts.use_depth)
        if not wait(lambda: all(p.get_subscription_count() > 0 for p in pubs), 15.0):
            logger.warning('not every bag topic has a subscriber yet: %s', ', '.join(
                p.topic_name for p in pubs if p.get_subscription_count() == 0))
        # Discovery is asymmetric: our writers seeing the node's readers does not mean those
        # readers have matched our writers yet, and best-effort samples sent before that are
        # lost (seen as a missing first frame on a busy machine). Give them a moment.
        wait(lambda: False, DISCOVERY_SETTLE_S)
        with tqdm(total=total, unit='frame', desc='live', disable=not show_progress) as bar:
            play_bag(recorder, bag, rate=opts.rate, use_depth=opts.use_depth, clock=opts.clock,
                     progress=bar.update)
        rec = recorder.rec

        def keep_clock(pred, timeout_s: float) -> bool:
            """Wait for pred; bag time keeps running on /clock (the node's timers use it)."""
            end = time.monotonic() + timeout_s
            while time.monotonic() < end and not pred():
                if opts.clock:
                    last = rec.order[-1] if rec.order else truth.start_ns
                    recorder.publish_clock(last + int((time.monotonic() - rec.last_send_s)
                                                      * opts.rate * 1e9))
                time.sleep(0.02)
            return pred()
        keep_clock(lambda: recorder.num_poses() >= len(rec.order), opts.settle_s)
        t_diag = time.monotonic()       # counters as of after the last pose
        keep_clock(lambda: rec.diagnostics_recv_s > t_diag, 5.0)
        live['rss_end_mb'] = proc.status_kb('VmRSS') / 1024 if proc else float('nan')
        live['rss_peak_mb'] = proc.status_kb('VmHWM') / 1024 if proc else float('nan')
    finally:
        spin.stop()
        recorder.node.destroy_node()
        rclpy.try_shutdown(context=ctx)

    return recorder.snapshot()
