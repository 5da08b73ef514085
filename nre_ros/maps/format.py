"""The nre_ros map format: one directory, ``metadata.json`` + ``tensors.safetensors``.

A map holds K keyframes, P 3D points and O observations (point seen in a keyframe). Per
keyframe the observations are contiguous (CSR layout, ``kf_offsets``); each carries the
point index, the measured pixel and the coarse (and fine) descriptor sampled from that
keyframe's dense features at the point's projection. Everything variable lives in the
safetensors file; ``metadata.json`` holds the format version, the model spec, frames, units,
provenance, keyframe names and the sha256 of the tensor file (whole, and per 16 MiB block
so that a loader checks the blocks on several cores). Nothing is ever unpickled.

Tensors (dtype, shape)::

    kf_T_cam_world   F64 (K, 4, 4)   world -> keyframe camera (OpenCV optical frame)
    kf_K             F64 (K, 3, 3)   intrinsics of the image the features were computed on
    kf_dist          F64 (K, 8)      OpenCV distortion, zero-padded to 8
    kf_fisheye       U8  (K,)        1 where kf_dist[:4] is the fisheye (equidistant) model; only
                                     in maps with a fisheye keyframe
    kf_image_size    I32 (K, 2)      (width, height) in pixels
    kf_global        F32 (K, G)      L2-normalized global descriptors (retrieval)
    kf_brightness    F32 (K,)        grey mean in [0, 1] of the image the features were computed
                                     on (``preprocess.grey_mean``); optional (older maps lack it)
    kf_offsets       I64 (K + 1,)    observations of keyframe i: [kf_offsets[i], kf_offsets[i+1])
    points_world     F32 (P, 3)      map points, world frame, ``units``
    points_rgb       U8  (P, 3)      colour (for viz)
    obs_point        I32 (O,)        point index of each observation
    obs_uv           F32 (O, 2)      measured pixel (keypoint), OpenCV centres at integers
    obs_coarse       F16|F32 (O, C)  coarse descriptors (L2-normalized)
    obs_fine         F16|F32 (O, Cf) fine descriptors, only when the model has a fine level
    obs_fine_tracking F16|F32 (O, Ct) the tracking level: fine descriptors of a second model
                                     (``tracking_model_spec`` in the metadata) whose fine level
                                     comes out of its coarse pass; optional
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from nre_ros.camera import Camera
from nre_ros.errors import MapFormatError
from nre_ros.geometry import Sim3
from nre_ros.maps.files import (MAX_JSON_BYTES, FileContent, FileStamp, hash_file, parse_json,
                                read_map_file)
from nre_ros.maps.safetensors_io import parse_safetensors
from nre_ros.models.base import ModelSpec
from nre_ros.threads import available_cpus

logger = logging.getLogger(__name__)

FORMAT_NAME = 'nre_ros.map'
FORMAT_VERSION = 1
METADATA_FILE = 'metadata.json'
TENSORS_FILE = 'tensors.safetensors'
MAP_SUFFIX = '.nremap'
HASH_BLOCK_BYTES = 16 * 1024 * 1024     # tensors_sha256_blocks: one digest per 16 MiB
MAX_LOAD_THREADS = 8                    # threads reading and hashing the tensor file

_KF = ('kf_T_cam_world', 'kf_K', 'kf_dist', 'kf_image_size', 'kf_global', 'kf_offsets')
_PT = ('points_world', 'points_rgb')
_OBS = ('obs_point', 'obs_uv', 'obs_coarse')
REQUIRED_TENSORS = _KF + _PT + _OBS
_DTYPES = {
    'kf_T_cam_world': (np.float64,), 'kf_K': (np.float64,), 'kf_dist': (np.float64,),
    'kf_image_size': (np.int32,), 'kf_global': (np.float32,), 'kf_offsets': (np.int64,),
    'points_world': (np.float32,), 'points_rgb': (np.uint8,), 'obs_point': (np.int32,),
    'obs_uv': (np.float32,), 'obs_coarse': (np.float16, np.float32),
    'obs_fine': (np.float16, np.float32), 'obs_fine_tracking': (np.float16, np.float32),
    'kf_fisheye': (np.uint8,),
    'kf_brightness': (np.float32,),
}
OPTIONAL_TENSORS = ('obs_fine', 'obs_fine_tracking', 'kf_fisheye', 'kf_brightness')


@dataclass(frozen=True)
class MapMetadata:
    """Everything in ``metadata.json`` except the tensors' hash and the keyframe names."""

    map_frame: str = 'map'
    units: str = 'm'
    map_T_model: Sim3 | None = None
    global_descriptor: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Keyframe:
    """One keyframe: ``T_cam_world`` maps world points into its camera."""

    id: int
    name: str
    camera: Camera
    T_cam_world: np.ndarray


@dataclass(frozen=True)
class KeyframeObservations:
    """The points a keyframe sees. point_idx (N,), uv (N, 2), coarse (N, C), fine (N, Cf)|None,
    fine_tracking (N, Ct)|None (the map's tracking level)."""

    point_idx: np.ndarray
    uv: np.ndarray
    coarse: np.ndarray
    fine: np.ndarray | None
    fine_tracking: np.ndarray | None = None


@dataclass(frozen=True)
class Map:
    """A relocalization map (see the module docstring for every array's shape and dtype)."""

    spec: ModelSpec
    keyframe_names: tuple[str, ...]
    kf_T_cam_world: np.ndarray
    kf_K: np.ndarray
    kf_dist: np.ndarray
    kf_image_size: np.ndarray
    kf_global: np.ndarray
    kf_offsets: np.ndarray
    points_world: np.ndarray
    points_rgb: np.ndarray
    obs_point: np.ndarray
    obs_uv: np.ndarray
    obs_coarse: np.ndarray
    obs_fine: np.ndarray | None = None
    metadata: MapMetadata = field(default_factory=MapMetadata)
    kf_fisheye: np.ndarray | None = None
    kf_brightness: np.ndarray | None = None
    # the tracking level: the model whose fine descriptors obs_fine_tracking holds
    tracking_spec: ModelSpec | None = None
    obs_fine_tracking: np.ndarray | None = None
    # the files it was loaded from (None for a map built in memory): see changed_on_disk
    source: tuple[FileStamp, ...] | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ accessors
    @property
    def num_keyframes(self) -> int:
        return len(self.keyframe_names)

    @property
    def num_points(self) -> int:
        return int(self.points_world.shape[0])

    @property
    def num_observations(self) -> int:
        return int(self.obs_point.shape[0])

    @property
    def global_descriptors(self) -> np.ndarray:
        """(K, G) float32 L2-normalized global descriptors."""
        return self.kf_global

    def camera(self, i: int) -> Camera:
        w, h = (int(v) for v in self.kf_image_size[i])
        if self.kf_fisheye is not None and self.kf_fisheye[i]:
            return Camera(w, h, np.array(self.kf_K[i]), np.array(self.kf_dist[i, :4]), True)
        return Camera(w, h, np.array(self.kf_K[i]), np.array(self.kf_dist[i]))

    @cached_property
    def keyframes(self) -> tuple[Keyframe, ...]:
        return tuple(Keyframe(i, n, self.camera(i), np.array(self.kf_T_cam_world[i]))
                     for i, n in enumerate(self.keyframe_names))

    def observations(self, i: int) -> KeyframeObservations:
        """Points seen by keyframe i with their descriptors (views into the map arrays)."""
        s = slice(int(self.kf_offsets[i]), int(self.kf_offsets[i + 1]))
        fine = None if self.obs_fine is None else self.obs_fine[s]
        track = None if self.obs_fine_tracking is None else self.obs_fine_tracking[s]
        return KeyframeObservations(self.obs_point[s], self.obs_uv[s], self.obs_coarse[s], fine,
                                    track)

    def obs_keyframe(self) -> np.ndarray:
        """(O,) int64 keyframe index of each observation."""
        return np.repeat(np.arange(self.num_keyframes), np.diff(self.kf_offsets))

    def point_tracks(self) -> tuple[np.ndarray, np.ndarray]:
        """Tracks as CSR: the keyframes of point p are ``kfs[offsets[p]:offsets[p + 1]]``."""
        order = np.argsort(self.obs_point, kind='stable')
        counts = np.bincount(self.obs_point, minlength=self.num_points)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return offsets, self.obs_keyframe()[order]

    def tensors(self) -> dict[str, np.ndarray]:
        out = {k: np.ascontiguousarray(getattr(self, k)) for k in REQUIRED_TENSORS}
        for name in OPTIONAL_TENSORS:
            if getattr(self, name) is not None:
                out[name] = np.ascontiguousarray(getattr(self, name))
        return out

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.tensors().values())

    def changed_on_disk(self) -> str | None:
        """How the files this map was loaded from changed since (replaced, modified, gone),
        or None. The loaded map itself never changes: it lives in memory."""
        for stamp in self.source or ():
            change = stamp.changed()
            if change:
                return change
        return None

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> Path:
        """Write the map directory ``path`` atomically (validated first). Returns the path."""
        validate_map(self, str(path))
        path = Path(path)
        tmp = path.with_name(path.name + '.tmp')
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self._write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)      # nothing half-written is left behind
            raise
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    def _write(self, tmp: Path) -> None:
        save_file(self.tensors(), str(tmp / TENSORS_FILE))
        meta = {
            'format': FORMAT_NAME, 'version': FORMAT_VERSION,
            'model_spec': asdict(self.spec), 'map_frame': self.metadata.map_frame,
            **({} if self.tracking_spec is None else
               {'tracking_model_spec': asdict(self.tracking_spec)}),
            'units': self.metadata.units,
            'map_T_model': None if self.metadata.map_T_model is None
            else self.metadata.map_T_model.to_dict(),
            'global_descriptor': self.metadata.global_descriptor,
            'provenance': self.metadata.provenance,
            'counts': {'keyframes': self.num_keyframes, 'points': self.num_points,
                       'observations': self.num_observations},
            'keyframe_names': list(self.keyframe_names),
            'tensors_file': TENSORS_FILE,
            **tensor_hashes(tmp / TENSORS_FILE),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + '\n')


def tensor_hashes(tensors_path: str | Path) -> dict:
    """The metadata entries that pin a tensor file's content: its SHA-256 and one per
    HASH_BLOCK_BYTES block (a loader checks the blocks on several cores at once)."""
    whole, blocks = hash_file(tensors_path, HASH_BLOCK_BYTES)
    return {'tensors_sha256': whole,
            'tensors_sha256_blocks': {'block_bytes': HASH_BLOCK_BYTES, 'sha256': list(blocks)}}


def with_command(m: Map, command: str) -> Map:
    """The same map with ``command`` recorded in its provenance."""
    meta = replace(m.metadata, provenance={**m.metadata.provenance, 'command': command})
    return replace(m, metadata=meta)


def map_size_bytes(path: str | Path) -> int:
    """Bytes on disk of a map directory."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


# ---------------------------------------------------------------------- loading
def load_map(path: str | Path, expected_spec: ModelSpec | None = None,
             verify_hash: bool = True) -> Map:
    """Load and fully validate a map directory; MapFormatError naming the problem otherwise.

    Args:
        path: the map directory (holding metadata.json and tensors.safetensors).
        expected_spec: the querying model's spec; a mismatch is an error. None skips the check.
        verify_hash: check the tensor file's sha256 against the metadata (truncation/tampering).

    Returns:
        The Map; its arrays are read-only and held in memory (never memory-mapped).
    """
    path = Path(path)
    meta, meta_stamp = _read_metadata(path)
    spec = _spec_from_meta(meta, path)
    if expected_spec is not None:
        diff = spec.mismatch(expected_spec)
        if diff:
            raise MapFormatError(f'map {path} was built with model {spec.name!r} and does not '
                                 f'match the configured model ({diff}); rebuild the map with '
                                 f'`nre-ros build-map` or select the matching model')
    # read once into memory, hashed chunk by chunk as it arrives: the hash is checked on the
    # very bytes the arrays are made of
    tensors = _read_tensors(path, meta, verify_hash)
    tensors_stamp = tensors.stamp
    arrays = parse_safetensors(tensors.data, str(path / TENSORS_FILE))
    for name in REQUIRED_TENSORS:
        if name not in arrays:
            raise MapFormatError(f'map {path}: missing tensor {name!r} in {TENSORS_FILE}')
    unknown = set(arrays) - set(_DTYPES)
    if unknown:
        raise MapFormatError(f'map {path}: unknown tensors {sorted(unknown)} in {TENSORS_FILE}')
    names = meta.get('keyframe_names')
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MapFormatError(f'map {path}: metadata keyframe_names must be a list of strings')
    tracking_spec = None
    if meta.get('tracking_model_spec') is not None:
        tracking_spec = _spec_from_meta(meta, path, 'tracking_model_spec')
    m = Map(spec=spec, keyframe_names=tuple(names), metadata=_metadata_from_meta(meta, path),
            tracking_spec=tracking_spec,
            **{k: arrays.get(k) for k in OPTIONAL_TENSORS},
            **{k: arrays[k] for k in REQUIRED_TENSORS}, source=(meta_stamp, tensors_stamp))
    validate_map(m, str(path))
    counts = meta.get('counts', {})
    actual = {'keyframes': m.num_keyframes, 'points': m.num_points,
              'observations': m.num_observations}
    if counts != actual:
        raise MapFormatError(f'map {path}: metadata counts {counts} != tensors {actual}')
    return m


def _read_tensors(path: Path, meta: dict, verify_hash: bool) -> FileContent:
    """The tensor file in memory; with ``verify_hash``, its SHA-256 checked against the
    metadata: per block on several threads when the map lists block digests (maps written
    since they were added), else of the whole file."""
    if not verify_hash:
        return read_map_file(path, TENSORS_FILE)
    threads = min(MAX_LOAD_THREADS, available_cpus())
    blocks = meta.get('tensors_sha256_blocks')
    if blocks is None:
        content = read_map_file(path, TENSORS_FILE, file_sha256=True)
        expected, actual = meta.get('tensors_sha256'), content.sha256
    else:
        size = blocks.get('block_bytes') if isinstance(blocks, dict) else None
        digests = blocks.get('sha256') if isinstance(blocks, dict) else None
        if not (isinstance(size, int) and not isinstance(size, bool) and size > 0
                and isinstance(digests, list) and all(isinstance(d, str) for d in digests)):
            raise MapFormatError(f'map {path}: metadata tensors_sha256_blocks must be '
                                 '{"block_bytes": positive int, "sha256": [hex digests]}')
        content = read_map_file(path, TENSORS_FILE, block_bytes=size, threads=threads)
        expected, actual = digests, list(content.block_sha256)
    if actual != expected:
        if isinstance(actual, list):
            bad = [i for i, (a, e) in enumerate(zip(actual, expected)) if a != e]
            what = (f'{len(actual)} blocks of {size} bytes, metadata lists {len(expected)}'
                    if len(actual) != len(expected) else
                    f'block {bad[0]} (bytes {bad[0] * size}..) hashes to {actual[bad[0]][:12]}…, '
                    f'metadata says {expected[bad[0]][:12]}…')
        else:
            what = f'hashes to {str(actual)[:12]}…, metadata says {str(expected)[:12]}…'
        raise MapFormatError(f'map {path}: content hash of {TENSORS_FILE}: {what}: the file is '
                             'truncated or was modified; rebuild or re-copy the map')
    return content


def _read_metadata(path: Path) -> tuple[dict, FileStamp]:
    if not path.is_dir():
        raise MapFormatError(f'map {path} does not exist or is not a directory '
                             f'(a map is a folder with {METADATA_FILE} and {TENSORS_FILE})')
    content = read_map_file(path, METADATA_FILE, MAX_JSON_BYTES)
    stamp = content.stamp
    meta = parse_json(content.data, f'map {path}: {METADATA_FILE}')
    if not isinstance(meta, dict) or meta.get('format') != FORMAT_NAME:
        raise MapFormatError(f'map {path}: {METADATA_FILE} is not an nre_ros map '
                             f'(format {meta.get("format") if isinstance(meta, dict) else None!r}'
                             f', expected {FORMAT_NAME!r})')
    if meta.get('version') != FORMAT_VERSION:
        raise MapFormatError(f'map {path} has format version {meta.get("version")!r}, this '
                             f'nre_ros reads version {FORMAT_VERSION}; rebuild the map')
    return meta, stamp


def _spec_from_meta(meta: dict, path: Path, key: str = 'model_spec') -> ModelSpec:
    try:
        spec = ModelSpec.from_dict(meta[key])
    except (KeyError, TypeError) as exc:
        raise MapFormatError(f'map {path}: invalid or missing {key} ({exc})') from exc
    kinds = {'str': str, 'int': int, 'float': (int, float)}
    for f in fields(ModelSpec):
        v = getattr(spec, f.name)
        if not isinstance(v, kinds[f.type]) or isinstance(v, bool) or (
                f.type != 'str' and not (np.isfinite(v) and v >= 0)):
            raise MapFormatError(f'map {path}: {key} {f.name} must be a '
                                 f'{"string" if f.type == "str" else "non-negative " + f.type}, '
                                 f'got {v!r}')
    return spec


def _metadata_from_meta(meta: dict, path: Path) -> MapMetadata:
    sim = meta.get('map_T_model')
    if sim is not None:
        try:
            R = np.asarray(sim['rotation'], dtype=np.float64)
            t = np.asarray(sim['translation'], dtype=np.float64)
            s = float(sim['scale'])
        except (KeyError, TypeError, ValueError) as exc:
            raise MapFormatError(f'map {path}: invalid map_T_model ({exc!r})') from exc
        ok = (R.shape == (3, 3) and t.shape == (3,) and np.isfinite(s) and s > 0
              and np.all(np.isfinite(R)) and np.all(np.isfinite(t))
              and np.allclose(R @ R.T, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0)
        if not ok:
            raise MapFormatError(f'map {path}: map_T_model must hold a 3x3 rotation, a 3-vector '
                                 f'translation and a positive scale, got {sim}')
        sim = Sim3(R, t, s)
    for key in ('map_frame', 'units'):
        if not isinstance(meta.get(key), str):
            raise MapFormatError(f'map {path}: metadata {key!r} must be a string')
    return MapMetadata(map_frame=meta['map_frame'], units=meta['units'], map_T_model=sim,
                       global_descriptor=dict(meta.get('global_descriptor') or {}),
                       provenance=dict(meta.get('provenance') or {}))


# ---------------------------------------------------------------------- validation
def _fail(where: str, msg: str) -> None:
    raise MapFormatError(f'map {where}: {msg}')


def _check_array(where: str, name: str, a: np.ndarray, shape: tuple) -> None:
    if a.dtype.type not in _DTYPES[name]:
        _fail(where, f'tensor {name!r} has dtype {a.dtype}, expected '
                     f'{" or ".join(np.dtype(d).name for d in _DTYPES[name])}')
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = 'x'.join('?' if s is None else str(s) for s in shape)
        _fail(where, f'tensor {name!r} has shape {tuple(a.shape)}, expected ({want})')
    if a.dtype.kind == 'f' and a.size:
        bad = count_nonfinite(a)
        if bad:
            _fail(where, f'tensor {name!r} has {bad} non-finite values')


def count_nonfinite(a: np.ndarray, block: int = 1 << 20, threads: int | None = None) -> int:
    """Number of inf / NaN values in a float16/32/64 array, read as its unsigned-integer bit
    patterns (all exponent bits set = inf or NaN) block by block, on ``threads`` threads
    (default: the CPUs available, at most MAX_LOAD_THREADS): no float conversion and no
    temporary the size of the array (map descriptors are hundreds of MB)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    bits = flat.view(flat.dtype.str.replace('f', 'u'))               # '<f2' -> '<u2'
    nbits = 8 * flat.dtype.itemsize
    exponent_mask = {16: 0x7C00, 32: 0x7F800000, 64: 0x7FF0000000000000}[nbits]
    magnitude_mask = (1 << (nbits - 1)) - 1                           # all but the sign bit

    def count(start: int) -> int:
        t = np.bitwise_and(bits[start:start + block], magnitude_mask)
        return int(np.count_nonzero(t >= exponent_mask)) if t.max() >= exponent_mask else 0

    starts = range(0, bits.size, block)
    if threads is None:
        threads = min(MAX_LOAD_THREADS, available_cpus())
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:    # numpy drops the GIL
            return sum(pool.map(count, starts))
    return sum(count(s) for s in starts)


def validate_map(m: Map, where: str = '<memory>') -> None:
    """Check shapes, dtypes, finiteness, index ranges and geometry; MapFormatError otherwise."""
    K, P, O = m.num_keyframes, m.points_world.shape[0], m.obs_point.shape[0]
    C, G = m.spec.coarse_dim, m.kf_global.shape[-1] if m.kf_global.ndim == 2 else None
    for name, shape in [('kf_T_cam_world', (K, 4, 4)), ('kf_K', (K, 3, 3)), ('kf_dist', (K, 8)),
                        ('kf_image_size', (K, 2)), ('kf_global', (K, G)),
                        ('kf_offsets', (K + 1,)), ('points_world', (P, 3)),
                        ('points_rgb', (P, 3)), ('obs_point', (O,)), ('obs_uv', (O, 2)),
                        ('obs_coarse', (O, C))]:
        _check_array(where, name, getattr(m, name), shape)
    if m.spec.fine_dim > 0 and m.obs_fine is None:
        _fail(where, f'model {m.spec.name!r} has a fine level ({m.spec.fine_dim}-d) but the map '
                     'has no obs_fine tensor')
    if m.obs_fine is not None:
        if m.spec.fine_dim == 0:
            _fail(where, 'tensor obs_fine present but the model spec has no fine level')
        _check_array(where, 'obs_fine', m.obs_fine, (O, m.spec.fine_dim))
    if (m.tracking_spec is None) != (m.obs_fine_tracking is None):
        _fail(where, 'a tracking level needs both tracking_model_spec (metadata) and the '
                     'obs_fine_tracking tensor')
    if m.tracking_spec is not None:
        if m.tracking_spec.fine_dim == 0:
            _fail(where, f'tracking model {m.tracking_spec.name!r} has no fine level')
        if not m.spec.same_coarse_level(m.tracking_spec):
            _fail(where, f'tracking model {m.tracking_spec.name!r} has another coarse level than '
                         f'{m.spec.name!r}: its single pass cannot query this map')
        _check_array(where, 'obs_fine_tracking', m.obs_fine_tracking,
                     (O, m.tracking_spec.fine_dim))
    if m.kf_fisheye is not None:
        _check_array(where, 'kf_fisheye', m.kf_fisheye, (K,))
        if np.any(m.kf_fisheye > 1) or np.any(m.kf_dist[m.kf_fisheye == 1, 4:] != 0):
            _fail(where, 'kf_fisheye must be 0/1, fisheye keyframes have 4 distortion values')
    if m.kf_brightness is not None:
        _check_array(where, 'kf_brightness', m.kf_brightness, (K,))
        if not np.all((m.kf_brightness >= 0) & (m.kf_brightness <= 1)):
            _fail(where, 'kf_brightness must lie in [0, 1]')
    if K == 0 or P == 0:
        _fail(where, f'empty map ({K} keyframes, {P} points)')
    T = m.kf_T_cam_world
    R = T[:, :3, :3]
    rigid = (np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2)) < 1e-4) \
        & np.all(np.abs(T[:, 3] - [0, 0, 0, 1]) < 1e-9, axis=1) & (np.linalg.det(R) > 0)
    if not np.all(rigid):
        _fail(where, f'keyframe poses {np.flatnonzero(~rigid)[:5].tolist()} are not rigid '
                     'transforms')
    _validate_cameras(m, where)
    off = m.kf_offsets
    if off[0] != 0 or off[-1] != O or np.any(np.diff(off) < 0):
        _fail(where, f'kf_offsets must rise from 0 to {O} (observations), got '
                     f'{off[0]}..{off[-1]}')
    if O and (m.obs_point.min() < 0 or m.obs_point.max() >= P):
        _fail(where, f'obs_point indices out of range [0, {P}): min {m.obs_point.min()}, '
                     f'max {m.obs_point.max()}')
    seen = np.bincount(m.obs_point, minlength=P) if O else np.zeros(P, int)
    if np.any(seen == 0):
        _fail(where, f'{int(np.sum(seen == 0))} points are seen by no keyframe')
    wh = np.repeat(m.kf_image_size.astype(np.float32), np.diff(off), axis=0)    # (O, 2)
    if O and (np.any(m.obs_uv < -0.5 - 1e-3) or np.any(m.obs_uv > wh - 0.5 + 1e-3)):
        _fail(where, 'obs_uv has pixels outside their keyframe image')


def _validate_cameras(m: Map, where: str) -> None:
    Kc = m.kf_K
    if np.any(m.kf_image_size <= 0):
        _fail(where, 'kf_image_size must be positive')
    ok = (Kc[:, 0, 0] > 0) & (Kc[:, 1, 1] > 0) & (Kc[:, 0, 1] == 0) & (Kc[:, 1, 0] == 0) \
        & np.all(Kc[:, 2] == [0, 0, 1], axis=1)
    if not np.all(ok):
        _fail(where, f'keyframes {np.flatnonzero(~ok)[:5].tolist()} have an invalid K '
                     '(expected [[fx,0,cx],[0,fy,cy],[0,0,1]], fx, fy > 0)')
