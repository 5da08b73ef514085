"""Offline replay of a bag through a relocalizer, per-frame records, run summary and outputs.

Any object with ``localize(image_rgb, camera, prior=None, depth=None) -> Result | Failure``
(``nre_ros.pipeline.Relocalizer`` or a test fake) can be evaluated.

Frame dropping (``ReplayMode``): offline (default) every frame is processed. In ``realtime``
mode the bag is played at its own rate in *virtual* time: frame i arrives at
``stamp_i - stamp_0``; it is dropped if it arrives while the previous accepted frame is still
being processed (busy until ``arrival + measured processing time``), as the node does with a
depth-1 queue. ``max_rate_hz`` additionally drops frames arriving less than ``1 / max_rate_hz``
after the last accepted one (the node's ``max_rate``). No sleeping: the processing times are
measured and the schedule is computed, so results match a real-time replay on this machine
without the wait. Latency = processing time (publish time - image stamp for an accepted frame).
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

from nre_ros.datasets import write_tum_poses
from nre_ros.eval import run_metrics as rm
from nre_ros.eval.bags import BagFrame
from nre_ros.eval.metrics import FALSE_FIX, THRESHOLDS, nees, summarize
from nre_ros.geometry import invert, pose_error, pose_to_tum

logger = logging.getLogger(__name__)

FIX, FAILURE, DROPPED_BUSY, DROPPED_RATE, NO_CAMERA = (
    'fix', 'failure', 'dropped_busy', 'dropped_rate', 'no_camera_info')


class Localizer(Protocol):
    def localize(self, image, camera, prior=None, depth=None): ...


@dataclass(frozen=True)
class ReplayMode:
    realtime: bool = False
    max_rate_hz: float = 0.0          # 0 = no rate limit; > 0 implies realtime
    use_depth: bool = False

    @property
    def drops_frames(self) -> bool:
        return self.realtime or self.max_rate_hz > 0


@dataclass
class FrameRecord:
    """What happened to one image of the bag. Poses are ``T_cam_world`` (camera from map)."""

    index: int
    stamp_ns: int
    status: str                                    # FIX, FAILURE, DROPPED_*, NO_CAMERA
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
        return self.status in (FIX, FAILURE)

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
           clock: Callable[[], float] = time.perf_counter,
           progress: Callable[[], None] | None = None) -> list[FrameRecord]:
    """Run ``localizer`` on the frames (stamp order) and record every outcome.

    Args:
        clock: seconds; the processing time of a frame is the clock difference around
            ``localize`` (tests pass a fake clock).
        progress: called once per frame (e.g. ``tqdm.update``).
    """
    records: list[FrameRecord] = []
    t0_ns, busy_until_s, last_accept_s = None, -np.inf, -np.inf
    for i, frame in enumerate(frames):
        t0_ns = frame.stamp_ns if t0_ns is None else t0_ns
        arrival_s = (frame.stamp_ns - t0_ns) * 1e-9
        T_gt = None if frame.T_world_cam is None else invert(frame.T_world_cam)
        rec = FrameRecord(i, frame.stamp_ns, FAILURE, T_gt=T_gt)
        records.append(rec)
        if progress:
            progress()
        if frame.camera is None:
            rec.status, rec.reason = NO_CAMERA, 'no camera_info with this stamp'
            continue
        if mode.drops_frames and arrival_s < busy_until_s:
            rec.status, rec.reason = DROPPED_BUSY, 'busy with the previous frame'
            continue
        if mode.max_rate_hz > 0 and arrival_s - last_accept_s < 1.0 / mode.max_rate_hz - 1e-9:
            rec.status, rec.reason = DROPPED_RATE, f'max_rate {mode.max_rate_hz:g} Hz'
            continue
        depth = frame.depth_m if mode.use_depth else None
        start = clock()
        outcome = localizer.localize(frame.rgb, frame.camera, prior=None, depth=depth)
        duration_s = clock() - start
        busy_until_s, last_accept_s = arrival_s + duration_s, arrival_s
        rec.latency_ms = 1e3 * duration_s
        rec.timings_ms = {k: float(v) for k, v in dict(outcome.timings_ms or {}).items()}
        if outcome.ok:
            rec.status = FIX
            rec.T_est = np.asarray(outcome.T_cam_world, dtype=np.float64)
            rec.covariance = np.asarray(outcome.covariance, dtype=np.float64)
        else:
            rec.reason = str(outcome.reason)
        logger.debug('frame %d %.6f: %s %s %.1f ms', i, rec.stamp_s, rec.status, rec.reason,
                     rec.latency_ms)
    return records


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
                 mode: ReplayMode = ReplayMode(), meta: dict | None = None,
                 baselines: dict[str, dict] | None = None,
                 show_progress: bool = True) -> tuple[dict, dict[str, Path]]:
    """Replay ``bag`` through ``localizer`` and write every output to ``out_dir``.

    Returns (metrics, {'csv', 'estimate', 'ground_truth', 'summary', 'report': path}).
    """
    from tqdm import tqdm

    from nre_ros.eval.bags import count_images, read_bag
    total = count_images(bag)
    if callable(getattr(localizer, 'warmup', None)):
        localizer.warmup()      # as the node does at configure: not part of any frame's time
    with tqdm(total=total, unit='frame', desc='evaluate', disable=not show_progress) as bar:
        records = replay(read_bag(bag, with_depth=mode.use_depth), localizer, mode,
                         progress=bar.update)
    metrics = summarize_run(records)
    meta = {'bag': str(bag), **(meta or {}), 'mode': 'realtime' if mode.realtime else (
        f'max_rate {mode.max_rate_hz:g} Hz' if mode.max_rate_hz > 0 else 'offline (every frame)'),
        'created': time.strftime('%Y-%m-%d %H:%M:%S')}
    paths = write_outputs(out_dir, records, metrics, meta, baselines)
    logger.info('%d frames, %d fixes, recall(0.25 m, 2°) %.3f, outputs in %s', len(records),
                metrics['num_fixes'], metrics['recall_25cm_2deg'], out_dir)
    return metrics, paths
