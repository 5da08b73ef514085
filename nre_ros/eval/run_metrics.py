"""Metrics of a replayed run (a time series of frames), complementing ``nre_ros.eval.metrics``.

Conventions: ``stamps_s`` are image stamps in seconds; ``fixed`` marks frames for which a pose was
published; errors are ``inf`` where nothing was published. All poses are unaligned (the map frame
is absolute, docs/ros.md "Evaluation metrics").
"""
from __future__ import annotations

import numpy as np

CHI2_6DOF_95 = 12.591587243743977   # scipy.stats.chi2.ppf(0.95, 6)
LATENCY_PERCENTILES = (50, 90, 99)


def camera_centres(T_cam_world: np.ndarray) -> np.ndarray:
    """(N, 4, 4) camera-from-world poses -> (N, 3) camera centres in the world, ``-R^T t``."""
    T = np.asarray(T_cam_world, dtype=np.float64).reshape(-1, 4, 4)
    return -np.einsum('nji,nj->ni', T[:, :3, :3], T[:, :3, 3])


def ate_rmse(centres_est: np.ndarray, centres_gt: np.ndarray) -> float:
    """Absolute trajectory error without alignment: RMSE of (N, 3) camera-centre differences.

    Only pass published fixes (and their ground truth); NaN when N = 0. Equals
    ``evo_ape tum gt est`` (translation part, no ``-a``/``-s``) on the same poses.
    """
    d = (np.asarray(centres_est, float).reshape(-1, 3)
         - np.asarray(centres_gt, float).reshape(-1, 3))
    if not len(d):
        return float('nan')
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def time_to_first_fix(stamps_s: np.ndarray, fixed: np.ndarray,
                      latency_s: np.ndarray | None = None) -> float:
    """Seconds from the first image stamp to the first published pose (NaN if never fixed).

    The pose is published ``latency_s`` after its image stamp; without latencies the first
    fixed image's stamp counts.
    """
    stamps_s, fixed = np.asarray(stamps_s, float), np.asarray(fixed, bool)
    if not fixed.any():
        return float('nan')
    i = int(np.argmax(fixed))
    lat = 0.0 if latency_s is None else float(np.asarray(latency_s, float)[i])
    return float(stamps_s[i] + lat - stamps_s.min())


def availability(fixed: np.ndarray) -> float:
    """Fraction of frames (all frames of the bag, dropped ones included) with a published fix."""
    fixed = np.asarray(fixed, bool)
    return float(fixed.mean()) if fixed.size else float('nan')


def run_duration_s(stamps_s: np.ndarray) -> float:
    """Span of the run: last - first stamp plus one median frame period (N frames = N periods)."""
    s = np.sort(np.asarray(stamps_s, float))
    if s.size < 2:
        return float('nan')
    return float(s[-1] - s[0] + np.median(np.diff(s)))


def fixes_per_second(stamps_s: np.ndarray, fixed: np.ndarray) -> float:
    """Published fixes per second of bag time (see ``run_duration_s``)."""
    duration = run_duration_s(stamps_s)
    if not (np.isfinite(duration) and duration > 0):
        return float('nan')
    return float(np.sum(fixed) / duration)


def latency_percentiles(ms: np.ndarray, percentiles=LATENCY_PERCENTILES) -> dict[str, float]:
    """{'p50': .., 'p90': .., 'p99': ..} in ms (numpy's linear interpolation); NaN if empty."""
    ms = np.asarray(ms, float)
    ms = ms[np.isfinite(ms)]
    return {f'p{p}': float(np.percentile(ms, p)) if ms.size else float('nan') for p in percentiles}


def nees_stats(values: np.ndarray) -> dict[str, float]:
    """Mean and median NEES (6 DoF: 6 if consistent), fraction under the 95 % chi2 bound."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {'nees_mean': float('nan'), 'nees_median': float('nan'),
                'nees_within_95': float('nan'), 'nees_count': 0}
    return {'nees_mean': float(v.mean()), 'nees_median': float(np.median(v)),
            'nees_within_95': float(np.mean(v <= CHI2_6DOF_95)), 'nees_count': int(v.size)}


def predicted_sigmas(covariance: np.ndarray) -> tuple[float, float]:
    """(sigma_t_m, sigma_r_deg): square roots of the traces of the translation / rotation blocks.

    For a left increment on ``T_cam_world`` the camera-centre error is ``-R^T rho`` to first
    order, so ``sqrt(trace(Sigma_rho))`` predicts the RMS camera-centre error (rotation invariant).
    """
    C = np.asarray(covariance, float)
    return float(np.sqrt(max(np.trace(C[:3, :3]), 0.0))), \
        float(np.degrees(np.sqrt(max(np.trace(C[3:, 3:]), 0.0))))
