"""Offline replay of a bag through the node's localization stream, per-frame records, run
summary and outputs.

Any object with ``localize(image_rgb, camera, prior=None, depth=None) -> Result | Failure`` and
``map_T_model`` (``nre_ros.pipeline.Relocalizer`` or a test fake) can be evaluated. Frames go
through ``nre_ros.stream.LocalizationStream`` with the node's settings (``StreamConfig``, read
from the node's parameter YAML): stamp pairing, ``max_rate`` dropping, priors
(``use_initial_guess`` with the bag's odometry), the consistency gate and the published
covariance are the node's, so the fixes reported are the ones the node would publish.

Busy dropping (``ReplayMode.realtime``): offline (default) the stream is never busy when a frame
arrives, as with a slow ``--live`` playback. With ``realtime`` the bag is played at its own rate
in *virtual* time: frame i arrives at ``stamp_i - stamp_0`` and the stream stays busy until
``arrival + measured processing time``, so it drops what the node with a depth-1 queue would.
No sleeping: processing times are measured and the schedule computed. Latency = processing
time (publish time - image stamp for an accepted frame).
"""
from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml

from nre_ros.datasets import write_tum_poses
from nre_ros.eval import run_metrics as rm
from nre_ros.eval.bags import BagFrame
from nre_ros.eval.metrics import FALSE_FIX, THRESHOLDS, nees, summarize
from nre_ros.geometry import invert, pose_error, pose_to_tum
from nre_ros.stream import (CovarianceModel, Decision, FrameInputs, LocalizationStream,
                            StreamConfig)
from nre_ros.stream import stream as stream_mod
from nre_ros.stream.config import load_params_file

logger = logging.getLogger(__name__)

FIX, REJECTED, FAILURE, DROPPED_BUSY, DROPPED_RATE, NO_CAMERA, IDLE = (
    'fix', 'rejected', 'failure', 'dropped_busy', 'dropped_rate', 'no_camera_info', 'idle')
_DROPS = {stream_mod.DROPPED_BUSY: (DROPPED_BUSY, 'busy with the previous frame'),
          stream_mod.DROPPED_RATE: (DROPPED_RATE, 'max_rate'),
          stream_mod.PENDING: (NO_CAMERA, 'no camera_info with this stamp'),
          stream_mod.IDLE: (IDLE, 'not requested (continuous: false)')}


PUBLISHED = CovarianceModel(min_position_std=0.0, min_rotation_std=0.0)   # reads back exactly


class Localizer(Protocol):
    map_T_model: object

    def localize(self, image, camera, prior=None, depth=None): ...


@dataclass(frozen=True)
class ReplayMode:
    realtime: bool = False            # virtual bag-rate playback with busy dropping


@dataclass
class FrameRecord:
    """What happened to one image of the bag. Poses are ``T_cam_world`` (camera from map)."""

    index: int
    stamp_ns: int
    status: str                                    # FIX, REJECTED, FAILURE, DROPPED_*, ...
    reason: str = ''
    T_gt: np.ndarray | None = None
    T_est: np.ndarray | None = None
    covariance: np.ndarray | None = None
    latency_ms: float = float('nan')
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns * 1e-9

    @property
    def processed(self) -> bool:
        return self.status in (FIX, REJECTED, FAILURE)

    def errors(self) -> tuple[float, float]:
        """(t_err_m, r_err_deg); inf without a fix, NaN without ground truth."""
        if self.T_gt is None:
            return float('nan'), float('nan')
        if self.T_est is None:
            return float('inf'), float('inf')
        t, r = pose_error(self.T_est, self.T_gt)
        return float(t), float(r)

    def nees(self) -> float:
        if self.T_est is None or self.T_gt is None or self.covariance is None:
            return float('nan')
        return nees(self.T_est, self.T_gt, self.covariance)

    def sigmas(self) -> tuple[float, float]:
        if self.covariance is None:
            return float('nan'), float('nan')
        return rm.predicted_sigmas(self.covariance)


def replay(frames: Iterable[BagFrame], localizer: Localizer, mode: ReplayMode = ReplayMode(),
           config: StreamConfig = StreamConfig(), T_base_cam: np.ndarray | None = None,
           clock: Callable[[], float] = time.perf_counter,
           progress: Callable[[], None] | None = None) -> list[FrameRecord]:
    """Run the frames (stamp order) through a ``LocalizationStream`` over ``localizer`` and record
    every outcome.

    Args:
        config: the node's stream settings (``load_stream_config``).
        T_base_cam: the static base -> camera transform of the bag (None: frames are rejected
            'tf_missing', as the node would without it).
        clock: seconds; the processing time of a frame is the clock difference around
            ``localize`` (tests pass a fake clock).
        progress: called once per frame (e.g. ``tqdm.update``).
    """
    stream = LocalizationStream(config, localizer)
    stream.activate()
    records: list[FrameRecord] = []
    t0_ns, busy_until_s, in_flight = None, -np.inf, False
    for i, frame in enumerate(frames):
        t0_ns = frame.stamp_ns if t0_ns is None else t0_ns
        arrival_s = (frame.stamp_ns - t0_ns) * 1e-9
        if in_flight and arrival_s >= busy_until_s:
            stream.finish_frame()
            in_flight = False
        T_gt = None if frame.T_world_cam is None else invert(frame.T_world_cam)
        rec = FrameRecord(i, frame.stamp_ns, FAILURE, T_gt=T_gt)
        records.append(rec)
        if progress:
            progress()
        if frame.camera is not None:
            stream.add_camera_info(frame.stamp_ns, frame.camera)
        if config.use_depth and frame.depth_m is not None:
            stream.add_depth(frame.stamp_ns, frame.depth_m)
        admission = stream.add_image(frame.stamp_ns, frame.rgb)
        if admission != stream_mod.QUEUED:
            rec.status, rec.reason = _DROPS[admission]
            continue
        job = stream.take_frame()
        inputs = FrameInputs(frame.rgb, job.camera_info, stream.take_depth(job.stamp_ns, 0.0),
                             T_base_cam, frame.T_odom_base)
        start = clock()
        decision = stream.localize(job, inputs)
        duration_s = clock() - start
        if mode.realtime:
            busy_until_s, in_flight = arrival_s + duration_s, True
        else:
            stream.finish_frame()
        _record(rec, decision, T_base_cam, duration_s)
        logger.debug('frame %d %.6f: %s %s %.1f ms', i, rec.stamp_s, rec.status, rec.reason,
                     rec.latency_ms)
    return records


def _record(rec: FrameRecord, decision: Decision, T_base_cam: np.ndarray | None,
            duration_s: float) -> None:
    """Fill a record from the stream's decision: the published pose (camera in map) and
    covariance (back in the solver's convention) of an accepted fix."""
    rec.latency_ms = 1e3 * duration_s
    outcome = decision.outcome
    if outcome is not None:
        rec.timings_ms = {k: float(v) for k, v in dict(outcome.timings_ms or {}).items()}
    if decision.accepted:   # what was published, read back as the live replay does
        T_map_cam = decision.T_map_base @ T_base_cam
        rec.status, rec.T_est = FIX, invert(T_map_cam)
        rec.covariance = PUBLISHED.prior_from_map(decision.covariance, decision.T_map_base,
                                                  T_base_cam)
    elif decision.status == stream_mod.REJECTED:
        rec.status, rec.reason = REJECTED, f'gate: {decision.reason}'
    else:
        rec.reason = str(decision.reason)


def load_stream_config(params_file: str | Path | None = None,
                       params: dict[str, str] | None = None) -> StreamConfig:
    """The node's stream settings: defaults, then a node parameter YAML, then ``NAME:=VALUE``
    overrides (values parsed as YAML scalars, as ``ros2 run ... -p`` does)."""
    values = load_params_file(params_file) if params_file else {}
    for name, text in (params or {}).items():
        values[name] = yaml.safe_load(text) if text.strip() else ''
    return StreamConfig.from_params(values)


# ----------------------------------------------------------------------------- summary
def summarize_run(records: list[FrameRecord]) -> dict:
    """Every run metric (JSON-serializable dict), see docs/ros.md "Evaluation metrics".

    Recall, medians and false-fix rate are over *processed* frames with ground truth (the
    relocalizer's accuracy); availability and fixes per second over all frames (the system's).
    """
    stamps = np.array([r.stamp_s for r in records])
    fixed = np.array([r.status == FIX for r in records], bool)
    has_gt = np.array([r.T_gt is not None for r in records], bool)
    processed = np.array([r.processed for r in records], bool)
    err = np.array([r.errors() for r in records]).reshape(-1, 2)
    lat = np.array([r.latency_ms for r in records])
    sel = processed & has_gt
    summary = summarize(err[sel, 0], err[sel, 1], lat[processed]).as_dict()
    fix_gt = fixed & has_gt
    est = [r.T_est for r in records if r.status == FIX and r.T_gt is not None]
    gt = [r.T_gt for r in records if r.status == FIX and r.T_gt is not None]
    ate = rm.ate_rmse(rm.camera_centres(np.array(est)), rm.camera_centres(np.array(gt))) \
        if est else float('nan')
    statuses = [r.status for r in records]
    reasons: dict[str, int] = {}
    for r in records:
        if r.status == FAILURE:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    summary.update({
        'num_frames': len(records), 'num_processed': int(processed.sum()),
        'num_fixes': int(fixed.sum()), 'num_with_ground_truth': int(has_gt.sum()),
        'num_dropped_busy': statuses.count(DROPPED_BUSY),
        'num_dropped_rate': statuses.count(DROPPED_RATE),
        'num_no_camera_info': statuses.count(NO_CAMERA),
        'num_rejected_by_gate': statuses.count(REJECTED),
        'num_false_fixes': int(np.sum(fix_gt & ((err[:, 0] > FALSE_FIX[0]) |
                                                 (err[:, 1] > FALSE_FIX[1])))),
        'ate_rmse_m': ate,
        'time_to_first_fix_s': rm.time_to_first_fix(stamps, fixed, lat * 1e-3),
        'availability': rm.availability(fixed),
        'fixes_per_second': rm.fixes_per_second(stamps, fixed),
        'duration_s': rm.run_duration_s(stamps),
        'latency_ms': rm.latency_percentiles(lat[processed]),
        'stage_latency_ms': stage_latencies(records),
        'failure_reasons': reasons,
        'thresholds_m_deg': [list(t) for t in THRESHOLDS],
    })
    summary.update(rm.nees_stats([r.nees() for r in records]))
    return summary


def stage_latencies(records: list[FrameRecord]) -> dict[str, dict[str, float]]:
    """Per stage of ``timings_ms``: percentiles over the frames that ran it, and 'mean' over
    all processed frames (0 where a frame skipped the stage), so the stages' means add up to
    the mean 'total' (the pipeline's stages are disjoint)."""
    done = [r for r in records if r.processed]
    stages = sorted({k for r in done for k in r.timings_ms})
    out = {}
    for s in stages:
        out[s] = rm.latency_percentiles([r.timings_ms[s] for r in done if s in r.timings_ms])
        out[s]['mean'] = float(np.mean([r.timings_ms.get(s, 0.0) for r in done]))
    return out


# ----------------------------------------------------------------------------- outputs
def _json_clean(x):
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None   # JSON has no NaN / inf
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(_json_clean(data), indent=2, sort_keys=True) + '\n')


def write_frames_csv(path: str | Path, records: list[FrameRecord]) -> None:
    """One row per image: status, errors, latency, predicted sigmas, NEES, poses, stage times."""
    stages = sorted({k for r in records for k in r.timings_ms})
    pose_cols = ['tx', 'ty', 'tz', 'qx', 'qy', 'qz', 'qw']
    header = (['index', 'stamp_s', 'status', 'reason', 't_err_m', 'r_err_deg', 'latency_ms',
               'sigma_t_m', 'sigma_r_deg', 'nees'] + [f'est_{c}' for c in pose_cols]
              + [f'gt_{c}' for c in pose_cols] + [f'ms_{s}' for s in stages])
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in records:
            t, rot = r.errors()
            st, sr = r.sigmas()
            est = pose_to_tum(invert(r.T_est)) if r.T_est is not None else [''] * 7
            gt = pose_to_tum(invert(r.T_gt)) if r.T_gt is not None else [''] * 7
            fmt = lambda v: '' if v == '' or not np.isfinite(v) else f'{v:.9g}'  # noqa: E731
            stamp = f'{r.stamp_ns // 10**9}.{r.stamp_ns % 10**9:09d}'   # exact, from ns
            w.writerow([r.index, stamp, r.status, r.reason, fmt(t), fmt(rot),
                        fmt(r.latency_ms), fmt(st), fmt(sr), fmt(r.nees())]
                       + [fmt(v) for v in est] + [fmt(v) for v in gt]
                       + [fmt(r.timings_ms.get(s, float('nan'))) for s in stages])


def write_tum_files(out_dir: str | Path, records: list[FrameRecord]) -> tuple[Path, Path]:
    """``estimate.tum`` (published fixes) and ``ground_truth.tum`` (every frame with ground
    truth), both camera-in-map ``T_map_cam`` with the image stamps, for evo."""
    out_dir = Path(out_dir)
    est = [r for r in records if r.status == FIX]
    gt = [r for r in records if r.T_gt is not None]
    paths = out_dir / 'estimate.tum', out_dir / 'ground_truth.tum'
    header = 'T_map_cam (camera optical frame in map): timestamp tx ty tz qx qy qz qw'
    write_tum_poses(paths[0], np.array([r.stamp_s for r in est]),
                    invert(np.array([r.T_est for r in est]).reshape(-1, 4, 4)),
                    header=header)
    write_tum_poses(paths[1], np.array([r.stamp_s for r in gt]),
                    invert(np.array([r.T_gt for r in gt]).reshape(-1, 4, 4)),
                    header=header)
    return paths


def load_baseline(path: str | Path) -> dict:
    """A previous run's summary: its ``summary.json`` or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / 'summary.json'
    from nre_ros.errors import InputError
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f'cannot read baseline summary {path}: {exc}') from exc
    return data.get('metrics', data)


def write_outputs(out_dir: str | Path, records: list[FrameRecord], metrics: dict,
                  meta: dict, baselines: dict[str, dict] | None = None) -> dict[str, Path]:
    """Write frames.csv, estimate.tum, ground_truth.tum, summary.json and report.html."""
    from nre_ros.eval.report import write_report
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_frames_csv(out / 'frames.csv', records)
    est, gt = write_tum_files(out, records)
    write_json(out / 'summary.json', {'meta': meta, 'metrics': metrics,
                                      'baselines': baselines or {}})
    write_report(out / 'report.html', records, metrics, meta, baselines or {})
    return {'csv': out / 'frames.csv', 'estimate': est, 'ground_truth': gt,
            'summary': out / 'summary.json', 'report': out / 'report.html'}


def evaluate_bag(bag: str | Path, localizer: Localizer, out_dir: str | Path,
                 mode: ReplayMode = ReplayMode(), config: StreamConfig = StreamConfig(),
                 meta: dict | None = None, baselines: dict[str, dict] | None = None,
                 show_progress: bool = True, read_options: dict | None = None
                 ) -> tuple[dict, dict[str, Path]]:
    """Replay ``bag`` through the stream over ``localizer`` and write every output to
    ``out_dir``. ``read_options``: topics and ``ground_truth`` for ``read_bag``. Returns
    (metrics, {'csv', 'estimate', 'ground_truth', 'summary', 'report': path})."""
    from tqdm import tqdm

    from nre_ros.eval.bags import (FRAME_BASE, FRAME_CAMERA, TOPIC_IMAGE, count_images, read_bag,
                                   read_static_tf)
    read_options = dict(read_options or {})
    total = count_images(bag, read_options.get('image_topic', TOPIC_IMAGE))
    T_base_cam = read_static_tf(bag, FRAME_BASE, FRAME_CAMERA)
    if callable(getattr(localizer, 'warmup', None)):
        localizer.warmup()      # as the node does at configure: not part of any frame's time
    with tqdm(total=total, unit='frame', desc='evaluate', disable=not show_progress) as bar:
        records = replay(read_bag(bag, with_depth=config.use_depth, **read_options), localizer,
                         mode, config,
                         T_base_cam, progress=bar.update)
    metrics = summarize_run(records)
    rate = f'max_rate {config.max_rate:g} Hz' if config.max_rate > 0 else 'no max_rate'
    meta = {'bag': str(bag), **(meta or {}),
            'mode': ('realtime (virtual bag-rate playback)' if mode.realtime else
                     'offline (never busy)') + f', {rate}, node stream settings',
            'created': time.strftime('%Y-%m-%d %H:%M:%S')}
    paths = write_outputs(out_dir, records, metrics, meta, baselines)
    logger.info('%d frames, %d fixes, recall(0.25 m, 2°) %.3f, outputs in %s', len(records),
                metrics['num_fixes'], metrics['recall_25cm_2deg'], out_dir)
    return metrics, paths
