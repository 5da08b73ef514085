"""Map statistics and consistency checks: summary, reprojection errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nre_ros.maps.format import Map, map_size_bytes


def reprojection_errors(m: Map) -> np.ndarray:
    """(O,) pixel distance between each observation's uv and its point's projection."""
    err = np.full(m.num_observations, np.inf)
    pts = m.points_world.astype(np.float64)
    for i in range(m.num_keyframes):                       # loop over keyframes, not points
        s = slice(int(m.kf_offsets[i]), int(m.kf_offsets[i + 1]))
        T = m.kf_T_cam_world[i]
        p_cam = pts[m.obs_point[s]] @ T[:3, :3].T + T[:3, 3]
        uv, _ = m.camera(i).project(p_cam)
        err[s] = np.linalg.norm(uv - m.obs_uv[s], axis=1)
    return err


def map_summary(m: Map, path: str | Path | None = None) -> dict:
    """Numbers for ``nre-ros info`` and build summaries."""
    track = np.bincount(m.obs_point, minlength=m.num_points)
    per_kf = np.diff(m.kf_offsets)
    err = reprojection_errors(m)
    centres = -np.einsum('kji,kj->ki', m.kf_T_cam_world[:, :3, :3], m.kf_T_cam_world[:, :3, 3])
    out = {
        'keyframes': m.num_keyframes, 'points': m.num_points,
        'observations': m.num_observations,
        'obs_per_keyframe_median': float(np.median(per_kf)),
        'track_length_mean': float(track.mean()),
        'reproj_err_median_px': float(np.median(err)),
        'reproj_err_p90_px': float(np.percentile(err, 90)),
        'points_extent': np.ptp(m.points_world, axis=0).round(3).tolist(),
        'camera_extent': np.ptp(centres, axis=0).round(3).tolist(),
        'model': m.spec.name, 'coarse': f'{m.spec.coarse_dim}-d /{m.spec.coarse_stride}',
        'fine': f'{m.spec.fine_dim}-d /{m.spec.fine_stride}' if m.obs_fine is not None
        else 'none',
        # the fine level tracking queries run in one pass (obs_fine_tracking), or none
        'tracking_level': 'none' if m.tracking_spec is None else
        f'{m.tracking_spec.name} {m.tracking_spec.fine_dim}-d /{m.tracking_spec.fine_stride}',
        'descriptor_dtype': str(m.obs_coarse.dtype),
        # the light washed-out queries are matched to (None: built before it was recorded)
        'brightness_median': None if m.kf_brightness is None
        else float(np.median(m.kf_brightness)),
        'global_dim': int(m.kf_global.shape[1]),
        'weights_sha256': m.spec.weights_sha256[:16],
        'map_frame': m.metadata.map_frame, 'units': m.metadata.units,
        'map_T_model': 'set' if m.metadata.map_T_model is not None else 'none',
        'builder': m.metadata.provenance.get('builder'),
        'source': m.metadata.provenance.get('source'),
        'created_utc': m.metadata.provenance.get('created_utc'),
    }
    out['size_mb'] = (map_size_bytes(path) if path else m.nbytes) / 1e6
    return out


def format_summary(s: dict) -> str:
    return '\n'.join(f'{k:<26} {round(v, 3) if isinstance(v, float) else v}'
                     for k, v in s.items())
