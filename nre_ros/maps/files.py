"""Safe reading of the files of a map folder: regular files inside the folder, size-limited,
read into memory once (no memory map: a file replaced or truncated on disk afterwards can
neither crash the process nor change the loaded map), with a stamp to notice later changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nre_ros.errors import MapFormatError

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024 * 1024      # metadata.json (keyframe names, provenance)
MAX_JSON_DEPTH = 32                    # nesting of objects / arrays in map JSON
READ_CHUNK_BYTES = 4 * 1024 * 1024     # read and hash in chunks that stay in the CPU cache


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


@dataclass(frozen=True)
class FileContent:
    """A map file read into memory: its bytes, its stamp and the SHA-256 digests asked for."""

    data: np.ndarray                     # (size,) read-only uint8, the file's bytes
    stamp: FileStamp
    sha256: str | None = None            # of the whole file (file_sha256=True)
    block_sha256: tuple[str, ...] = ()   # of each block_bytes block (block_bytes given)


def read_map_file(folder: Path, name: str, max_bytes: int | None = None, *,
                  file_sha256: bool = False, block_bytes: int | None = None,
                  threads: int = 1) -> FileContent:
    """Read the regular file ``folder/name`` (inside the folder) into memory.

    The file is read once, straight into one preallocated buffer (no second copy), and hashed
    chunk by chunk as it arrives (``file_sha256``: the whole file, sequentially; ``block_bytes``:
    each block on its own). Blocks are read and hashed by ``threads`` threads at once (hashlib
    and the reads release the GIL) unless the whole-file hash is asked for.

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
        size = st.st_size
        view = memoryview(anonymous_buffer(size))
        data = np.frombuffer(view, np.uint8) if size else np.zeros(0, np.uint8)
        whole = hashlib.sha256() if file_sha256 else None
        step = block_bytes or max(size, 1)
        blocks = [(b, min(b + step, size)) for b in range(0, size, step)]

        def read_block(begin: int, end: int) -> tuple[int, str | None]:
            """Read [begin, end) into the buffer; (bytes read, block digest or None)."""
            h = hashlib.sha256() if block_bytes else None
            pos = begin
            while pos < end:
                chunk = view[pos:min(pos + READ_CHUNK_BYTES, end)]
                n = os.preadv(fd, [chunk], pos)
                if n == 0:
                    break
                for hasher in (h, whole):
                    if hasher is not None:
                        hasher.update(chunk[:n])
                pos += n
            return pos - begin, None if h is None else h.hexdigest()

        workers = 1 if file_sha256 or len(blocks) < 2 else max(1, min(threads, len(blocks)))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(lambda be: read_block(*be), blocks))
        else:
            results = [read_block(b, e) for b, e in blocks]
        got = sum(n for n, _ in results)
        if got != size or os.fstat(fd).st_size != size:
            raise MapFormatError(f'map {folder}: {name} changed size while being read '
                                 f'({size} bytes at open, {got} read, '
                                 f'{os.fstat(fd).st_size} now); retry when it is complete')
        data.flags.writeable = False
        return FileContent(data, FileStamp.of(st, path),
                           None if whole is None else whole.hexdigest(),
                           tuple(d for _, d in results if d is not None))
    finally:
        os.close(fd)


def anonymous_buffer(size: int) -> mmap.mmap | bytearray:
    """``size`` writable bytes of fresh anonymous memory, faulted in as they are written.

    Not numpy's allocator: it asks for transparent huge pages for large arrays, and where the
    kernel defragments on such requests (THP ``defrag = madvise``, a common default) a busy
    machine stalls in compaction (measured: docs/decisions.md).
    """
    return mmap.mmap(-1, size) if size else bytearray()


def hash_file(path: str | Path, block_bytes: int) -> tuple[str, tuple[str, ...]]:
    """SHA-256 of a whole file and of each of its ``block_bytes`` blocks, in one streaming
    pass (for writing a map's metadata)."""
    whole, blocks = hashlib.sha256(), []
    buf = bytearray(READ_CHUNK_BYTES)
    with open(path, 'rb') as f:
        while True:
            h, left = hashlib.sha256(), block_bytes
            while left:
                n = f.readinto(memoryview(buf)[:min(left, len(buf))])
                if not n:
                    break
                whole.update(memoryview(buf)[:n])
                h.update(memoryview(buf)[:n])
                left -= n
            if left == block_bytes:
                break
            blocks.append(h.hexdigest())
            if left:
                break
    return whole.hexdigest(), tuple(blocks)


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
