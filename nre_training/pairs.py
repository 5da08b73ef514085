"""Training pairs as tensors, the Eq. 10 loss on them and their cached backbone features
(shared by training and the held-out evaluation)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from nre_ros.models.xfeat_nre import NreHeads
from nre_training.features import (COARSE_STRIDE, FINE_STRIDE, FeatureCache, dense_coarse,
                                   fine_windows, grid_coords, sample_bilinear,
                                   sample_fine_points)
from nre_training.loss import coarse_loss, window_loss

__all__ = ['TrainPair', 'PairLoss', 'to_train_pairs', 'cached_features']


@dataclass
class TrainPair:
    """Tensors of one training pair (pixels); ``fine`` = both fine maps cached."""

    src: str
    tgt: str
    uv_src: Tensor
    uv_tgt: Tensor
    fine: bool
    split: str = ''


class PairLoss(nn.Module):
    """Eq. 10 on a list of (pair, point index, window jitter); forward -> (loss, parts)."""

    def __init__(self, heads: NreHeads, cache: FeatureCache, window: int = 16,
                 fine_weight: float = 1.0) -> None:
        super().__init__()
        self.heads = heads
        self.cache = cache
        self.window = window
        self.fine_weight = fine_weight

    def forward(self, items: list[tuple[TrainPair, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        tau = self.heads.log_inv_temperature.exp()
        losses, parts = [], []
        for p, idx, jitter in items:
            es, et = self.cache[p.src], self.cache[p.tgt]
            uv_s, uv_t = p.uv_src[idx], p.uv_tgt[idx]
            desc = sample_bilinear(dense_coarse(self.heads.coarse, es),
                                   grid_coords(uv_s, COARSE_STRIDE))
            lc, _ = coarse_loss(desc, dense_coarse(self.heads.coarse, et), tau[0],
                                grid_coords(uv_t, COARSE_STRIDE))
            lf = torch.zeros((), dtype=lc.dtype)
            if p.fine:
                cs, ct = grid_coords(uv_s, FINE_STRIDE), grid_coords(uv_t, FINE_STRIDE)
                fdesc = sample_fine_points(self.heads.fine, es['fine'], cs)
                _, hf, wf = et['fine'].shape
                s = self.window
                origin = torch.round(ct + jitter - (s - 1) / 2.0).long()
                origin[:, 0].clamp_(0, wf - s)
                origin[:, 1].clamp_(0, hf - s)
                win = fine_windows(self.heads.fine, et['fine'], origin, s)
                lf, _ = window_loss(fdesc, win, tau[1], ct - origin)
            losses.append(lc + self.fine_weight * lf)
            parts.append(torch.stack([lc.detach(), lf.detach(), torch.tensor(float(p.fine))]))
        parts_t = torch.stack(parts)
        n_fine = parts_t[:, 2].sum()
        fine_mean = parts_t[:, 1].sum() / n_fine if n_fine > 0 else torch.tensor(float('nan'))
        return torch.stack(losses).mean(), torch.stack([parts_t[:, 0].mean(), fine_mean])


def to_train_pairs(pairset) -> list[TrainPair]:
    return [TrainPair(p.src, p.tgt, torch.as_tensor(p.uv_src, dtype=torch.float32),
                      torch.as_tensor(p.uv_tgt, dtype=torch.float32),
                      p.src in pairset.fine_keys and p.tgt in pairset.fine_keys, p.split)
            for p in pairset.pairs]


def cached_features(name: str, pairset, cache_dir: str, rank: int = 0) -> FeatureCache:
    """Backbone features of a PairSet, cached as safetensors under ``cache_dir``."""
    path = Path(os.path.expanduser(cache_dir)) / f'{name}.safetensors'
    if rank == 0:
        cache = FeatureCache.load(path) if path.exists() else FeatureCache()
        before = len(cache.entries)
        for key, image, fine in pairset.images():
            cache.add_images([(key, image)], fine=fine, progress=False)
        if len(cache.entries) != before or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            cache.save(path)
    if dist.is_initialized():
        dist.barrier()
    return cache if rank == 0 else FeatureCache.load(path)
