"""Descriptor quality on real posed pairs: argmax reprojection error of co-visible points.

For each point visible in a source (map) image and a target (query) image, the source
descriptor is bilinearly sampled at the point's source projection and compared (cosine) with
every cell of the target map; the error is the pixel distance between the best cell's centre
and the ground-truth target projection. Used by tests, ``benchmarks/networks.py`` and MODELS.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence, load_rgb


@dataclass(frozen=True)
class CovisiblePair:
    """Two images and the pixels of the same 3D points in both (OpenCV pixel convention).

    Attributes:
        image_src, image_tgt: (H, W, 3) uint8 RGB.
        uv_src, uv_tgt: (N, 2) float64 projections of N co-visible points.
        name: label for reports.
    """

    image_src: np.ndarray
    image_tgt: np.ndarray
    uv_src: np.ndarray
    uv_tgt: np.ndarray
    name: str


def _resize(image: np.ndarray, cam: Camera, max_side: int) -> tuple[np.ndarray, Camera]:
    cam2 = cam.resized_max_side(max_side)
    if (cam2.width, cam2.height) == (cam.width, cam.height):
        return image, cam
    out = cv2.resize(image, (cam2.width, cam2.height), interpolation=cv2.INTER_AREA)
    return out, cam2


def megadepth_pair(root: str | Path, max_side: int = 640) -> CovisiblePair:
    """The NRE MegaDepth sample (707 SfM points), both images resized to ``max_side``."""
    root = Path(root)
    data = np.load(root / 'sample.npz', allow_pickle=False)
    views = []
    for which in ('source', 'target'):
        image = load_rgb(root / f'{which}_image.jpg')
        cam = Camera(image.shape[1], image.shape[0], data[f'{which}_K'])
        image, cam = _resize(image, cam, max_side)
        T_cam_world = data[f'{which}_P'].astype(np.float64)
        points_cam = data['p3D'].astype(np.float64) @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        uv, valid = cam.project(points_cam)
        views.append((image, uv, valid))
    (im_s, uv_s, ok_s), (im_t, uv_t, ok_t) = views
    ok = ok_s & ok_t
    return CovisiblePair(im_s, im_t, uv_s[ok], uv_t[ok], 'megadepth')


def tum_pairs(seq: TumSequence, n_pairs: int = 4, n_points: int = 600, frame_gap: int = 3,
              depth_tolerance: float = 0.03) -> list[CovisiblePair]:
    """Map/query pairs of a TUM sequence: each query of ``split_query`` (evenly sub-sampled)
    with the map frame ``frame_gap`` map frames before it; points = Shi-Tomasi corners of the
    map image with depth, kept where the query depth agrees (occlusion test)."""
    queries = seq.split('query')
    map_frames = seq.split('map')
    map_stamps = np.array([f.timestamp for f in map_frames])
    cam = seq.camera
    pairs = []
    for q in [queries[i] for i in np.linspace(0, len(queries) - 1, n_pairs).astype(int)]:
        j = max(0, int(np.searchsorted(map_stamps, q.timestamp)) - frame_gap)
        m = map_frames[j]
        im_m, im_q = seq.load_rgb(m), seq.load_rgb(q)
        d_m, d_q = seq.load_depth(m), seq.load_depth(q)
        gray = cv2.cvtColor(im_m, cv2.COLOR_RGB2GRAY)
        corners = cv2.goodFeaturesToTrack(gray, n_points, 0.005, 5).reshape(-1, 2)
        uv_m = corners.astype(np.float64)
        z = d_m[np.round(uv_m[:, 1]).astype(int), np.round(uv_m[:, 0]).astype(int)]
        uv_m, z = uv_m[z > 0], z[z > 0]
        points_m = cam.unproject(uv_m, z)
        T_q_m = np.linalg.inv(q.T_world_cam) @ m.T_world_cam
        points_q = points_m @ T_q_m[:3, :3].T + T_q_m[:3, 3]
        uv_q, ok = cam.project(points_q)
        ui = np.clip(np.round(uv_q).astype(int), 0, [cam.width - 1, cam.height - 1])
        zq = d_q[ui[:, 1], ui[:, 0]]
        ok &= (zq > 0) & (np.abs(zq - points_q[:, 2]) < depth_tolerance * points_q[:, 2])
        pairs.append(CovisiblePair(im_m, im_q, uv_m[ok], uv_q[ok], f'tum:{Path(q.name).stem}'))
    return pairs


def sample_descriptors(fmap: torch.Tensor, uv: np.ndarray, stride: int) -> torch.Tensor:
    """Bilinear sample of a (C, h, w) stride-``stride`` map at (N, 2) image pixels -> (N, C),
    L2-normalized. Cell i is centred on pixel ``stride * i + (stride - 1) / 2``."""
    C, h, w = fmap.shape
    g = (torch.as_tensor(uv, dtype=torch.float32) - (stride - 1) / 2) / stride
    gn = torch.stack([2 * g[:, 0] / max(w - 1, 1) - 1, 2 * g[:, 1] / max(h - 1, 1) - 1], -1)
    out = F.grid_sample(fmap[None].float().cpu(), gn[None, None], mode='bilinear',
                        padding_mode='border', align_corners=True)[0, :, 0].T
    return F.normalize(out, dim=1)


def cell_centres(h: int, w: int, stride: int) -> torch.Tensor:
    """(h*w, 2) pixel centres of the cells of a stride-``stride`` grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()
    return stride * xy + (stride - 1) / 2


def argmax_errors(desc: torch.Tensor, fmap: torch.Tensor, stride: int, uv_true: np.ndarray,
                  window_centre: np.ndarray | None = None, window_half: int = 8) -> np.ndarray:
    """(N,) pixel error of the cosine argmax of (N, C) ``desc`` over the (C, h, w) ``fmap``.

    With ``window_centre`` (N, 2 pixels) the argmax is restricted to the
    (2*window_half+1)^2 cells around it (the pipeline's local fine windows).
    """
    C, h, w = fmap.shape
    sims = desc @ F.normalize(fmap.float().cpu().reshape(C, -1), dim=0)        # (N, hw)
    centres = cell_centres(h, w, stride)
    if window_centre is not None:
        c = (torch.as_tensor(window_centre, dtype=torch.float32) - (stride - 1) / 2) / stride
        cell = centres.sub((stride - 1) / 2).div(stride)
        outside = (cell[None] - c.round()[:, None]).abs().amax(-1) > window_half
        sims = sims.masked_fill(outside, -2.0)
    best = centres[sims.argmax(1)]
    return torch.linalg.norm(best - torch.as_tensor(uv_true, dtype=torch.float32), dim=1).numpy()


@dataclass(frozen=True)
class QualityRow:
    median_px: float
    within_pct: float
    n: int


def summarize(errors: np.ndarray, threshold_px: float) -> QualityRow:
    errors = np.asarray(errors)
    return QualityRow(float(np.median(errors)), float(100 * np.mean(errors <= threshold_px)),
                      int(errors.size))


def evaluate_level(model, pairs: list[CovisiblePair], level: str = 'coarse',
                   window_half: int | None = None, window_jitter_px: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """Argmax errors of all points of ``pairs`` for ``model.extract`` at ``level``.

    For 'fine' with ``window_half``, the window is centred on the true projection shifted by a
    uniform random offset of up to ``window_jitter_px`` (a coarse pose error).
    """
    rng = np.random.default_rng(seed)
    stride = model.spec.coarse_stride if level == 'coarse' else model.spec.fine_stride
    errs = []
    for pair in pairs:
        fine = level == 'fine'
        fs, ft = model.extract(pair.image_src, fine=fine), model.extract(pair.image_tgt, fine=fine)
        ms, mt = getattr(fs, level), getattr(ft, level)
        desc = sample_descriptors(ms, pair.uv_src, stride)
        centre = None
        if window_half is not None:
            centre = pair.uv_tgt + rng.uniform(-window_jitter_px, window_jitter_px,
                                               pair.uv_tgt.shape)
        errs.append(argmax_errors(desc, mt, stride, pair.uv_tgt, centre, window_half or 8))
    return np.concatenate(errs)
