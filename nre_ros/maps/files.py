"""Safe reading of the files of a map folder: regular files inside the folder, size-limited,
read into memory once (no memory map: a file replaced or truncated on disk afterwards can
neither crash the process nor change the loaded map), with a stamp to notice later changes.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from nre_ros.errors import MapFormatError

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024 * 1024      # metadata.json (keyframe names, provenance)
MAX_JSON_DEPTH = 32                    # nesting of objects / arrays in map JSON
READ_CHUNK_BYTES = 4 * 1024 * 1024     # read (and hash) in chunks that stay in the CPU cache


class Hasher(Protocol):
    """What ``read_map_file`` feeds the bytes to (``hashlib.sha256()`` and friends)."""

    def update(self, data: memoryview, /) -> None: ...


@dataclass(frozen=True)
class FileStamp:
    """Identity of a file's content as the OS reports it (device, inode, size, mtime)."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result, path: str | Path) -> 'FileStamp':
        return cls(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> str | None:
        """A sentence saying how the file on disk differs from this stamp, or None."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return f'{self.path} is no longer readable ({exc.strerror})'
        now = FileStamp.of(st, self.path)
        if (now.device, now.inode) != (self.device, self.inode):
            return f'{self.path} was replaced by another file'
        if now.size != self.size or now.mtime_ns != self.mtime_ns:
            return (f'{self.path} was modified ({self.size} -> {now.size} bytes)')
        return None


def resolve_inside(folder: Path, name: str) -> Path:
    """``folder / name`` resolved; MapFormatError when a symlink takes it out of ``folder``."""
    root = folder.resolve()
    target = (folder / name).resolve()
    if target.parent != root and root not in target.parents:
        raise MapFormatError(f'map {folder}: {name} is a link to {target}, outside the map '
                             'folder; refused (copy the file into the map folder)')
    return target


def read_map_file(folder: Path, name: str, max_bytes: int | None = None,
                  hasher: Hasher | None = None) -> tuple[np.ndarray, FileStamp]:
    """Contents of the regular file ``folder/name`` (inside the folder) and its stamp.

    The file is read once, chunk by chunk, straight into one preallocated buffer (no second
    copy); ``hasher`` (e.g. ``hashlib.sha256()``) is updated with each chunk as it arrives.

    Returns:
        data: (size,) read-only uint8 array holding the file's bytes (a bytes-like object).
        stamp: the file's identity when it was opened.

    Raises MapFormatError when it is missing, leaves the folder through a symlink, is not a
    regular file (FIFO, device, directory: checked without blocking), exceeds ``max_bytes`` or
    changes size while being read.
    """
    path = resolve_inside(folder, name)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
    except FileNotFoundError as exc:
        raise MapFormatError(f'map {folder}: {name} is missing') from exc
    except OSError as exc:
        raise MapFormatError(f'map {folder}: cannot open {name} ({exc.strerror})') from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MapFormatError(f'map {folder}: {name} is not a regular file')
        if max_bytes is not None and st.st_size > max_bytes:
            raise MapFormatError(f'map {folder}: {name} is {st.st_size} bytes, more than the '
                                 f'{max_bytes} allowed')
        data = np.empty(st.st_size, np.uint8)     # numpy: huge pages for large buffers
        view, got = memoryview(data), 0
        while got < st.st_size:
            n = os.readv(fd, [view[got:got + READ_CHUNK_BYTES]])
            if n == 0:
                break
            if hasher is not None:
                hasher.update(view[got:got + n])
            got += n
        if got != st.st_size or os.read(fd, 1):
            raise MapFormatError(f'map {folder}: {name} changed size while being read '
                                 f'({st.st_size} bytes at open, then '
                                 f'{got if got < st.st_size else "more"}); retry when it is '
                                 'complete')
        data.flags.writeable = False
        return data, FileStamp.of(st, path)
    finally:
        os.close(fd)


def json_depth(value: object) -> int:
    """Nesting depth of a parsed JSON value (iterative: never recurses)."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v)
    return depth


def parse_json(data: bytes | np.ndarray, where: str, max_depth: int = MAX_JSON_DEPTH
               ) -> object:
    """Parse UTF-8 JSON bytes; MapFormatError for invalid or too deeply nested text."""
    try:
        value = json.loads(bytes(data).decode('utf-8'))
    except RecursionError as exc:
        raise MapFormatError(f'{where} is nested too deeply (more than {max_depth} levels)'
                             ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise MapFormatError(f'{where} is not valid JSON ({exc})') from exc
    if json_depth(value) > max_depth:
        raise MapFormatError(f'{where} is nested too deeply (more than {max_depth} levels)')
    return value
