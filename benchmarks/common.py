"""Timing helpers for benchmarks: median + IQR, device sync, run metadata header."""
from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import nre_ros  # noqa: F401  (before torch: passive OpenMP waiting, as the product)
import numpy as np
import torch


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == 'cuda'):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3,
            device: torch.device | str | None = None) -> tuple[float, float, object]:
    """Median and IQR (ms) of ``fn`` over ``repeats`` runs after ``warmup``; last output."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return float(med), float(q3 - q1), out


def run_metadata() -> dict:
    """Commit, versions, device and threads of this run."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = 'unknown'
    import cv2
    import poselib
    return {'commit': commit, 'python': platform.python_version(), 'torch': torch.__version__,
            'opencv': cv2.__version__, 'poselib': getattr(poselib, '__version__', '?'),
            'device': (torch.cuda.get_device_name() if torch.cuda.is_available()
                       else platform.processor() or platform.machine()),
            'threads': torch.get_num_threads()}


def header(meta: dict) -> str:
    return ' | '.join(f'{k}: {v}' for k, v in meta.items())
