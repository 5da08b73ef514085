"""Metric alignment of a map in arbitrary units (SfM / COLMAP): a similarity fitted on camera
centres and orientations (Umeyama), stored as the map's ``map_T_model``.

Reference poses (``read_reference_poses``) come from

- a TUM file ``t tx ty tz qx qy qz qw`` (camera-to-world, seconds), matched to keyframes whose
  names carry a time (``rgb/1305031229.528748.png``, ``/image@1305031229.528748000``),
  interpolated within a tolerance;
- a named pose file ``name tx ty tz qx qy qz qw`` (camera-to-world), matched by name or base name;
- a TUM-layout folder (its ``poses_T_world_cam.txt`` by rgb name);
- a bag: the camera poses of its image stamps (``bag_reference_poses``), matched by time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nre_ros.errors import InputError
from nre_ros.geometry import Sim3, invert, rotation_angle_deg, tum_to_pose
from nre_ros.maps.format import Map
from nre_ros.trajectory import DEFAULT_TOLERANCE_S, Trajectory

MIN_KEYFRAMES = 3
_TIME = re.compile(r'(\d{6,}(?:\.\d+)?)')


@dataclass(frozen=True)
class Alignment:
    """``map_T_model`` fitted on ``n`` cameras; residuals of their centres in the reference's
    metres and of their orientations in degrees."""

    sim: Sim3
    n: int
    rms_m: float
    max_m: float
    rotation_rms_deg: float

    def describe(self) -> str:
        return (f'aligned on {self.n} keyframes: scale {self.sim.scale:.6g}, residual RMS '
                f'{self.rms_m:.4f} m, max {self.max_m:.4f} m, camera rotation RMS '
                f'{self.rotation_rms_deg:.2f} deg')


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991). src, dst: (N, 3), N >= 3
    not collinear."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise InputError(f'alignment needs >= 3 matching 3D points, got {src.shape} / '
                         f'{dst.shape}')
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, d, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    var_s = np.mean(np.sum(xs ** 2, 1))
    if var_s < 1e-18 or d[1] < 1e-9 * max(d[0], 1e-300):
        raise InputError('alignment points are degenerate (coincident or collinear camera '
                         'centres)')
    R = U @ S @ Vt
    s = float(np.trace(np.diag(d) @ S) / var_s) if with_scale else 1.0
    return Sim3(R, mu_d - s * R @ mu_s, s)


def apply(sim: Sim3, points: np.ndarray) -> np.ndarray:
    """(N, 3) model points -> map frame."""
    return sim.scale * np.asarray(points) @ np.asarray(sim.rotation).T + sim.translation


def align_map(m: Map, reference: 'dict[str, np.ndarray] | ReferencePoses'
              ) -> tuple[Map, Alignment]:
    """The map with ``map_T_model`` fitted to the reference poses of its keyframes.

    Umeyama on the camera centres, then twice on the centres plus three points along each
    camera's axes (``lever`` metres out, ``lever / scale`` in model units): camera orientations
    then fix the rotation even when the centres barely spread (a camera turning on the spot).
    """
    ref = reference if isinstance(reference, ReferencePoses) else ReferencePoses(reference)
    T_model_cam = invert(np.asarray(m.kf_T_cam_world))
    T_ref, has = ref.poses_for(m.keyframe_names)
    if has.sum() < MIN_KEYFRAMES:
        raise InputError(f'only {int(has.sum())} of {m.num_keyframes} keyframes have a '
                         f'reference pose ({ref.source}); alignment needs {MIN_KEYFRAMES} '
                         f'(keyframes e.g. {list(m.keyframe_names[:3])})')
    Tm, Tr = T_model_cam[has], T_ref[has]
    cm, cr = Tm[:, :3, 3], Tr[:, :3, 3]
    sim = umeyama(cm, cr)
    lever = max(float(np.sqrt(np.mean(np.sum((cr - cr.mean(0)) ** 2, 1)))), 0.5)
    for _ in range(2):
        am = (cm[:, None] + (lever / sim.scale) * np.swapaxes(Tm[:, :3, :3], 1, 2)).reshape(-1, 3)
        ar = (cr[:, None] + lever * np.swapaxes(Tr[:, :3, :3], 1, 2)).reshape(-1, 3)
        sim = umeyama(np.concatenate([cm, am]), np.concatenate([cr, ar]))
    res = np.linalg.norm(apply(sim, cm) - cr, axis=1)
    rot = rotation_angle_deg(np.asarray(sim.rotation) @ Tm[:, :3, :3], Tr[:, :3, :3])
    al = Alignment(sim, int(has.sum()), float(np.sqrt(np.mean(res ** 2))), float(res.max()),
                   float(np.sqrt(np.mean(rot ** 2))))
    prov = {**m.metadata.provenance, 'alignment': {
        'reference': ref.source, 'keyframes': al.n, 'rms_m': al.rms_m, 'max_m': al.max_m,
        'rotation_rms_deg': al.rotation_rms_deg}}
    return replace(m, metadata=replace(m.metadata, map_T_model=sim, provenance=prov)), al


class ReferencePoses:
    """Reference ``T_world_cam`` by image name, and/or a timed trajectory."""

    def __init__(self, by_name: dict[str, np.ndarray] | None = None,
                 trajectory: Trajectory | None = None, source: str = '<memory>',
                 tolerance_s: float = DEFAULT_TOLERANCE_S) -> None:
        self.by_name = dict(by_name or {})
        self.by_base = {Path(k).name: v for k, v in self.by_name.items()}
        self.trajectory = trajectory
        self.source = source
        self.tolerance_s = tolerance_s

    def poses_for(self, names) -> tuple[np.ndarray, np.ndarray]:
        """(K, 4, 4) reference ``T_world_cam`` of the named keyframes and (K,) found."""
        out = np.tile(np.eye(4), (len(names), 1, 1))
        has = np.zeros(len(names), bool)
        for i, n in enumerate(names):
            T = self.by_name.get(n, self.by_base.get(Path(n).name))
            if T is not None:
                out[i], has[i] = T, True
        if self.trajectory is not None:
            stamps = np.array([_name_time_ns(n) for n in names], np.int64)
            timed = (stamps >= 0) & ~has
            T, ok = self.trajectory.interpolate(stamps[timed], self.tolerance_s)
            idx = np.flatnonzero(timed)[ok]
            out[idx], has[idx] = T[ok], True
        return out, has

    def centres_for(self, names) -> tuple[np.ndarray, np.ndarray]:
        """(K, 3) reference camera centres of the named keyframes and (K,) found."""
        T, has = self.poses_for(names)
        return T[:, :3, 3], has


def read_reference_poses(path: str | Path, tolerance_s: float = DEFAULT_TOLERANCE_S
                         ) -> ReferencePoses:
    """Reference poses from a TUM file, a named pose file or a TUM-layout folder."""
    path = Path(path)
    if path.is_dir():
        from nre_ros.datasets import TumSequence
        seq = TumSequence(path)
        return ReferencePoses({f.name: f.T_world_cam for f in seq.frames}, source=str(path))
    if not path.is_file():
        raise InputError(f'reference poses {path} do not exist')
    named, timed = {}, []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.replace(',', ' ').split()
        if not tok or tok[0].startswith('#'):
            continue
        if len(tok) != 8:
            raise InputError(f'{path}:{lineno}: expected "t|name tx ty tz qx qy qz qw", got '
                             f'{len(tok)} values')
        try:
            vals = np.array([float(v) for v in tok[1:]])
        except ValueError:
            raise InputError(f'{path}:{lineno}: non-numeric pose values') from None
        try:
            timed.append(np.concatenate([[float(tok[0])], vals]))
        except ValueError:
            named[tok[0]] = tum_to_pose(vals)
    traj = None
    if timed:
        arr = np.stack(timed)
        traj = Trajectory.from_seconds(arr[:, 0], tum_to_pose(arr[:, 1:]))
    return ReferencePoses(named, traj, str(path), tolerance_s)


def bag_reference_poses(bag_path: str | Path, image_topic: str, source) -> ReferencePoses:
    """Reference poses from a bag: ``T_map_cam`` at the image stamps (``source``: a
    ``nre_ros.bagio.poses.PoseSource``), matched to keyframes by the time in their names."""
    from nre_ros.bagio.poses import ground_truth_by_stamp
    truth, _ = ground_truth_by_stamp(bag_path, image_topic, source)
    stamps = np.array(sorted(truth), np.int64)
    return ReferencePoses(trajectory=Trajectory(stamps, np.stack([truth[s] for s in stamps])),
                          source=f'{bag_path} ({source.describe()})',
                          tolerance_s=source.tolerance_s)


def _name_time_ns(name: str) -> int:
    """Nanoseconds of the time in a keyframe name (-1 when none): '…@SEC.NSEC' or a number."""
    if '@' in name:
        name = name.rsplit('@', 1)[1]
    m = _TIME.findall(Path(name).name)
    if not m:
        return -1
    sec, _, frac = m[-1].partition('.')
    return int(sec) * 1_000_000_000 + int((frac + '000000000')[:9])


def units_warning(m: Map) -> str | None:
    """A sentence when the map does not serve metric poses (units other than metres and no
    ``map_T_model``), else None."""
    if m.metadata.units == 'm' or m.metadata.map_T_model is not None:
        return None
    return (f'map has units {m.metadata.units!r} and no map_T_model: poses are in arbitrary '
            'SfM units, not metres (rebuild with --align-to POSES to make it metric)')
