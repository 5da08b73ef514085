"""The node's diagnostic_msgs/DiagnosticStatus (docs/ros.md) from the stream's counters.

``to_status`` builds the single status task (model: rtabmap ``LocalizationStatusTask``) from
``nre_ros.stream.StreamStats``.
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from nre_ros.stream.stats import LOCALIZED, LOST, StreamStats

STATUS_NAME = 'nre_relocalization: localization'


def _level_message(s: StreamStats, lost_after: int) -> tuple[bytes, str]:
    if not s.map_loaded:
        return DiagnosticStatus.ERROR, 'Map not loaded'
    if s.state != 'active':
        return DiagnosticStatus.WARN, f'Node {s.state}'
    if s.last_problem == 'tf_missing':
        return DiagnosticStatus.ERROR, f'TF missing: {s.last_problem_detail}'
    if s.last_problem == 'bad_input':
        return DiagnosticStatus.ERROR, f'Bad input: {s.last_problem_detail}'
    state = s.localization_state(lost_after)
    if state == LOCALIZED:
        if s.map_units_warning:
            return DiagnosticStatus.WARN, 'Localized, in a map without metric units'
        return DiagnosticStatus.OK, 'Localized'
    if state == LOST:
        return DiagnosticStatus.ERROR, 'Localization lost'
    why = f' ({s.last_problem}: {s.last_problem_detail})' if s.last_problem else ''
    return DiagnosticStatus.WARN, 'Not localized yet' + why


def to_status(s: StreamStats, hardware_id: str, lost_after: int) -> DiagnosticStatus:
    with s.lock:
        level, message = _level_message(s, lost_after)
        age = ('' if s.last_success_monotonic is None
               else f'{time.monotonic() - s.last_success_monotonic:.3f}')
        lat = np.array(s.latencies_ms, dtype=np.float64)
        values = {
            'state': s.state, 'map id': s.map_id, 'localized': str(s.localized),
            'map units': s.map_units_warning or 'metric',
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
