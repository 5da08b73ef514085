"""The consistency gate: which fixes are published (before the first fix, after a jump).

Fixes are compared through their map->odom transform (T_map_odom), which stays constant while
odometry is consistent, so fixes taken at different robot positions can be compared
(rtabmap_ros#760, scan_tools#48); without odometry (tf_mode map_to_base) through map->base.
The quality of a single fix is judged before this, by the relocalizer's verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nre_ros.geometry import invert, so3_log


@dataclass(frozen=True)
class GateConfig:
    min_consistent_fixes: int = 2
    consistency_translation: float = 0.5   # m
    consistency_rotation: float = 0.2      # rad
    max_jump_translation: float = 0.0      # m, 0 = off
    max_jump_rotation: float = 0.0         # rad, 0 = off

    @classmethod
    def of(cls, cfg) -> 'GateConfig':
        """The gate fields of a StreamConfig."""
        return cls(cfg.min_consistent_fixes, cfg.consistency_translation,
                   cfg.consistency_rotation, cfg.max_jump_translation, cfg.max_jump_rotation)


def transform_distance(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation m, rotation rad) between two (4, 4) transforms."""
    D = invert(T_a) @ T_b
    return float(np.linalg.norm(D[:3, 3])), float(np.linalg.norm(so3_log(D[:3, :3])))


class FixGate:
    """Decides whether a fix (as T_map_odom) is accepted.

    While localized, a fix within the jump thresholds of the current map->odom is accepted at
    once. Otherwise (first fix, after reset, or a jump) it joins a candidate streak; the streak
    is accepted once ``min_consistent_fixes`` mutually consistent fixes arrived in a row.
    """

    def __init__(self, cfg: GateConfig):
        self.cfg = cfg
        self.current: np.ndarray | None = None
        self._streak: list[np.ndarray] = []

    def reset(self) -> None:
        self.current, self._streak = None, []

    def _within_jump(self, T: np.ndarray) -> bool:
        c = self.cfg
        if not c.max_jump_translation and not c.max_jump_rotation:
            return True
        dt, dr = transform_distance(self.current, T)
        return ((not c.max_jump_translation or dt <= c.max_jump_translation)
                and (not c.max_jump_rotation or dr <= c.max_jump_rotation))

    def _consistent(self, T_a: np.ndarray, T_b: np.ndarray) -> bool:
        dt, dr = transform_distance(T_a, T_b)
        return dt <= self.cfg.consistency_translation and dr <= self.cfg.consistency_rotation

    def offer(self, T_map_odom: np.ndarray) -> tuple[bool, str]:
        """(accepted, why). Accepted fixes become ``current``."""
        if self.current is not None and self._within_jump(T_map_odom):
            self.current, self._streak = T_map_odom, []
            return True, 'tracking'
        if self._streak and not self._consistent(self._streak[-1], T_map_odom):
            self._streak = []
        self._streak.append(T_map_odom)
        need = self.cfg.min_consistent_fixes
        if len(self._streak) >= need:
            self.current, self._streak = T_map_odom, []
            return True, 'confirmed' if need > 1 else 'accepted'
        what = 'jump' if self.current is not None else 'first fix'
        return False, f'{what}: {len(self._streak)}/{need} consistent fixes'
