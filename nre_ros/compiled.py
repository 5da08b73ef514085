"""Optional compiled CPU kernels (numba): whether they can be used, their lazy import, warm-up.

The torch code each kernel replaces stays the reference and the path for every other device,
for tensors that need gradients, and whenever numba is missing or disabled (``NRE_ROS_NUMBA=0``).
Kernel modules (``nre_ros._lossmaps_kernels``, ``nre_ros.solver._gnc_kernels``,
``_p3p_kernels`` and ``_intrinsics_kernels``) import
numba, which takes about half a second, so they are imported on first use only. Numba compiles a kernel on its first call (about a second
each) and caches the machine code on disk (``cache=True``: beside the module, or in the user's
cache directory when that is read-only); ``warmup()`` runs
every kernel once on tiny inputs so that this happens when a relocalizer is created, not on its
first query.

The hot kernels run their loops over points / windows in parallel (``prange``) on as many
threads as torch uses (``torch.get_num_threads()``, i.e. ``nre_ros.threads``' setting), synced
before each use (``threads()``). numba's OpenMP layer is preferred: it runs on the OpenMP
runtime torch already loaded (its symbols come first), so both share one pool of workers that
sleep between regions (``OMP_WAIT_POLICY=PASSIVE``, ``nre_ros.threads``). Launching numba's
pool resets that runtime's default thread count to numba's, so torch's is restored right after.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

__all__ = ['available', 'kernels', 'threads', 'usable', 'warmup']

logger = logging.getLogger(__name__)

_loaded: dict[str, ModuleType | None] = {}   # module name -> module, None if its import failed
_pool_started = False


def available() -> bool:
    """True when numba is installed and ``NRE_ROS_NUMBA`` is not ``0``."""
    return os.environ.get('NRE_ROS_NUMBA', '1') != '0' and \
        importlib.util.find_spec('numba') is not None


def _launch_pool() -> None:
    """Start numba's thread pool once (OpenMP layer first), keeping torch's thread count."""
    global _pool_started
    import numba
    _pool_started = True
    if os.environ.get('NUMBA_THREADING_LAYER_PRIORITY') is None:
        numba.config.THREADING_LAYER_PRIORITY = ['omp', 'tbb', 'workqueue']
    n = torch.get_num_threads()
    numba.get_num_threads()          # launches the pool (omp: sets the runtime's default count)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    logger.debug('numba threading layer %s, %d threads', numba.threading_layer(),
                 numba.config.NUMBA_NUM_THREADS)


PARALLEL_MIN_WORK = 1 << 17   # values a kernel call reads below which it runs on one thread


def threads(work: int | None = None) -> int:
    """Size this thread's numba pool for the next kernel call, reading about ``work`` values
    (None: any size): torch's intra-op thread count (at most numba's ``NUMBA_NUM_THREADS``), or
    one thread below ``PARALLEL_MIN_WORK`` (a parallel region costs more than it saves there,
    and on a busy CPU each one may wait for a descheduled worker). Returns the count."""
    import numba
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if work is not None and work < PARALLEL_MIN_WORK:
        n = 1
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def kernels(name: str) -> ModuleType | None:
    """The kernel module ``name`` (imported on first call), None when numba is unavailable
    or the import failed (logged once)."""
    if not available():
        return None
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(name)
            if not _pool_started:
                _launch_pool()
        except Exception as e:  # noqa: BLE001 - any import failure: keep the torch path
            logger.warning('compiled kernels %s unavailable (%s); using torch', name, e)
            _loaded[name] = None
    return _loaded[name]


def usable(name: str, *tensors: Tensor) -> ModuleType | None:
    """The kernel module ``name`` when it can replace the torch code for these tensors (every
    tensor on the CPU, none needing a gradient), else None."""
    grad = torch.is_grad_enabled()
    if not all(t.device.type == 'cpu' and not (grad and t.requires_grad) for t in tensors):
        return None
    return kernels(name)


SLOW_WARMUP_S = 3.0     # a warm-up longer than this compiled (no disk cache yet): say so


def _cache_is_cold() -> bool:
    """True when numba's disk cache beside the kernel modules is writable and still empty (the
    first run after an install); False when it is filled or lives elsewhere (NUMBA_CACHE_DIR,
    a read-only install: numba then uses a per-user directory)."""
    if os.environ.get('NUMBA_CACHE_DIR'):
        return False
    package = Path(__file__).resolve().parent
    folders = [package, package / 'solver', package / 'models']
    if not all(os.access(f, os.W_OK) for f in folders):
        return False
    return not any(any((f / '__pycache__').glob('_*_kernels.*.nbi')) for f in folders)


def warmup() -> bool:
    """Compile (or load from the disk cache) every kernel on tiny inputs; False without numba.

    Logged: the first run after an install compiles (seconds to a minute on a small CPU);
    later runs read numba's cache."""
    from nre_ros import lossmaps_numba
    from nre_ros.solver.gnc import warmup_compiled as gnc_warmup
    from nre_ros.solver.intrinsics_check import warmup_compiled as intrinsics_warmup
    from nre_ros.solver.p3p import warmup_compiled as p3p_warmup
    if not available():
        return False
    cold = _cache_is_cold()
    if cold:
        logger.warning('compiling the CPU kernels with numba (first run after an install: '
                       'seconds to a minute; cached for the next start)')
    t0 = time.perf_counter()
    ok = lossmaps_numba.warmup() and gnc_warmup() and p3p_warmup() and intrinsics_warmup()
    elapsed = time.perf_counter() - t0
    if elapsed > SLOW_WARMUP_S and not cold:
        logger.warning('compiled the CPU kernels in %.0f s (numba; cached for the next start)',
                       elapsed)
    else:
        logger.info('compiled CPU kernels ready in %.1f s', elapsed)
    return ok
