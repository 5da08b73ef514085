"""Live replay: play a bag through the running ``nre_relocalization`` node over ROS 2.

``nre-ros evaluate BAG --map MAP --live``. Unlike the offline replay (``evaluate.py``), nothing
is simulated: the node runs in its own process (started here with ``python -m
nre_ros.ros.node`` and a params file, or already running: ``attach``), and this process

1. drives its lifecycle like a lifecycle manager (``change_state`` configure, then activate;
   the configure service time is measured: Nav2 allows ``service_timeout`` = 5 s by default),
2. publishes the bag's Image, CameraInfo, /tf (odom -> base), /tf_static and optionally depth,
   byte-for-byte (raw CDR), at the bag's rate times ``rate``, stamps = bag stamps, and /clock
   (the node then runs with ``use_sim_time``),
3. records what the node publishes: ``~/pose`` (matched to the images by stamp), map -> odom on
   /tf and its /diagnostics counters, and the node's RSS (from /proc),
4. turns that into the same ``FrameRecord`` list as the offline replay, so the CSV, TUM files,
   JSON summary and HTML report are written by the same code.

Latency of a frame = monotonic receive time of its pose - monotonic time just before its image
was published (both in this process): DDS both ways + pairing + TF wait + localization.

Frame status: ``fix`` when a pose with the image's stamp came back, otherwise ``failure`` with
reason ``no_pose``: from outside the node a failed, gated and a dropped frame look the same, so
live recall is over *all* images sent (offline: over processed ones). The node's own counters
(received / processed / dropped busy / skipped by max_rate / failures / gated) are reported next
to it; when they show no drops, both definitions agree.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nre_ros import messages as msgs
from nre_ros.errors import InputError, NreError
from nre_ros.eval.bags import (FRAME_BASE, FRAME_CAMERA, FRAME_MAP, FRAME_ODOM, TOPIC_CAMERA_INFO,
                               TOPIC_DEPTH, TOPIC_IMAGE, BagTruth, read_truth, topic_connections,
                               typestore)
from nre_ros.eval.evaluate import FAILURE, FIX, FrameRecord
from nre_ros.geometry import invert, pose_error
from nre_ros.ros.dds import ensure_isolation, ensure_large_image_profile
from nre_ros.stream.covariance import CovarianceModel

logger = logging.getLogger(__name__)

NODE_NAME = '/nre_relocalization'
REPO = Path(__file__).resolve().parents[2]
NO_POSE = 'no_pose'
DISCOVERY_SETTLE_S = 1.0   # after topics match, before the first frame (see run_live)
# diagnostics key -> summary key
COUNTERS = {
    'frames received': 'frames_received', 'frames paired': 'frames_paired',
    'frames processed': 'frames_processed', 'frames dropped (busy)': 'frames_dropped_busy',
    'frames skipped (max_rate)': 'frames_skipped_rate', 'frames unpaired': 'frames_unpaired',
    'bad inputs': 'bad_inputs', 'TF lookup failures': 'tf_failures',
    'localization failures': 'localization_failures',
    'fixes rejected by gating': 'fixes_rejected', 'fixes published': 'fixes_published',
    'frames without depth': 'frames_without_depth',
}


def default_params_file() -> Path | None:
    """config/nre_ros.yaml of the checkout, else of the pip install's share dir, else None."""
    for p in (REPO / 'config' / 'nre_ros.yaml',
              Path(sys.prefix) / 'share' / 'nre_ros' / 'config' / 'nre_ros.yaml'):
        if p.is_file():
            return p
    return None


# ============================================================================= node process
def node_command(map_path: str, *, params_file: str | Path | None = None,
                 params: dict[str, str] | None = None, use_sim_time: bool = True,
                 image_topic: str = TOPIC_IMAGE, depth_topic: str | None = None,
                 program: list[str] | None = None, node_name: str = NODE_NAME) -> list[str]:
    """Command line that starts the node like a launch file would (no autostart).

    Args:
        params: extra parameters, ``name -> value`` strings (node-specific ``-p`` overrides,
            which win over the params file).
        program: what to run instead of ``python -m nre_ros.ros.node`` (e.g. the oracle node).
    """
    name = node_name.rsplit('/', 1)[-1]
    cmd = list(program or [sys.executable, '-m', 'nre_ros.ros.node'])
    cmd.append('--ros-args')
    if params_file:
        cmd += ['--params-file', str(params_file)]
    values = {'map_path': map_path, 'autostart': 'false',
              'use_sim_time': 'true' if use_sim_time else 'false'}
    if depth_topic:
        values['use_depth'] = 'true'
    values.update(params or {})
    for k, v in values.items():
        cmd += ['-p', f'{name}:{k}:={v}']
    cmd += ['-r', f'image:={image_topic}']
    if depth_topic:
        cmd += ['-r', f'depth:={depth_topic}']
    return cmd


class NodeProcess:
    """The node in a subprocess: output to ``log_path``, RSS from /proc, SIGINT to stop."""

    def __init__(self, cmd: list[str], log_path: str | Path, env: dict | None = None):
        self.cmd, self.log_path = cmd, Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(REPO) if (REPO / 'nre_ros').is_dir() else None)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status_kb(self, key: str) -> float:
        """A ``/proc/PID/status`` field in kB (VmRSS, VmHWM); NaN once the process is gone."""
        return proc_status_kb(self.pid, key)

    def log_tail(self, n: int = 15) -> str:
        try:
            return ''.join(self.log_path.read_text(errors='replace').splitlines(True)[-n:])
        except OSError:
            return ''

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGINT (the node cleans up and exits 0), SIGKILL after ``timeout_s``."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                if hasattr(signal, 'SIGUSR1'):   # the node dumps every thread's stack to its log
                    self.proc.send_signal(signal.SIGUSR1)
                    time.sleep(1.0)
                logger.warning('node did not exit %.0f s after SIGINT; killing it (stacks in %s)',
                               timeout_s, self.log_path)
                self.proc.kill()
                self.proc.wait(timeout=5.0)
        self._log.close()
        return self.proc.returncode


def proc_status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith(key + ':'):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return float('nan')


# ============================================================================= ROS side
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

    def __init__(self, context, node_name: str = NODE_NAME, pose_topic: str | None = None,
                 map_frame: str = FRAME_MAP):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        from nre_ros.ros.tf import TF_QOS
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
            from rclpy.qos import QoSProfile, ReliabilityPolicy

            from nre_ros.ros.tf import TF_QOS, TF_STATIC_QOS
            qos = {'/tf': TF_QOS, '/tf_static': TF_STATIC_QOS}.get(
                topic, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
            self._pubs[topic] = self.node.create_publisher(_msg_class(msgtype), topic, qos)
        return self._pubs[topic]

    def publish_clock(self, stamp_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        from nre_ros.ros.conversions import ns_to_stamp
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
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState
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
        from rclpy.executors import SingleThreadedExecutor
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
    truth is not published. With ``clock``, /clock carries bag time between messages (and
    equals a message's stamp when it is sent).
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
            pub.publish(bytes(raw))
            recorder.rec.messages_sent += 1


# ============================================================================= records
def _tf_candidates(tfs: list[TfSample], lo_s: float, hi_s: float, child: str) -> list[TfSample]:
    """map -> ``child`` samples received in [lo_s, hi_s]."""
    return [t for t in tfs if t.child == child and lo_s <= t.recv_s <= hi_s]


def build_records(rec: Recording, truth: BagTruth, *, odom_frame: str = FRAME_ODOM,
                  base_frame: str = FRAME_BASE) -> tuple[list[FrameRecord], dict]:
    """FrameRecords (poses as ``T_cam_world``, covariance back in the solver's convention)
    and a TF check (REP 105): among the map->odom broadcasts received between the previous and
    the next pose (the node sends one with each fix and republishes it), the one that agrees
    best, composed with the bag's odom->base at the image stamp, must equal the published
    map->base. Which broadcast belongs to which fix cannot be told from outside under load
    (two topics, executor order), hence the best of the window: a wrong composition in the
    node shows, a pairing mix-up here does not."""
    if truth.T_base_cam is None:
        raise InputError(f'the bag has no /tf_static {FRAME_BASE} -> {FRAME_CAMERA}: cannot '
                         'turn published base poses into camera poses')
    T_bc = truth.T_base_cam
    exact = CovarianceModel(min_position_std=0.0, min_rotation_std=0.0)   # no floors to undo
    records: list[FrameRecord] = []
    tf_err_t, tf_err_r, tf_missing = [], [], 0
    recvs = sorted(r for r, _ in rec.poses.values())
    for i, stamp in enumerate(rec.order):
        gt = truth.T_map_cam.get(stamp)
        r = FrameRecord(i, stamp, FAILURE, reason=NO_POSE,
                        T_gt=None if gt is None else invert(gt))
        records.append(r)
        if stamp not in rec.poses:
            continue
        recv_s, msg = rec.poses[stamp]
        T_map_base = msgs.pose_to_matrix(msg.pose.pose)
        cov_ros = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        r.status, r.reason = FIX, ''
        r.T_est = invert(T_map_base @ T_bc)
        r.covariance = exact.prior_from_map(cov_ros, T_map_base, T_bc)
        r.latency_ms = 1e3 * (recv_s - rec.sent[stamp])
        k = recvs.index(recv_s)
        lo = recvs[k - 1] - 0.5 if k > 0 else recv_s - 5.0
        hi = recvs[k + 1] + 0.5 if k + 1 < len(recvs) else recv_s + 5.0
        T_ob = truth.T_odom_base.get(stamp)
        cands = [t.T @ T_ob for t in _tf_candidates(rec.tf, lo, hi, odom_frame)
                 if T_ob is not None]
        cands += [t.T for t in _tf_candidates(rec.tf, lo, hi, base_frame)]
        if not cands:
            tf_missing += 1
            continue
        errs = [tuple(map(float, pose_error(invert(T), invert(T_map_base)))) for T in cands]
        dt, dr = min(errs)
        tf_err_t.append(dt)
        tf_err_r.append(dr)
    checks = {'tf_checked': len(tf_err_t), 'tf_missing': tf_missing,
              'tf_max_error_m': max(tf_err_t) if tf_err_t else float('nan'),
              'tf_max_error_deg': max(tf_err_r) if tf_err_r else float('nan')}
    return records, checks


def node_counters(diagnostics: dict[str, str]) -> dict:
    """The node's /diagnostics counters as ints (missing ones left out)."""
    out: dict = {}
    for key, name in COUNTERS.items():
        try:
            out[name] = int(diagnostics[key])
        except (KeyError, ValueError):
            pass
    for key in ('latency p50 (ms)', 'latency p90 (ms)'):
        try:
            out['node_' + key.split()[1] + '_ms'] = float(diagnostics[key])
        except (KeyError, ValueError):
            pass
    if '_message' in diagnostics:
        out['status'] = diagnostics['_message']
    return out


# ============================================================================= session
@dataclass
class LiveOptions:
    rate: float = 1.0                    # playback speed (x bag time)
    use_depth: bool = False
    clock: bool = True                   # publish /clock (node on use_sim_time)
    attach: bool = False                 # use an already running node
    node_name: str = NODE_NAME
    pose_topic: str | None = None        # default <node_name>/pose
    params_file: str | None = None       # default config/nre_ros.yaml
    params: dict[str, str] = field(default_factory=dict)
    program: list[str] | None = None     # instead of python -m nre_ros.ros.node
    settle_s: float = 10.0               # wait for poses after the last image
    startup_timeout_s: float = 300.0
    node_log: str | None = None          # default <out>/node.log
    domain_id: int | None = None


@dataclass
class LiveResult:
    records: list[FrameRecord]
    live: dict                            # counters, checks, timings, resources


def run_live(bag: str | Path, map_path: str, out_dir: str | Path,
             opts: LiveOptions = LiveOptions(), show_progress: bool = True) -> LiveResult:
    """Start (or attach to) the node, replay ``bag`` through it, record; see module docstring."""
    import rclpy
    from tqdm import tqdm
    bag, out_dir = Path(bag), Path(out_dir)
    if not bag.exists():
        raise InputError(f'bag {bag} does not exist')
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_isolation(domain_id=opts.domain_id)
    # Fast DDS reads the profile at the process's first participant: call this from a fresh
    # process (the CLI) or set FASTDDS_DEFAULT_PROFILES_FILE before any rclpy.init.
    profile = ensure_large_image_profile()
    truth = read_truth(bag)
    from nre_ros.eval.bags import count_images
    total = count_images(bag)

    proc = None
    if not opts.attach:
        params_file = opts.params_file or default_params_file()
        cmd = node_command(map_path, params_file=params_file, params=opts.params,
                           use_sim_time=opts.clock, program=opts.program,
                           node_name=opts.node_name,
                           depth_topic=TOPIC_DEPTH if opts.use_depth else None)
        proc = NodeProcess(cmd, opts.node_log or out_dir / 'node.log', env=dict(os.environ))
        logger.info('started the node (pid %d): %s', proc.pid, ' '.join(cmd))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    recorder = Recorder(ctx, opts.node_name, opts.pose_topic)
    spin = Spinner(ctx, recorder.node)
    live: dict = {'node_pid': proc.pid if proc else None, 'attached': opts.attach,
                  'rate': opts.rate, 'clock': opts.clock, 'fastdds_profile': profile,
                  'node_log': str(proc.log_path) if proc else None}
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
        if proc is not None:
            live['node_exit_code'] = proc.stop()
    rec = recorder.snapshot()
    records, checks = build_records(rec, truth)
    live.update(checks)
    live.update({'images_sent': len(rec.order), 'poses_received': len(rec.poses),
                 'unmatched_poses': rec.unmatched_poses, 'duplicate_poses': rec.duplicate_poses,
                 'messages_sent': rec.messages_sent,
                 'send_duration_s': rec.last_send_s - rec.first_send_s,
                 'node': node_counters(rec.diagnostics)})
    return LiveResult(records, live)


def evaluate_live(bag: str | Path, map_path: str, out_dir: str | Path,
                  opts: LiveOptions = LiveOptions(), meta: dict | None = None,
                  baselines: dict[str, dict] | None = None,
                  show_progress: bool = True) -> tuple[dict, dict[str, Path]]:
    """``run_live`` + the offline outputs (CSV, TUM, summary.json with a ``live`` section,
    report.html). Returns (metrics, paths) like ``evaluate_bag``."""
    from nre_ros.eval.evaluate import summarize_run, write_outputs
    result = run_live(bag, map_path, out_dir, opts, show_progress)
    metrics = summarize_run(result.records)
    metrics['live'] = result.live
    meta = {'bag': str(bag), **(meta or {}),
            'mode': f'live over ROS 2 (rate {opts.rate:g}x, '
                    f'{"attached" if opts.attach else "node started here"})',
            'created': time.strftime('%Y-%m-%d %H:%M:%S')}
    paths = write_outputs(out_dir, result.records, metrics, meta, baselines)
    return metrics, paths


def format_table(metrics: dict) -> str:
    """The live summary as an aligned two-column text table."""
    live, node = metrics['live'], metrics['live'].get('node', {})
    lat = metrics['latency_ms']

    def f(v, fmt='{:.3f}'):
        return '-' if v is None or (isinstance(v, float) and not np.isfinite(v)) else \
            fmt.format(v)
    rows = [
        ('images sent / poses received', f"{live['images_sent']} / {live['poses_received']}"),
        ('node: received / processed', f"{node.get('frames_received', '-')} / "
                                       f"{node.get('frames_processed', '-')}"),
        ('node: dropped busy / skipped max_rate', f"{node.get('frames_dropped_busy', '-')} / "
                                                  f"{node.get('frames_skipped_rate', '-')}"),
        ('node: failures / gated / bad input / TF', f"{node.get('localization_failures', '-')}"
         f" / {node.get('fixes_rejected', '-')} / {node.get('bad_inputs', '-')} / "
         f"{node.get('tf_failures', '-')}"),
        ('recall 0.25m,2° / 0.5m,5° / 5m,10°', f"{f(metrics['recall_25cm_2deg'])} / "
         f"{f(metrics['recall_50cm_5deg'])} / {f(metrics['recall_5m_10deg'])}"),
        ('median error (m / °)', f"{f(metrics.get('median_t_m'), '{:.4f}')} / "
                                 f"{f(metrics.get('median_r_deg'), '{:.3f}')}"),
        ('ATE unaligned (m)', f(metrics['ate_rmse_m'], '{:.4f}')),
        ('false fixes', str(metrics['num_false_fixes'])),
        ('NEES mean / median', f"{f(metrics['nees_mean'], '{:.1f}')} / "
                               f"{f(metrics['nees_median'], '{:.1f}')}"),
        ('latency image->pose p50/p90/p99 (ms)', f"{f(lat['p50'], '{:.0f}')} / "
         f"{f(lat['p90'], '{:.0f}')} / {f(lat['p99'], '{:.0f}')}"),
        ('map->odom o odom->base vs pose (m / °)', f"{f(live['tf_max_error_m'], '{:.1e}')} / "
         f"{f(live['tf_max_error_deg'], '{:.1e}')} ({live['tf_checked']} checked)"),
        ('configure / activate (s)', f"{f(live.get('configure_s'), '{:.2f}')} / "
                                     f"{f(live.get('activate_s'), '{:.2f}')}"),
        ('node RSS start / end / peak (MB)', f"{f(live.get('rss_start_mb'), '{:.0f}')} / "
         f"{f(live.get('rss_end_mb'), '{:.0f}')} / {f(live.get('rss_peak_mb'), '{:.0f}')}"),
    ]
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)
