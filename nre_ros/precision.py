"""Number format of the feature networks: ``precision: auto | fp32 | bf16``.

``auto`` runs the networks in bfloat16 on a CPU with bf16 matrix units (x86 flags
``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``) on the torch backend, and in float32
everywhere else (other CPUs, aarch64, macOS, ONNX Runtime, CUDA: CUDA keeps its own, fp32 with
torch and fp16 with TensorRT). Descriptors always leave the backend as float32 and
L2-normalized; the precision is not part of a model's identity (``ModelSpec``), so maps built
in either precision answer queries in the other (MODELS.md, "Precision").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from nre_ros.errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ('auto', 'fp32', 'bf16')
CPUINFO = Path('/proc/cpuinfo')
# CPU flag -> the unit named in the log line, fastest first
BF16_UNITS = (('amx_bf16', 'AMX-BF16'), ('avx512_bf16', 'AVX512-BF16'))


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> frozenset[str]:
    """The x86 feature flags of the first CPU in ``cpuinfo`` (Linux ``/proc/cpuinfo``);
    empty when the file is missing or has no ``flags`` line (macOS, Windows, aarch64)."""
    try:
        text = Path(cpuinfo).read_text(errors='replace')
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(':')
        if key.strip() == 'flags':
            return frozenset(value.split())
    return frozenset()


def bf16_unit(flags: Iterable[str] | None = None) -> str | None:
    """'AMX-BF16' / 'AVX512-BF16' when ``flags`` (default: this CPU's) has a bf16 matrix
    unit, else None."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return next((name for flag, name in BF16_UNITS if flag in flags), None)


def check_precision(value: str, where: str = 'precision') -> str:
    if value not in PRECISIONS:
        raise ConfigError(f'{where} must be one of {list(PRECISIONS)}, got {value!r}')
    return value


def resolve_precision(precision: str, device: str = 'cpu', backend: str = 'auto',
                      flags: Iterable[str] | None = None) -> str:
    """A ``precision`` setting -> 'fp32' or 'bf16' for networks on ``device`` / ``backend``
    ('auto' or a backend name; ``flags``: the CPU's, injectable for tests).

    Raises:
        ConfigError: unknown value, or bf16 asked for where nre_ros has no bf16 path (CUDA,
            ONNX Runtime, TensorRT).
    """
    check_precision(precision)
    on_cpu_torch = not str(device).startswith('cuda') and backend in ('auto', 'torch')
    if precision == 'auto':
        return 'bf16' if on_cpu_torch and bf16_unit(flags) else 'fp32'
    if precision == 'bf16' and not on_cpu_torch:
        raise ConfigError(f'precision bf16 runs on the torch CPU backend, not on backend '
                          f'{backend!r} / device {device!r}; use precision auto or fp32 (CUDA: '
                          'backend tensorrt builds fp16)')
    if precision == 'bf16' and not bf16_unit(flags):
        logger.warning('precision bf16 on a CPU without bf16 units (no amx_bf16 / avx512_bf16 '
                       'flag): torch emulates it, expect slower networks than fp32')
    return precision


def describe(precision: str, flags: Iterable[str] | None = None) -> str:
    """The log line of a resolved precision, e.g. 'networks in bf16 (CPU has AMX-BF16)'."""
    unit = bf16_unit(flags)
    if precision == 'bf16':
        return f'networks in bf16 (CPU has {unit})' if unit else 'networks in bf16 (emulated)'
    return 'networks in fp32'
