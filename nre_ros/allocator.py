"""glibc malloc settings for the networks' big tensors: freed memory is kept for the next query.

torch's CPU tensors come from malloc. glibc serves blocks over its mmap threshold with fresh
``mmap`` pages and unmaps them on free, and trims the heap's free top, so every query
page-faults its multi-megabyte activations in again (kernel time, worse on a busy CPU).
``keep_freed_memory()`` fixes the mmap threshold at 256 MiB (32 MiB where glibc refuses more)
and the trim threshold at 512 MiB: those blocks are then reused from the heap, and the process
keeps at most that much freed memory. It runs when ``nre_ros`` is imported (like ``threads.prefer_passive_openmp``);
``NRE_ROS_MALLOC_TUNING=0`` leaves malloc as it is. Without glibc (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1         # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLDS_BYTES = (256 << 20, 32 << 20)   # the first one glibc accepts
TRIM_THRESHOLD_BYTES = 512 << 20
ENV_SWITCH = 'NRE_ROS_MALLOC_TUNING'


def keep_freed_memory(environ=os.environ) -> bool:
    """Raise glibc's mmap and trim thresholds; True when both were set here."""
    if environ.get(ENV_SWITCH, '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):          # no glibc: nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = (any(mallopt(M_MMAP_THRESHOLD, value) == 1 for value in MMAP_THRESHOLDS_BYTES)
          and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    if not ok:
        logger.debug('glibc mallopt refused the thresholds; malloc left as it is')
    return ok
