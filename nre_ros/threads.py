"""CPU threads of the networks: how many (``num_threads: auto``) and how they wait.

``available_cpus()`` is what this process may really use: its CPU affinity, capped by a cgroup
CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``; containers, systemd ``CPUQuota=``).
``resolve_threads('auto' | N)`` turns the ``num_threads`` setting into a count and
``apply_threads(n)`` gives torch's intra-op pool (and OpenCV's) that count with one inter-op
thread; ONNX Runtime sessions get the same count (``backends/onnx_backend.py``, no spinning).

``prefer_passive_openmp()`` runs when ``nre_ros`` is imported: torch's OpenMP workers otherwise
spin ~300k iterations after each parallel region, burning the cores other processes on a
shared robot computer need. It sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; it only
takes effect if torch (its libgomp) was not loaded yet.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from nre_ros.errors import ConfigError

logger = logging.getLogger(__name__)

AUTO = 'auto'
MAX_THREADS = 256
CGROUP_ROOT = Path('/sys/fs/cgroup')


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):        # not Linux
        return os.cpu_count() or 1


def _quota_v2(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ('max 100000' = no limit)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == 'max':
        return None
    quota, period = float(parts[0]), float(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota_text: str, period_text: str) -> float | None:
    quota, period = float(quota_text), float(period_text)
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_dirs(proc_cgroup: str, root: Path) -> tuple[list[Path], list[Path]]:
    """(v2 dirs, v1 cpu-controller dirs) of this process, innermost first, up to the root."""
    v2, v1 = [], []
    for line in proc_cgroup.splitlines():
        hier, controllers, path = (line.split(':', 2) + ['', ''])[:3]
        rel = path.strip().lstrip('/')
        if hier == '0' and controllers == '':
            base = root
        elif 'cpu' in controllers.split(','):
            base = next((root / d for d in ('cpu,cpuacct', 'cpu', 'cpuacct,cpu')
                         if (root / d).is_dir()), None)
            if base is None:
                continue
        else:
            continue
        here = base / rel if rel else base
        chain = [here, *here.parents]
        dirs = [d for d in chain if d == base or base in d.parents]
        (v2 if hier == '0' and controllers == '' else v1).extend(dirs)
    return v2, v1


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The smallest CPU quota (in CPUs) on this process's cgroup path, None when unlimited."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path('/proc/self/cgroup').read_text()
        except OSError:
            return None
    limits = []
    v2, v1 = _cgroup_dirs(proc_cgroup, root)
    for d in v2:
        try:
            limits.append(_quota_v2((d / 'cpu.max').read_text()))
        except (OSError, ValueError):
            continue
    for d in v1:
        try:
            limits.append(_quota_v1((d / 'cpu.cfs_quota_us').read_text(),
                                    (d / 'cpu.cfs_period_us').read_text()))
        except (OSError, ValueError):
            continue
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may use: affinity, capped by the cgroup quota (rounded up), >= 1."""
    n = _affinity_cpus()
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-6)))
    return max(1, n)


def check_threads(value: int | str, name: str = 'num_threads') -> int | str:
    """``value`` if it is 'auto' or an int in [1, MAX_THREADS], else ConfigError."""
    if value == AUTO:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise ConfigError(f'{name}={value!r}: expected "auto" or an integer in '
                          f'[1, {MAX_THREADS}]')
    return value


def resolve_threads(value: int | str | None) -> int:
    """The thread count of a ``num_threads`` setting ('auto' / None -> available_cpus())."""
    if value is None or value == AUTO:
        return available_cpus()
    return int(check_threads(value))


def apply_threads(value: int | str | None) -> int:
    """Set torch's intra-op threads (and OpenCV's) to ``resolve_threads(value)``; torch's
    inter-op pool to 1 when it has not started yet. Returns the count."""
    n = resolve_threads(value)
    import torch
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    except RuntimeError:          # the inter-op pool already ran work: it keeps its size
        pass
    cv2 = sys.modules.get('cv2')
    if cv2 is not None:
        cv2.setNumThreads(n)
    return n


def prefer_passive_openmp(environ=os.environ) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user chose a policy; True when set here.
    Effective only before torch loads OpenMP (nre_ros/__init__.py calls it on import)."""
    if 'OMP_WAIT_POLICY' in environ:
        return False
    environ['OMP_WAIT_POLICY'] = 'PASSIVE'
    if 'torch' in sys.modules:
        logger.debug('torch was imported before nre_ros: OMP_WAIT_POLICY=PASSIVE comes too '
                     'late for its OpenMP pool')
    return True
