"""Map statistics and consistency checks: summary, reprojection errors, retrieval recall."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nre_ros.datasets import Frame, TumSequence
from nre_ros.geometry import invert
from nre_ros.maps.features import global_descriptor
from nre_ros.maps.format import Map, map_size_bytes
from nre_ros.maps.retrieval import RetrievalIndex
from nre_ros.models.base import FeatureModel


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
        'descriptor_dtype': str(m.obs_coarse.dtype),
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


def closest_keyframes(m: Map, T_world_cam: np.ndarray, metres_per_degree: float = 0.01
                      ) -> np.ndarray:
    """(K,) keyframe indices sorted by pose distance to a query pose.

    Distance = rotation angle (deg) + translation (m) / metres_per_degree (1 cm ~ 1 deg).
    """
    T_cam_world_q = invert(T_world_cam)
    R_rel = m.kf_T_cam_world[:, :3, :3] @ T_cam_world_q[:3, :3].T
    ang = np.degrees(np.arccos(np.clip((np.trace(R_rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    centres = -np.einsum('kji,kj->ki', m.kf_T_cam_world[:, :3, :3], m.kf_T_cam_world[:, :3, 3])
    dist = ang + np.linalg.norm(centres - T_world_cam[:3, 3], axis=1) / metres_per_degree
    return np.argsort(dist, kind='stable')


def retrieval_recall(m: Map, seq: TumSequence, queries: list[Frame], model: FeatureModel,
                     ks: tuple[int, ...] = (1, 3, 5, 10), image_max_size: int | None = None
                     ) -> dict[int, float]:
    """Fraction of queries whose pose-closest keyframe is among the top-k retrieved."""
    from nre_ros.maps.build_common import prepare_image
    index = RetrievalIndex(m.global_descriptors)
    hits = np.zeros((len(queries), len(ks)), bool)
    for qi, frame in enumerate(queries):
        rgb, _ = prepare_image(seq.load_rgb(frame), seq.camera, image_max_size)
        idx, _ = index.query(global_descriptor(model.extract(rgb)), max(ks))
        best = closest_keyframes(m, frame.T_world_cam)[0]
        hits[qi] = [best in idx[:k] for k in ks]
    return {k: float(hits[:, j].mean()) for j, k in enumerate(ks)}
