"""Frozen-backbone feature cache and the differentiable descriptor ops used in training.

The pretrained XFeat is frozen, so its raw (pre-normalization) 64-d outputs are computed once per
image and cached: coarse (64, Hp/8, Wp/8) float32 on the image replicate-padded to a multiple
of 32 (what the exported coarse network sees, so the 3x3 coarse head has the same borders), fine
(64, H/2, W/2) float16 (XFeat on the x4 image; the fine head is per-cell, so no padding
matters), and the keypoint score map (H, W). Only the NRE heads are trained on top.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from nre_ros.models.xfeat import (PAD_MULTIPLE, STRIDE, keypoint_scores, load_xfeat_net,
                                  pad_image, xfeat_forward)

COARSE_STRIDE = 8
FINE_STRIDE = 2


class FeatureCache:
    """key -> {'coarse': (64, hp, wp) f32, 'fine': (64, H/2, W/2) f16 or absent,
    'scores': (H, W) f32, 'size': (2,) int64 (W, H)}."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Tensor]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __getitem__(self, key: str) -> dict[str, Tensor]:
        return self.entries[key]

    def add_images(self, items: list[tuple[str, np.ndarray]], fine: bool = True,
                   progress: bool = True, xfeat: torch.nn.Module | None = None) -> None:
        """Compute features of (key, (H, W, 3) uint8) items not cached yet."""
        todo = [(k, im) for k, im in items if k not in self.entries
                or (fine and 'fine' not in self.entries[k])]
        if not todo:
            return
        xfeat = xfeat or load_xfeat_net(torch.device('cpu'))
        for key, image in tqdm(todo, desc='backbone features', disable=not progress):
            self.entries[key] = backbone_features(xfeat, image, fine)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file
        flat = {f'{k}|{n}': v.contiguous() for k, e in self.entries.items() for n, v in e.items()}
        save_file(flat, str(path))

    @classmethod
    def load(cls, path: str | Path) -> 'FeatureCache':
        from safetensors.torch import load_file
        cache = cls()
        for name, v in load_file(str(path)).items():
            key, field = name.rsplit('|', 1)
            cache.entries.setdefault(key, {})[field] = v
        return cache


@torch.inference_mode()
def backbone_features(xfeat: torch.nn.Module, image: np.ndarray, fine: bool = True
                      ) -> dict[str, Tensor]:
    """Raw XFeat outputs of one (H, W, 3) uint8 image (see module docstring)."""
    H, W = image.shape[:2]
    x = pad_image(image, PAD_MULTIPLE, torch.device('cpu'))
    feats, logits = xfeat_forward(xfeat, x)
    scores = keypoint_scores(logits)[0, 0, :H, :W]
    out = {'coarse': feats[0].clone(), 'scores': scores.clone(),
           'size': torch.tensor([W, H], dtype=torch.int64)}
    if fine:
        gray = F.interpolate(x.mean(dim=1, keepdim=True), scale_factor=4.0, mode='bilinear',
                             align_corners=False)
        f = xfeat_forward(xfeat, gray, keypoints=False)[0][0, :, :H // 2, :W // 2]
        out['fine'] = f.to(torch.float16).clone()
    return out


def grid_coords(uv: Tensor, stride: int) -> Tensor:
    """Pixels (N, 2) -> continuous cell coordinates of a stride-``stride`` grid."""
    return (uv - (stride - 1) / 2.0) / stride


def dense_coarse(head: torch.nn.Module, entry: dict[str, Tensor]) -> Tensor:
    """(64, H//8, W//8) head output (L2-normalized) of a cached image."""
    W, H = entry['size'].tolist()
    raw = entry['coarse']
    if head.conv1.kernel_size == (1, 1):
        raw = raw[:, :H // STRIDE, :W // STRIDE]
        return head.cells(raw.permute(1, 2, 0).float()).permute(2, 0, 1)
    return head(raw[None].float())[0, :, :H // STRIDE, :W // STRIDE]


def sample_bilinear(dense: Tensor, cells: Tensor) -> Tensor:
    """(C, h, w) map sampled at (N, 2) cell coordinates (border-clamped), re-normalized: (N, C).
    Same rule as nre_ros.maps.features.sample_descriptors."""
    c, h, w = dense.shape
    g = torch.stack([2 * cells[:, 0] / max(w - 1, 1) - 1, 2 * cells[:, 1] / max(h - 1, 1) - 1], -1)
    out = F.grid_sample(dense[None], g[None, None].to(dense.dtype), mode='bilinear',
                        padding_mode='border', align_corners=True)[0, :, 0].T
    return F.normalize(out, dim=1)


def sample_fine_points(head: torch.nn.Module, fine_raw: Tensor, cells: Tensor) -> Tensor:
    """Fine source descriptors (N, C) at (N, 2) fine cell coordinates: the per-cell head on the
    4 neighbouring cells, bilinear blend, re-normalized (equals sampling the dense head map)."""
    c, h, w = fine_raw.shape
    x = cells[:, 0].clamp(0, w - 1)
    y = cells[:, 1].clamp(0, h - 1)
    x0 = x.floor().clamp(max=w - 2).long()
    y0 = y.floor().clamp(max=h - 2).long()
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], 1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], 1)
    flat = fine_raw.reshape(c, h * w)
    raw = flat[:, (ys * w + xs).reshape(-1)].T.float().reshape(-1, 4, c)   # (N, 4, C)
    d = head.cells(raw)                                                     # 1x1 head
    wts = torch.cat([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    return F.normalize((d * wts[:, :, None]).sum(1), dim=1)


def fine_windows(head: torch.nn.Module, fine_raw: Tensor, origin: Tensor, size: int) -> Tensor:
    """(N, S, S, C) head descriptors of S x S windows with top-left cells ``origin`` (N, 2)
    (windows must lie inside the grid)."""
    c, h, w = fine_raw.shape
    d = torch.arange(size)
    xs = origin[:, 0, None, None] + d[None, None, :]
    ys = origin[:, 1, None, None] + d[None, :, None]
    raw = fine_raw.reshape(c, h * w)[:, (ys * w + xs).reshape(-1)].T.float()
    return head.cells(raw).reshape(origin.shape[0], size, size, c)          # 1x1 head
