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

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nre_ros.camera import Camera, read_yaml_file
from nre_ros.errors import InputError
from nre_ros.geometry import pose_to_tum, tum_to_pose


def read_tum_poses(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM trajectory file.

    Returns:
        timestamps: (N,) float64 seconds.
        T: (N, 4, 4) poses as written in the file (camera-to-world for TUM ground truth).
    """
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
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

    def __init__(self, root: str | Path, pose_tolerance_s: float = 1e-3) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f'sequence folder {self.root} does not exist')
        self.camera = Camera.from_yaml(self.root / 'camera.yaml')
        scale = read_yaml_file(self.root / 'camera.yaml', 'camera file').get('depth_scale', 5000.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not 0 < scale < float('inf'):
            raise InputError(f'{self.root / "camera.yaml"}: depth_scale must be a positive '
                             f'number, got {scale!r}')
        self.depth_scale = float(scale)
        stamps, poses = read_tum_poses(self.root / 'poses_T_world_cam.txt')
        entries = self._read_entries()
        self.frames: list[Frame] = []
        for stamp, rgb, depth in entries:
            i = int(np.argmin(np.abs(stamps - stamp))) if stamps.size else -1
            if i < 0 or abs(stamps[i] - stamp) > pose_tolerance_s:
                continue  # no ground truth for this image
            self.frames.append(Frame(rgb, stamp, self.root / rgb,
                                     None if depth is None else self.root / depth, poses[i]))
        if not self.frames:
            raise InputError(f'{self.root}: no image has a pose in poses_T_world_cam.txt')
        self._by_name = {f.name: f for f in self.frames}

    def _read_entries(self) -> list[tuple[float, str, str | None]]:
        assoc = self.root / 'associations.txt'
        if assoc.exists():
            out = []
            for line in assoc.read_text().splitlines():
                tokens = line.split()
                if not tokens or tokens[0].startswith('#'):
                    continue
                rgb_i = next(i for i, t in enumerate(tokens) if t.startswith('rgb/'))
                depth = next((t for t in tokens if t.startswith('depth/')), None)
                out.append((float(tokens[rgb_i - 1]), tokens[rgb_i], depth))
            return out
        rgb_list = self.root / 'rgb.txt'
        if rgb_list.exists():
            return [(float(t), f, None) for t, f in
                    (ln.split()[:2] for ln in rgb_list.read_text().splitlines()
                     if ln.strip() and not ln.startswith('#'))]
        raise InputError(f'{self.root}: neither associations.txt nor rgb.txt found')

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


def load_depth(path: str | Path, units_per_metre: float) -> np.ndarray:
    """(H, W) float32 metres from a 16-bit single-channel depth image (raw / units_per_metre,
    0 = invalid) or a float ``.npy`` in metres; InputError if unreadable."""
    path = str(path)
    if path.endswith('.npy'):
        depth = np.load(path, allow_pickle=False)
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise InputError(f'{path}: .npy depth must be an HxW float array in metres, got '
                             f'{depth.dtype} {depth.shape}')
        return depth.astype(np.float32)
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise InputError(f'cannot read {path} as a 16-bit single-channel depth image')
    return raw.astype(np.float32) / units_per_metre


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; InputError if unreadable."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f'cannot read image {path}')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
