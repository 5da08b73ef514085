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

Steps 1-3 (everything that imports rclpy) are ``nre_ros.ros.replay.record_session``; this module
starts the node process and builds the records and metrics.

Latency of a frame = monotonic receive time of its pose - monotonic time just before its image
was published (both in this process): DDS both ways + pairing + TF wait + localization.

Frame status: ``fix`` when a pose with the image's stamp came back, otherwise ``failure`` with
reason ``no_pose``: from outside the node a failed, gated and a dropped frame look the same, so
live recall is over *all* images sent (offline: over processed ones). The node's own counters
(received / processed / dropped busy / skipped by max_rate / failures / gated) are reported next
to it; when they show no drops, both definitions agree.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nre_ros import messages as msgs
from nre_ros.errors import InputError, NreError
from nre_ros.eval.bags import (FRAME_BASE, FRAME_CAMERA, FRAME_ODOM, TOPIC_DEPTH, TOPIC_IMAGE,
                               BagTruth, read_truth)
from nre_ros.eval.evaluate import FAILURE, FIX, FrameRecord
from nre_ros.geometry import invert, pose_error
from nre_ros.ros.dds import ensure_isolation, ensure_large_image_profile
from nre_ros.stream.covariance import CovarianceModel

if TYPE_CHECKING:   # the ROS side (rclpy) is imported only when a live run starts
    from nre_ros.ros.replay import Recording, TfSample

logger = logging.getLogger(__name__)

NODE_NAME = '/nre_relocalization'
REPO = Path(__file__).resolve().parents[2]
NO_POSE = 'no_pose'
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


def _end_with_parent(parent_pid: int):
    """A ``preexec_fn`` (Linux) asking the kernel to SIGTERM the child when its parent dies,
    so a node started by a killed ``evaluate --live`` (or test) does not run on, orphaned."""
    def arm() -> None:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent_pid:       # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


class NodeProcess:
    """The node in a subprocess: output to ``log_path``, RSS from /proc, SIGINT to stop; on
    Linux it is terminated when this process dies, whatever kills it."""

    def __init__(self, cmd: list[str], log_path: str | Path, env: dict | None = None):
        self.cmd, self.log_path = cmd, Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=str(REPO) if (REPO / 'nre_ros').is_dir() else None,
            preexec_fn=_end_with_parent(os.getpid()) if sys.platform == 'linux' else None)
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
    # T_map_cam by image stamp (bagio.poses.ground_truth_by_stamp: a pose topic, TF or TUM
    # file, interpolated); None = the bag's /ground_truth at exact stamps
    ground_truth: dict[int, np.ndarray] | None = None


@dataclass
class LiveResult:
    records: list[FrameRecord]
    live: dict                            # counters, checks, timings, resources


def run_live(bag: str | Path, map_path: str, out_dir: str | Path,
             opts: LiveOptions = LiveOptions(), show_progress: bool = True) -> LiveResult:
    """Start (or attach to) the node, replay ``bag`` through it, record; see module docstring."""
    bag, out_dir = Path(bag), Path(out_dir)
    if not bag.exists():
        raise InputError(f'bag {bag} does not exist')
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_isolation(domain_id=opts.domain_id)
    # Fast DDS reads the profile at the process's first participant: call this from a fresh
    # process (the CLI) or set FASTDDS_DEFAULT_PROFILES_FILE before any rclpy.init.
    profile = ensure_large_image_profile()
    try:   # after the DDS settings: rclpy is imported here, never by a plain evaluation
        from nre_ros.ros.replay import record_session
    except ImportError as exc:
        raise NreError(f'--live needs rclpy and tf2_msgs ({exc}); see scripts/install_ros.sh')
    truth = read_truth(bag)
    if opts.ground_truth is not None:
        truth.T_map_cam = dict(opts.ground_truth)
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
    live: dict = {'node_pid': proc.pid if proc else None, 'attached': opts.attach,
                  'rate': opts.rate, 'clock': opts.clock, 'fastdds_profile': profile,
                  'node_log': str(proc.log_path) if proc else None}
    try:
        rec = record_session(bag, truth, total, opts, proc, live, show_progress)
    finally:
        if proc is not None:
            live['node_exit_code'] = proc.stop()
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
