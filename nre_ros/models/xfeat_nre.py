"""Model 'xfeat-ms-nre': the default XFeat levels (frozen, pretrained) + light heads trained
with the NRE loss (Eq. 10) by the offline package ``nre_training``.

Each level passes XFeat's raw 64-d descriptors through a residual head

    y = n(x) + conv2(relu(conv1(n(x)))),   out = n(y),   n = L2 normalization over channels

(1x1 convolutions, i.e. a per-cell residual MLP, on both levels; a 3x3 coarse head is
supported but cost too much CPU to train here) and uses a learned inverse
softmax temperature per level. ``conv2`` starts at zero, so an untrained head reproduces
'xfeat-ms' exactly (inverse temperature 20). The heads and temperatures are read from one
safetensors file (no pickle): by default ``nre_ros/weights/xfeat-ms-nre.safetensors``.

This module is part of the node; ``nre_training`` imports the head from here, never the reverse.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nre_ros.models.base import ModelSpec, load_trained_module, save_trained_module
from nre_ros.models.xfeat import (FINE_UPSAMPLE, INV_TEMPERATURE, NORMALIZATION, STRIDE,
                                  XFeatFineNet, XFeatMultiScale, keypoint_scores,
                                  xfeat_forward, xfeat_with_file_sha256)

NAME = 'xfeat-ms-nre'
WEIGHTS_FILE = Path(__file__).resolve().parents[1] / 'weights' / f'{NAME}.safetensors'
DIM = 64


class ResidualHead(nn.Module):
    """(B, C, h, w) raw descriptors -> (B, C, h, w) L2-normalized; identity at init."""

    def __init__(self, dim: int = DIM, hidden: int = 128, kernel: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, dim, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.conv1.kernel_size == (1, 1):   # explicit perms: ONNX rejects negative ones
            return self.cells(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = F.normalize(feats, dim=1)
        return F.normalize(x + self.conv2(F.relu(self.conv1(x))), dim=1)

    def cells(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-cell form for 1x1 heads: (..., C) raw -> (..., C) L2-normalized (same math as
        ``forward``, as matrix products: much faster than 1x1 convolutions on CPU)."""
        x = F.normalize(feats, dim=-1)
        w1, w2 = self.conv1.weight[:, :, 0, 0], self.conv2.weight[:, :, 0, 0]
        y = F.linear(F.relu(F.linear(x, w1, self.conv1.bias)), w2, self.conv2.bias)
        return F.normalize(x + y, dim=-1)


class NreHeads(nn.Module):
    """Both levels' heads and their log inverse temperatures (coarse, fine)."""

    def __init__(self, hidden: int = 64, coarse_kernel: int = 1, fine_kernel: int = 1,
                 inv_temperature: float = INV_TEMPERATURE) -> None:
        super().__init__()
        self.config = {'hidden': hidden, 'coarse_kernel': coarse_kernel,
                       'fine_kernel': fine_kernel}
        self.coarse = ResidualHead(DIM, hidden, coarse_kernel)
        self.fine = ResidualHead(DIM, hidden, fine_kernel)
        self.log_inv_temperature = nn.Parameter(torch.full((2,), math.log(inv_temperature)))

    def inv_temperatures(self) -> tuple[float, float]:
        t = self.log_inv_temperature.detach().exp().tolist()
        return float(t[0]), float(t[1])


def save_heads(heads: NreHeads, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the heads as safetensors; ``metadata`` (JSON-able) is stored beside the config."""
    return save_trained_module(heads, heads.config, path, NAME, metadata)


def load_heads(path: str | Path) -> NreHeads:
    """NreHeads from a safetensors file written by ``save_heads``."""
    return load_trained_module(path, NreHeads, NAME, ' (train them with `nre-ros train`)')


class XFeatNreCoarseNet(nn.Module):
    """(1, 3, H, W) in [0, 1] (multiples of 32) -> descriptors (1, 64, H/8, W/8), scores."""

    def __init__(self, xfeat: nn.Module, head: ResidualHead) -> None:
        super().__init__()
        self.xfeat = xfeat
        self.head = head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, kpt_logits = xfeat_forward(self.xfeat, image)
        scores = keypoint_scores(kpt_logits)
        return self.head(feats), scores


class XFeatNreFineNet(XFeatFineNet):
    """(1, 3, H, W) in [0, 1] (multiples of 8) -> descriptors (1, 64, H/2, W/2): the NRE fine
    head on XFeat's raw features of the x4 image (phase form as in XFeatFineNet)."""

    def __init__(self, xfeat: nn.Module, head: ResidualHead,
                 upsample: int = FINE_UPSAMPLE, phase: bool | None = None) -> None:
        super().__init__(xfeat, upsample, phase)
        self.head = head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.raw_features(image))


class XFeatMultiScaleNre(XFeatMultiScale):
    """'xfeat-ms-nre': frozen pretrained XFeat + NRE-trained heads and temperatures.

    Args:
        device: torch device.
        pretrained: False gives identity heads (= 'xfeat-ms' descriptors) on a random XFeat.
        weights: head file (default WEIGHTS_FILE).
        with_fine: as in XFeatMultiScale.
    """

    name = NAME

    def __init__(self, device: str | torch.device = 'cpu', pretrained: bool = True,
                 weights: str | Path | None = None, with_fine: bool = True) -> None:
        super().__init__(device, pretrained, with_fine=with_fine)
        path = Path(weights) if weights else WEIGHTS_FILE
        heads = load_heads(path) if pretrained else NreHeads()
        self.heads = heads.to(self.device).eval()
        xfeat = self.coarse_net.xfeat
        self.coarse_net = XFeatNreCoarseNet(xfeat, self.heads.coarse).eval()
        self.fine_net = XFeatNreFineNet(xfeat, self.heads.fine).eval()
        tau_c, tau_f = heads.inv_temperatures()
        sha_hex = xfeat_with_file_sha256(path) if pretrained else 'random-init-seed-0'
        self.spec = ModelSpec(
            name=NAME, coarse_stride=STRIDE, coarse_dim=DIM, fine_stride=STRIDE // FINE_UPSAMPLE,
            fine_dim=DIM, inv_temperature=round(tau_c, 6), fine_inv_temperature=round(tau_f, 6),
            input_normalization=NORMALIZATION, weights_sha256=sha_hex)
