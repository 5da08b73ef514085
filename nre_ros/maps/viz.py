"""Top-view PNG of a map: points (x-y of the world frame, coloured) and keyframe frusta."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nre_ros.maps.format import Map


def plot_map_top_view(m: Map, path: str | Path, max_points: int = 50000,
                      frustum_scale: float | None = None, dpi: int = 120) -> Path:
    """Write a PNG of the map seen from above (world x right, world y up) and return its path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    pts = np.asarray(m.points_world, np.float64)
    rgb = np.asarray(m.points_rgb, np.float64) / 255.0
    if len(pts) > max_points:
        sel = np.random.default_rng(0).choice(len(pts), max_points, replace=False)
        pts, rgb = pts[sel], rgb[sel]
    R_cw = np.asarray(m.kf_T_cam_world)[:, :3, :3]
    centres = -np.einsum('kji,kj->ki', R_cw, np.asarray(m.kf_T_cam_world)[:, :3, 3])
    lo, hi = np.percentile(pts, 2, axis=0), np.percentile(pts, 98, axis=0)
    span = max(float(np.max(hi[:2] - lo[:2])), 1e-3)
    s = frustum_scale or 0.05 * span
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.scatter(pts[:, 0], pts[:, 1], c=rgb, s=1.0, linewidths=0)
    for i in range(m.num_keyframes):                     # frusta: centre + 4 image corners
        cam = m.camera(i)
        w, h = cam.width - 1, cam.height - 1
        corners = cam.undistort_pixels(np.array([[0, 0], [w, 0], [w, h], [0, h]], float))
        rays = np.concatenate([corners, np.ones((4, 1))], 1) * s
        world = rays @ R_cw[i] + centres[i]              # R_world_cam = R_cw.T
        poly = np.vstack([world, world[:1]])
        ax.plot(poly[:, 0], poly[:, 1], 'r-', lw=0.5)
        for c in world:
            ax.plot([centres[i, 0], c[0]], [centres[i, 1], c[1]], 'r-', lw=0.3)
    ax.plot(centres[:, 0], centres[:, 1], 'b.-', lw=0.5, ms=2)
    pad = 0.1 * span
    ax.set_xlim(min(lo[0], centres[:, 0].min()) - pad, max(hi[0], centres[:, 0].max()) + pad)
    ax.set_ylim(min(lo[1], centres[:, 1].min()) - pad, max(hi[1], centres[:, 1].max()) + pad)
    ax.set_aspect('equal')
    ax.set_xlabel(f'x [{m.metadata.units}]')
    ax.set_ylabel(f'y [{m.metadata.units}]')
    ax.set_title(f'{m.num_keyframes} keyframes, {m.num_points} points (top view, world z up)')
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
