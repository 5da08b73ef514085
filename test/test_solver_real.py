"""Real geometry: NRE pair (MegaDepth) and TUM fr1_rpy, maps built from GT projections."""
from __future__ import annotations

import numpy as np
import torch

from nre_ros.camera import Camera
from nre_ros.geometry import invert, pose_error
from nre_ros.results import Result
from nre_ros.solver import solve
from nre_ros.solver.synthetic import scene_from_points


def _visible(points_world, T, cam):
    pc = points_world @ T[:3, :3].T + T[:3, 3]
    _, ok = cam.project(pc)
    return ok


def test_megadepth_pair(megadepth_pair):
    d = megadepth_pair
    T = d['target_P'].astype(np.float64)
    cam = Camera(1600, 1063, d['target_K'].astype(np.float64))
    grid = cam.feature_grid(8)
    pts = d['p3D'].astype(np.float64)
    pts = pts[_visible(pts, T, grid)]
    depth = float(np.median((pts @ T[:3, :3].T + T[:3, 3])[:, 2]))
    for outliers, noise, tol_deg in ((0.5, 0.0, 0.1), (0.5, 1.0, 0.5)):
        scene = scene_from_points(torch.tensor(pts), torch.tensor(T), torch.tensor(grid.K),
                                  (grid.width, grid.height), outliers, noise,
                                  spread=max(noise, 1.0), seed=1)
        res = solve(scene.points_world, scene.maps, scene.K)
        assert isinstance(res, Result), res
        dt, dr = pose_error(res.T_cam_world, T)
        assert dr < tol_deg and dt < 0.01 * depth * max(1.0, 3 * noise), (dt, dr, depth)


def test_tum_fr1_rpy_frames(fr1_rpy):
    seq = fr1_rpy
    grid = Camera(seq.camera.width, seq.camera.height, seq.camera.K).feature_grid(8)
    rng = np.random.default_rng(0)
    for i_map, i_query in ((0, 5), (40, 46)):
        f_map, f_q = seq[i_map], seq[i_query]
        depth = seq.load_depth(f_map)
        v, u = np.nonzero(depth > 0.3)
        pick = rng.choice(len(u), 800, replace=False)
        cam_full = Camera(seq.camera.width, seq.camera.height, seq.camera.K)
        pc = cam_full.unproject(np.stack([u[pick], v[pick]], 1).astype(float), depth[v[pick], u[pick]])
        pw = pc @ f_map.T_world_cam[:3, :3].T + f_map.T_world_cam[:3, 3]
        T = invert(f_q.T_world_cam)
        pw = pw[_visible(pw, T, grid)]
        scene = scene_from_points(torch.tensor(pw), torch.tensor(T), torch.tensor(grid.K),
                                  (grid.width, grid.height), 0.5, 0.0, seed=i_map)
        res = solve(scene.points_world, scene.maps, scene.K)
        assert isinstance(res, Result), res
        dt, dr = pose_error(res.T_cam_world, T)
        scene_depth = float(np.median((pw @ T[:3, :3].T + T[:3, 3])[:, 2]))
        assert dr < 0.1 and dt < 0.01 * scene_depth, (dt, dr)
