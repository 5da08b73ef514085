"""Strict reader of safetensors files (numpy), with messages that name the problem.

The safetensors layout: 8-byte little-endian header length N, N bytes of JSON
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the data.
Every declared shape is checked against its byte range and the file size before any array is
made, so a huge declared shape or a truncated file never allocates or half-loads.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from nre_ros.errors import MapFormatError

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPES = {'F16': np.float16, 'F32': np.float32, 'F64': np.float64, 'I32': np.int32,
          'I64': np.int64, 'U8': np.uint8, 'I8': np.int8, 'BOOL': np.bool_}


def read_safetensors(path: str | Path, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file as read-only arrays: copied into memory by
    default (a file replaced or truncated later cannot crash the reader with SIGBUS), or
    memory-mapped with ``mmap=True`` (tools that read once, never long-running processes)."""
    path = Path(path)
    if not mmap:
        return parse_safetensors(path.read_bytes(), str(path))
    size = path.stat().st_size
    with open(path, 'rb') as f:
        head = f.read(min(size, 8 + MAX_HEADER_BYTES))
    n, header = _parse_header(head, size, str(path))
    data_start = 8 + n
    out = {}
    for name, info in header.items():
        dtype, shape, (begin, end) = _check_entry(path, name, info, size - data_start)
        if end > begin:
            out[name] = np.memmap(path, dtype=dtype, mode='r', offset=data_start + begin,
                                  shape=shape)
        else:
            out[name] = np.zeros(shape, dtype)
    return out


def parse_safetensors(data: bytes | np.ndarray, where: str) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file held in memory (bytes, or a (size,) uint8 array), as
    read-only views into ``data`` (nothing is copied)."""
    data = memoryview(data).cast('B')
    n, header = _parse_header(data, len(data), where)
    data_start = 8 + n
    body = memoryview(data)[data_start:]
    out = {}
    for name, info in header.items():
        dtype, shape, (begin, end) = _check_entry(Path(where), name, info, len(body))
        arr = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        arr.flags.writeable = False
        out[name] = arr
    return out


def _parse_header(head: bytes | memoryview, size: int, where: str) -> tuple[int, dict]:
    """(header length, header dict without __metadata__) from the start of the file."""
    if len(head) < 8:
        raise MapFormatError(f'{where} is not a safetensors file ({size} bytes)')
    n = int.from_bytes(bytes(head[:8]), 'little')
    if n > min(size - 8, MAX_HEADER_BYTES) or len(head) < 8 + n:
        raise MapFormatError(f'{where} is not a safetensors file: declared header length {n} '
                             f'exceeds the file size {size} (truncated, or another format '
                             'such as a pickle)')
    try:
        header = json.loads(bytes(head[8:8 + n]))
    except RecursionError as exc:
        raise MapFormatError(f'{where} is not a safetensors file: header nested too deeply'
                             ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise MapFormatError(f'{where} is not a safetensors file: bad header ({exc})') from exc
    if not isinstance(header, dict):
        raise MapFormatError(f'{where}: safetensors header is not a JSON object')
    header.pop('__metadata__', None)
    return n, header


def _check_entry(path: Path, name: str, info: object, data_size: int
                 ) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
    try:
        dtype = np.dtype(DTYPES[info['dtype']]).newbyteorder('<')
        shape = tuple(info['shape'])
        begin, end = info['data_offsets']
    except (KeyError, TypeError, ValueError) as exc:
        raise MapFormatError(f'{path}: tensor {name!r} has an invalid header entry {info!r} '
                             f'(dtype must be one of {sorted(DTYPES)})') from exc
    if not all(isinstance(s, int) and s >= 0 for s in shape) or not all(
            isinstance(b, int) for b in (begin, end)):
        raise MapFormatError(f'{path}: tensor {name!r} has an invalid shape {list(shape)} or '
                             f'offsets {[begin, end]}')
    nbytes = math.prod(shape) * dtype.itemsize        # python ints: no overflow
    if not 0 <= begin <= end <= data_size:
        raise MapFormatError(f'{path}: tensor {name!r} data range [{begin}, {end}) lies outside '
                             f'the {data_size} data bytes of the file (truncated?)')
    if nbytes != end - begin:
        raise MapFormatError(f'{path}: tensor {name!r} declares shape {list(shape)} '
                             f'({nbytes} bytes) but its data range holds {end - begin} bytes')
    return dtype, shape, (begin, end)
