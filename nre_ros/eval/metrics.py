"""Relocalization metrics on per-query outcomes (visuallocalization.net conventions).

A query either has a published estimate (``T_est`` not None) or not (a Failure). Recall counts
every query, failures included; false fixes are published estimates beyond (5 m, 10 deg).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nre_ros.geometry import adjoint, invert, pose_error, se3_log

THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))   # (metres, degrees)
FALSE_FIX = (5.0, 10.0)


@dataclass(frozen=True)
class Summary:
    """Aggregates over N queries. Errors are over published estimates only (NaN if none)."""

    num_queries: int
    num_published: int
    recall: tuple[float, float, float]      # at THRESHOLDS, over all queries
    median_t_m: float
    median_r_deg: float
    false_fix_rate: float                   # false fixes / published estimates (0 if none)
    ms_p50: float
    ms_p90: float

    def as_dict(self) -> dict:
        return {'num_queries': self.num_queries, 'num_published': self.num_published,
                'recall_25cm_2deg': self.recall[0], 'recall_50cm_5deg': self.recall[1],
                'recall_5m_10deg': self.recall[2], 'median_t_m': self.median_t_m,
                'median_r_deg': self.median_r_deg, 'false_fix_rate': self.false_fix_rate,
                'ms_p50': self.ms_p50, 'ms_p90': self.ms_p90}


def errors(T_est: list[np.ndarray | None], T_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (t_err_m, r_err_deg) for poses ``T_cam_world``; inf where T_est is None."""
    t_err = np.full(len(T_est), np.inf)
    r_err = np.full(len(T_est), np.inf)
    for i, T in enumerate(T_est):
        if T is not None:
            t_err[i], r_err[i] = pose_error(T, T_gt[i])
    return t_err, r_err


def summarize(t_err: np.ndarray, r_err: np.ndarray, ms: np.ndarray | None = None) -> Summary:
    """Summary from per-query errors (inf = no published estimate) and latencies in ms."""
    t_err, r_err = np.asarray(t_err, float), np.asarray(r_err, float)
    n = len(t_err)
    published = np.isfinite(t_err)
    recall = tuple(float(np.mean((t_err <= t) & (r_err <= r))) if n else 0.0
                   for t, r in THRESHOLDS)
    false_fix = published & ((t_err > FALSE_FIX[0]) | (r_err > FALSE_FIX[1]))
    ms = np.asarray(ms if ms is not None else [], float)
    return Summary(
        num_queries=n, num_published=int(published.sum()), recall=recall,
        median_t_m=float(np.median(t_err[published])) if published.any() else float('nan'),
        median_r_deg=float(np.median(r_err[published])) if published.any() else float('nan'),
        false_fix_rate=float(false_fix.sum() / max(1, published.sum())),
        ms_p50=float(np.percentile(ms, 50)) if ms.size else float('nan'),
        ms_p90=float(np.percentile(ms, 90)) if ms.size else float('nan'))


def left_increment(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """Twist xi = (rho, phi) (6,) with ``T_est = exp(xi) @ T_gt`` (left increment, SE(3))."""
    return se3_log(T_est @ invert(T_gt))


def nees(T_est: np.ndarray, T_gt: np.ndarray, covariance: np.ndarray) -> float:
    """Normalized estimation error squared of one pose (expected 6 when consistent).

    ``covariance`` is the 6x6 covariance of a left increment on ``T_cam_world`` (translation
    first), as in nre_ros.results.Result.
    """
    xi = left_increment(T_est, T_gt)
    return float(xi @ np.linalg.solve(covariance, xi))


__all__ = ['THRESHOLDS', 'Summary', 'errors', 'summarize', 'nees', 'left_increment', 'adjoint']
