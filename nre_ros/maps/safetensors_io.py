"""Strict, memory-mapped reader of safetensors files (numpy), with messages that name the problem.

The safetensors layout: 8-byte little-endian header length N, N bytes of JSON
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the data.
Every declared shape is checked against its byte range and the file size before anything is
mapped, so a huge declared shape or a truncated file never allocates or half-loads.
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


def read_safetensors(path: str | Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file as read-only arrays (memory-mapped by default)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, 'rb') as f:
        head = f.read(8)
        if len(head) < 8:
            raise MapFormatError(f'{path} is not a safetensors file ({size} bytes)')
        n = int.from_bytes(head, 'little')
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise MapFormatError(f'{path} is not a safetensors file: declared header length {n} '
                                 f'exceeds the file size {size} (truncated, or another format '
                                 'such as a pickle)')
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MapFormatError(f'{path} is not a safetensors file: bad header ({exc})') from exc
    if not isinstance(header, dict):
        raise MapFormatError(f'{path}: safetensors header is not a JSON object')
    header.pop('__metadata__', None)
    data_start, data_size = 8 + n, size - 8 - n
    out = {}
    for name, info in header.items():
        dtype, shape, (begin, end) = _check_entry(path, name, info, data_size)
        if mmap and end > begin:
            arr = np.memmap(path, dtype=dtype, mode='r', offset=data_start + begin, shape=shape)
        else:
            with open(path, 'rb') as f:
                f.seek(data_start + begin)
                arr = np.frombuffer(f.read(end - begin), dtype=dtype).reshape(shape)
        out[name] = arr
    return out


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
