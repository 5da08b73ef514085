"""Counters and localization state of a stream (read by the node's diagnostics).

Updated by the stream under its own lock, from the thread that feeds frames and the one that
processes them.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

NOT_LOCALIZED, LOCALIZED, LOST = 'not_localized', 'localized', 'lost'


@dataclass
class StreamStats:
    state: str = 'unconfigured'     # lifecycle state, set by the node
    map_id: str = ''
    map_loaded: bool = False
    map_units_warning: str = ''     # non-empty: the map does not serve metric poses
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
    last_problem: str = ''          # 'bad_input' | 'tf_missing' | failure reason | 'gating'
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

    def localization_state(self, lost_after_failures: int) -> str:
        """NOT_LOCALIZED (no fix yet), LOCALIZED, or LOST (``lost_after_failures`` failed frames
        in a row since the last fix). Reads without the lock: hold it for a consistent view."""
        if self.localized and self.consecutive_failures < lost_after_failures:
            return LOCALIZED
        return LOST if self.ever_localized else NOT_LOCALIZED
