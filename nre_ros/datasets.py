"""Readers for posed image sequences in the TUM RGB-D layout.

Layout (see ``shared/data/tum_rgbd_*/README.md``)::

    rgb/<name>.jpg | rgb.txt              colour images (and/or a TUM list "timestamp file")
    depth/<name>.png                      optional 16-bit depth, metres = value / depth_scale
    associations.txt                      optional rows holding an rgb/ and a depth/ path, the
                                          token before the rgb path being its timestamp
    poses_T_world_cam.txt                 TUM trajectory "timestamp tx ty tz qx qy qz qw",
                                          camera-to-world, scalar-last quaternion
    camera.yaml                           intrinsics (nre_ros.camera.Camera.from_yaml)
    split_*.txt                           optional lists of rgb paths
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nre_ros.camera import Camera, read_yaml_file
from nre_ros.errors import InputError
from nre_ros.geometry import pose_to_tum, tum_to_pose
from nre_ros.imagefiles import MAX_IMAGE_PIXELS, check_image_file
from nre_ros.trajectory import Trajectory

logger = logging.getLogger(__name__)

LAYOUT = ('the TUM layout: camera.yaml, poses_T_world_cam.txt ("t tx ty tz qx qy qz qw", '
          'camera-to-world) and associations.txt ("t rgb/NAME [t depth/NAME]" rows) or rgb.txt '
          '("t rgb/NAME" rows), images under rgb/ and depth under depth/')


def read_tum_poses(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory file.

    Returns:
        timestamps: (N,) float64 seconds.
        T: (N, 4, 4) poses as written in the file (camera-to-world for TUM ground truth).
    """
    rows = []
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f'cannot read trajectory file {path}: {exc.strerror or exc}') from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        values = line.replace(',', ' ').split()
        if len(values) != 8:
            raise InputError(f'{path}:{lineno}: expected 8 values "t tx ty tz qx qy qz qw", '
                             f'got {len(values)}')
        rows.append([float(v) for v in values])
    if not rows:
        return np.zeros(0), np.zeros((0, 4, 4))
    arr = np.asarray(rows)
    if not np.all(np.isfinite(arr)):
        raise InputError(f'{path}: non-finite values in trajectory')
    return arr[:, 0], tum_to_pose(arr[:, 1:])


def write_tum_poses(path: str | Path, timestamps: np.ndarray, T: np.ndarray,
                    header: str = 'timestamp tx ty tz qx qy qz qw') -> None:
    """Write (N,) timestamps and (N, 4, 4) poses as a TUM trajectory file."""
    rows = pose_to_tum(np.asarray(T).reshape(-1, 4, 4))
    lines = [f'# {header}'] + [
        f'{t:.6f} ' + ' '.join(f'{v:.9f}' for v in row) for t, row in zip(timestamps, rows)]
    Path(path).write_text('\n'.join(lines) + '\n')


@dataclass(frozen=True)
class Frame:
    """One posed image of a sequence. ``T_world_cam`` maps camera points to the world."""

    name: str            # rgb path relative to the sequence root, e.g. 'rgb/0001.jpg'
    timestamp: float
    rgb_path: Path
    depth_path: Path | None
    T_world_cam: np.ndarray


class TumSequence:
    """A posed RGB(-D) sequence in the TUM layout."""

    def __init__(self, root: str | Path, pose_tolerance_s: float = 0.02) -> None:
        """Read the layout; a frame's pose is interpolated from the trajectory when one is
        within ``pose_tolerance_s`` (frames without are dropped, with a warning)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f'sequence folder {self.root} does not exist')
        for required in ('camera.yaml', 'poses_T_world_cam.txt'):
            if not (self.root / required).is_file():
                raise InputError(f'{self.root}: {required} is missing; expected {LAYOUT}')
        self.camera = Camera.from_yaml(self.root / 'camera.yaml')
        scale = read_yaml_file(self.root / 'camera.yaml', 'camera file').get('depth_scale', 5000.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not 0 < scale < float('inf'):
            raise InputError(f'{self.root / "camera.yaml"}: depth_scale must be a positive '
                             f'number, got {scale!r}')
        self.depth_scale = float(scale)
        stamps, poses = read_tum_poses(self.root / 'poses_T_world_cam.txt')
        entries = self._read_entries()
        traj = Trajectory.from_seconds(stamps, poses)
        T, ok = traj.interpolate(np.round(np.array([e[0] for e in entries]) * 1e9)
                                 .astype(np.int64), pose_tolerance_s)
        self.frames: list[Frame] = [
            Frame(rgb, stamp, self.root / rgb, None if depth is None else self.root / depth, T_i)
            for (stamp, rgb, depth), T_i, has in zip(entries, T, ok) if has]
        if not self.frames:
            raise InputError(f'{self.root}: no image has a pose within {pose_tolerance_s} s in '
                             'poses_T_world_cam.txt')
        if len(self.frames) < len(entries):
            logger.warning('%s: %d of %d images have no pose within %.3f s in '
                           'poses_T_world_cam.txt and are left out', self.root,
                           len(entries) - len(self.frames), len(entries), pose_tolerance_s)
        self._by_name = {f.name: f for f in self.frames}

    def _read_entries(self) -> list[tuple[float, str, str | None]]:
        assoc = self.root / 'associations.txt'
        if assoc.exists():
            out = []
            for lineno, line in enumerate(assoc.read_text().splitlines(), 1):
                tokens = line.split()
                if not tokens or tokens[0].startswith('#'):
                    continue
                rgb_i = next((i for i, t in enumerate(tokens) if t.startswith('rgb/')), None)
                if rgb_i is None or rgb_i == 0:
                    raise InputError(f'{assoc}:{lineno}: no "timestamp rgb/NAME" pair in '
                                     f'{line.strip()!r}; expected {LAYOUT}')
                depth = next((t for t in tokens if t.startswith('depth/')), None)
                out.append((_float(tokens[rgb_i - 1], assoc, lineno), tokens[rgb_i], depth))
            return out
        rgb_list = self.root / 'rgb.txt'
        if rgb_list.exists():
            out = []
            for lineno, line in enumerate(rgb_list.read_text().splitlines(), 1):
                tokens = line.split()
                if not tokens or tokens[0].startswith('#'):
                    continue
                if len(tokens) < 2 or not tokens[1].startswith('rgb/'):
                    raise InputError(f'{rgb_list}:{lineno}: expected "timestamp rgb/NAME", got '
                                     f'{line.strip()!r}; expected {LAYOUT}')
                out.append((_float(tokens[0], rgb_list, lineno), tokens[1], None))
            return out
        raise InputError(f'{self.root}: neither associations.txt nor rgb.txt found; expected '
                         f'{LAYOUT}')

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Frame:
        return self.frames[i]

    def frame(self, name: str) -> Frame:
        return self._by_name[name]

    def split(self, name: str) -> list[Frame]:
        """Frames listed in ``split_<name>.txt`` (e.g. 'hard_query'), in file order."""
        path = self.root / f'split_{name}.txt'
        if not path.exists():
            raise InputError(f'{self.root}: no split file {path.name}')
        names = [ln.strip() for ln in path.read_text().splitlines()
                 if ln.strip() and not ln.startswith('#')]
        return [self._by_name[n] for n in names if n in self._by_name]

    def load_rgb(self, frame: Frame) -> np.ndarray:
        """(H, W, 3) uint8 RGB image."""
        return load_rgb(frame.rgb_path)

    def load_depth(self, frame: Frame) -> np.ndarray:
        """(H, W) float32 depth in metres, 0 where invalid."""
        if frame.depth_path is None:
            raise InputError(f'frame {frame.name} has no depth image')
        return load_depth(frame.depth_path, self.depth_scale)


def _float(token: str, path: Path, lineno: int) -> float:
    try:
        return float(token)
    except ValueError:
        raise InputError(f'{path}:{lineno}: {token!r} is not a timestamp; expected '
                         f'{LAYOUT}') from None


def load_depth(path: str | Path, units_per_metre: float) -> np.ndarray:
    """(H, W) float32 metres from a 16-bit single-channel depth image (raw / units_per_metre,
    0 = invalid) or a float ``.npy`` in metres; InputError if unreadable."""
    path = str(path)
    if path.endswith('.npy'):
        try:
            depth = np.load(path, allow_pickle=False, mmap_mode='r')
        except (OSError, ValueError) as exc:
            raise InputError(f'cannot read {path} as a .npy depth array ({exc})') from exc
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating) or (
                depth.size > MAX_IMAGE_PIXELS):
            raise InputError(f'{path}: .npy depth must be an HxW float array in metres, got '
                             f'{depth.dtype} {depth.shape}')
        return depth.astype(np.float32)
    check_image_file(path)
    try:
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError(f'cannot decode depth image {path} ({exc.err})') from exc
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise InputError(f'cannot read {path} as a 16-bit single-channel depth image')
    return raw.astype(np.float32) / units_per_metre


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; InputError if unreadable (the header's size is
    checked before decoding)."""
    check_image_file(path)
    try:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise InputError(f'cannot decode image {path} ({exc.err})') from exc
    if bgr is None:
        raise InputError(f'cannot read image {path}')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
