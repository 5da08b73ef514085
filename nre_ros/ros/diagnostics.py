"""Counters of the node and their diagnostic_msgs/DiagnosticStatus (docs/ros.md).

``NodeStats`` is updated from the executor and the worker thread under one lock;
``to_status`` builds the single status task (model: rtabmap ``LocalizationStatusTask``).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

STATUS_NAME = 'nre_relocalization: localization'


@dataclass
class NodeStats:
    state: str = 'unconfigured'
    map_id: str = ''
    map_loaded: bool = False
    frames_received: int = 0
    frames_paired: int = 0
    frames_processed: int = 0
    frames_dropped_busy: int = 0
    frames_skipped_rate: int = 0
    frames_unpaired: int = 0
    frames_without_depth: int = 0
    bad_inputs: int = 0
    tf_failures: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    fixes_rejected: int = 0
    fixes_published: int = 0
    ever_localized: bool = False
    localized: bool = False
    last_success_monotonic: float | None = None
    last_points: int = 0
    last_cost: float = float('nan')
    last_timings_ms: dict[str, float] = field(default_factory=dict)
    last_problem: str = ''          # 'bad_input' | 'tf_missing' | failure reason | 'rejected'
    last_problem_detail: str = ''
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def problem(self, code: str, detail: str) -> None:
        with self.lock:
            self.last_problem, self.last_problem_detail = code, detail

    def reset_fix(self) -> None:
        with self.lock:
            self.localized = self.ever_localized = False
            self.consecutive_failures = 0
            self.last_problem = self.last_problem_detail = ''


def _level_message(s: NodeStats, lost_after: int) -> tuple[bytes, str]:
    if not s.map_loaded:
        return DiagnosticStatus.ERROR, 'Map not loaded'
    if s.state != 'active':
        return DiagnosticStatus.WARN, f'Node {s.state}'
    if s.last_problem == 'tf_missing':
        return DiagnosticStatus.ERROR, f'TF missing: {s.last_problem_detail}'
    if s.last_problem == 'bad_input':
        return DiagnosticStatus.ERROR, f'Bad input: {s.last_problem_detail}'
    if s.localized and s.consecutive_failures < lost_after:
        return DiagnosticStatus.OK, 'Localized'
    if s.ever_localized:
        return DiagnosticStatus.ERROR, 'Localization lost'
    why = f' ({s.last_problem}: {s.last_problem_detail})' if s.last_problem else ''
    return DiagnosticStatus.WARN, 'Not localized yet' + why


def to_status(s: NodeStats, hardware_id: str, lost_after: int) -> DiagnosticStatus:
    with s.lock:
        level, message = _level_message(s, lost_after)
        age = ('' if s.last_success_monotonic is None
               else f'{time.monotonic() - s.last_success_monotonic:.3f}')
        lat = np.array(s.latencies_ms, dtype=np.float64)
        values = {
            'state': s.state, 'map id': s.map_id, 'localized': str(s.localized),
            'last success age (s)': age, 'points used': str(s.last_points),
            'final cost': f'{s.last_cost:.4f}',
            'latency p50 (ms)': f'{np.percentile(lat, 50):.1f}' if lat.size else '',
            'latency p90 (ms)': f'{np.percentile(lat, 90):.1f}' if lat.size else '',
            'frames received': str(s.frames_received), 'frames paired': str(s.frames_paired),
            'frames processed': str(s.frames_processed),
            'frames dropped (busy)': str(s.frames_dropped_busy),
            'frames skipped (max_rate)': str(s.frames_skipped_rate),
            'frames unpaired': str(s.frames_unpaired), 'bad inputs': str(s.bad_inputs),
            'frames without depth': str(s.frames_without_depth),
            'TF lookup failures': str(s.tf_failures), 'localization failures': str(s.failures),
            'fixes rejected by gating': str(s.fixes_rejected),
            'fixes published': str(s.fixes_published),
            'last problem': f'{s.last_problem}: {s.last_problem_detail}'.strip(': '),
        }
        for stage, ms in s.last_timings_ms.items():
            values[f'ms {stage}'] = f'{ms:.1f}'
    values['GPU memory (MB)'] = _gpu_memory_mb()
    return DiagnosticStatus(level=level, name=STATUS_NAME, message=message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


def _gpu_memory_mb() -> str:
    import sys
    torch = sys.modules.get('torch')  # never import torch just for diagnostics
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return f'{torch.cuda.memory_allocated() / 2**20:.0f}'
    except Exception:  # noqa: BLE001 - diagnostics must never raise
        pass
    return ''
