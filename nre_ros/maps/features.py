"""Descriptor sampling, keypoint selection and global descriptors from DenseFeatures.

Grid convention (nre_ros.camera): cell i of a stride-k map is centred on pixel k*i + (k-1)/2,
so pixel u sits at continuous cell coordinate (u - (k-1)/2) / k. Sampling is bilinear between
cell centres (clamped at the border) and the result is re-normalized (descriptors are unit).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nre_ros.models.base import DenseFeatures

GLOBAL_METHOD = {'name': 'gem-pyramid', 'p': 3.0, 'levels': [1, 2]}


def sample_descriptors(dense: torch.Tensor, uv: np.ndarray, stride: int) -> np.ndarray:
    """Bilinearly sample a dense map at pixels.

    Args:
        dense: (C, h, w) descriptor map of stride ``stride`` (any device).
        uv: (N, 2) pixel coordinates of the image the map was computed on.
        stride: image pixels per cell.

    Returns:
        (N, C) float32 L2-normalized descriptors (numpy).
    """
    C, h, w = dense.shape
    if len(uv) == 0:
        return np.zeros((0, C), np.float32)
    cell = (torch.as_tensor(np.asarray(uv), dtype=torch.float32, device=dense.device)
            - (stride - 1) / 2) / stride
    norm = torch.stack([2 * cell[:, 0] / max(w - 1, 1) - 1, 2 * cell[:, 1] / max(h - 1, 1) - 1],
                       dim=-1)
    out = F.grid_sample(dense[None].float(), norm[None, None], mode='bilinear',
                        padding_mode='border', align_corners=True)[0, :, 0].T
    return F.normalize(out, dim=1).cpu().numpy().astype(np.float32)


def select_keypoints(scores: torch.Tensor | np.ndarray, max_points: int,
                     valid: np.ndarray | None = None, mode: str = 'score', nms_radius: int = 4,
                     grid_px: int = 32, border: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Pick keypoints from a detector score map.

    Args:
        scores: (H, W) scores in [0, 1].
        max_points: keep at most this many.
        valid: (H, W) bool, where keypoints may lie (e.g. valid depth), or None.
        mode: 'score' = NMS then the best ``max_points``; 'grid' = best NMS peak per
            ``grid_px`` cell, cells ranked by their peak, for an even spread.
        nms_radius: NMS window half-size in pixels.
        border: ignore this many pixels at the image border.

    Returns:
        uv: (N, 2) float64 integer pixel coordinates; score: (N,) float32.
    """
    s = torch.as_tensor(scores, dtype=torch.float32).cpu()
    H, W = s.shape
    peak = F.max_pool2d(s[None, None], 2 * nms_radius + 1, stride=1, padding=nms_radius)[0, 0]
    keep = (s == peak) & (s > 0)
    if border:
        keep[:border], keep[-border:], keep[:, :border], keep[:, -border:] = False, 0, 0, 0
    keep = keep.numpy()
    if valid is not None:
        keep &= valid
    v, u = np.nonzero(keep)
    sc = s.numpy()[v, u]
    if mode == 'grid':
        cell = (v // grid_px) * ((W + grid_px - 1) // grid_px) + u // grid_px
        order = np.lexsort((-sc, cell))                  # by cell, best first
        first = np.ones(len(order), bool)
        first[1:] = cell[order][1:] != cell[order][:-1]
        sel = order[first]
    elif mode == 'score':
        sel = np.arange(len(sc))
    else:
        raise ValueError(f'keypoint mode must be "score" or "grid", got {mode!r}')
    sel = sel[np.argsort(-sc[sel], kind='stable')][:max_points]
    return np.stack([u[sel], v[sel]], axis=1).astype(np.float64), sc[sel]


def global_descriptor(features: DenseFeatures, p: float = GLOBAL_METHOD['p'],
                      levels: tuple[int, ...] = tuple(GLOBAL_METHOD['levels'])) -> np.ndarray:
    """Global retrieval descriptor of an image: signed GeM pooling of the coarse map.

    The coarse map is GeM-pooled (power ``p``, sign kept) over the whole image and over each
    cell of an ``l x l`` grid for every level l, each part L2-normalized, then concatenated
    and L2-normalized. The same function is used at build and at query time.

    Args:
        features: DenseFeatures of the image; only ``coarse`` (C, h, w) is used.

    Returns:
        (C * sum(l*l for l in levels),) float32 unit vector.
    """
    x = features.coarse.float()
    xp = torch.sign(x) * x.abs().clamp_min(1e-6) ** p
    parts = []
    for level in levels:
        pooled = F.adaptive_avg_pool2d(xp[None], level)[0]           # (C, l, l)
        g = torch.sign(pooled) * pooled.abs() ** (1.0 / p)
        parts.append(F.normalize(g.reshape(g.shape[0], -1).T.reshape(-1), dim=0))
    return F.normalize(torch.cat(parts), dim=0).cpu().numpy().astype(np.float32)
