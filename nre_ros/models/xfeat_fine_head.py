"""A small fine head on XFeat's own activations from the coarse pass (model 'xfeat-ms-head', a
speed option: MODELS.md).

One XFeat pass on the original image gives, besides its stride-8 descriptors, activations at
higher resolution: the instance-normed gray image (stride 1), block1's second layer (8 ch,
stride 2), block2's output (24 ch, stride 4). ``FineHead`` turns them into L2-normalized 64-d
descriptors at stride 2 (cell j centred on pixel 2 j + 0.5, as camera.py wants):

    base  = up4(n(feats))                        (the coarse level bilinearly upsampled)
    h4    = relu(up2(A n(feats)) + B block2 + C unshuffle2(f2) + D unshuffle4(x))   (stride 4)
    h4    = relu(conv3x3(h4))
    h2    = relu(up2(E h4) + F f2 + G unshuffle2(x))                               (stride 2)
    h2    = relu(conv3x3(h2))
    out   = n(base + W h2)                       (W starts at zero: an untrained head = base)

(``n`` = L2 normalization over channels, ``up`` = bilinear, ``align_corners=False``, which keeps
the cell-centre convention.) The 1x1 projections run at each input's own resolution before
upsampling (bilinear upsampling commutes with them), so the head's cost is dominated by two
3x3 convolutions on the stride-4 and stride-2 grids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nre_ros import compiled
from nre_ros.models.base import (DenseFeatures, ModelSpec, check_image, load_trained_module,
                                 save_trained_module)
from nre_ros.models.xfeat import (FINE_INV_TEMPERATURE, INV_TEMPERATURE, NORMALIZATION, STRIDE,
                                  XFeatCoarseNet, XFeatMultiScale, instance_norm,
                                  pad_image, xfeat_tail,
                                  xfeat_with_file_sha256)
from nre_ros.models.xfeat_phase import CELL

NAME = 'xfeat-ms-head'
WEIGHTS_FILE = Path(__file__).resolve().parents[1] / 'weights' / f'{NAME}.safetensors'
DIM = 64
FINE_STRIDE = 2


def coarse_activations(xfeat: nn.Module, image: torch.Tensor, keypoints: bool = True
                       ) -> dict[str, torch.Tensor]:
    """One XFeat pass on (1, 3 or 1, H, W) in [0, 1] (H, W multiples of 32) -> its outputs and
    the activations the head reads: ``x`` (1, 1, H, W) instance-normed gray, ``f2`` (1, 8, H/2,
    W/2) block1's second layer, ``b2`` (1, 24, H/4, W/4) block2's input (block1 + skip1),
    ``feats`` (1, 64, H/8, W/8) raw fused descriptors, ``logits`` (1, 65, H/8, W/8) or absent.
    ``feats`` equals ``xfeat_forward``'s."""
    gray = image if image.shape[1] == 1 else image.mean(dim=1, keepdim=True)
    x = instance_norm(gray, xfeat.norm.eps)
    f2 = xfeat.block1[1](xfeat.block1[0](x))
    b2 = xfeat.block1[3](xfeat.block1[2](f2)) + xfeat.skip1(x)
    out = {'x': x, 'f2': f2, 'b2': b2, 'feats': xfeat_tail(xfeat, b2)}
    if keypoints:
        out['logits'] = xfeat.keypoint_head(F.pixel_unshuffle(x, STRIDE))
    return out


def phase_activations(coarse_net: XFeatCoarseNet, image: torch.Tensor, keypoints: bool = True
                      ) -> dict[str, torch.Tensor]:
    """``coarse_activations`` computed as ``coarse_net`` computes its level where it runs the
    phase form (first block on 4 x 4 cells, BatchNorm folded): the same values up to float
    rounding. Block1's second layer comes out of the phase block as ``pixel_unshuffle(f2, 2)``
    and is shuffled back; both cell forms are passed on too (``x_cells`` = ``pixel_unshuffle(x,
    4)``, ``f2_cells``), since the head reads them and need not unshuffle again."""
    x = instance_norm(image.mean(dim=1, keepdim=True), coarse_net.xfeat.norm.eps)
    x_cells = F.pixel_unshuffle(x, CELL)
    b2, f2_cells = coarse_net.phase_block1.with_second_layer(x_cells)
    out = {'x': x, 'f2': F.pixel_shuffle(f2_cells, 2), 'b2': b2,
           'feats': xfeat_tail(coarse_net.phase_tail, b2), 'x_cells': x_cells,
           'f2_cells': f2_cells}
    if keypoints:
        out['logits'] = coarse_net.phase_keypoint_head(F.pixel_unshuffle(x, STRIDE))
    return out


def pass_activations(coarse_net: XFeatCoarseNet, image: torch.Tensor, keypoints: bool = True
                     ) -> dict[str, torch.Tensor]:
    """The head's inputs from one XFeat pass, in the form ``coarse_net`` runs now (phase form
    in bf16 on a CPU and on CUDA, original layers otherwise: ``uses_phase_form``)."""
    if coarse_net.uses_phase_form(image):
        return phase_activations(coarse_net, image, keypoints)
    return coarse_activations(coarse_net.xfeat, image, keypoints)


def _up(t: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(t, scale_factor=float(factor), mode='bilinear', align_corners=False)


class FineHead(nn.Module):
    """XFeat coarse-pass activations -> L2-normalized (1, 64, H/2, W/2) fine descriptors.

    Args:
        hidden4, hidden2: channels of the stride-4 and stride-2 trunks.
        zero_init: start the output projection at zero (the head then returns ``base``);
            False keeps torch's default init everywhere (a random-init control).
    """

    def __init__(self, hidden4: int = 48, hidden2: int = 32, zero_init: bool = True) -> None:
        super().__init__()
        self.config = {'hidden4': hidden4, 'hidden2': hidden2}
        self.feat4 = nn.Conv2d(DIM, hidden4, 1)                  # A (applied at stride 8)
        self.block4 = nn.Conv2d(24, hidden4, 1, bias=False)      # B
        self.f2to4 = nn.Conv2d(4 * 8, hidden4, 1, bias=False)    # C
        self.img4 = nn.Conv2d(16, hidden4, 1, bias=False)        # D
        self.conv4 = nn.Conv2d(hidden4, hidden4, 3, padding=1)
        self.up42 = nn.Conv2d(hidden4, hidden2, 1)               # E (applied at stride 4)
        self.f2 = nn.Conv2d(8, hidden2, 1, bias=False)           # F
        self.img2 = nn.Conv2d(4, hidden2, 1, bias=False)         # G
        self.conv2 = nn.Conv2d(hidden2, hidden2, 3, padding=1)
        self.out = nn.Conv2d(hidden2, DIM, 1)                    # W
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, f2: torch.Tensor, b2: torch.Tensor,
                feats: torch.Tensor, x_cells: torch.Tensor | None = None,
                f2_cells: torch.Tensor | None = None) -> torch.Tensor:
        """``x_cells`` = ``pixel_unshuffle(x, 4)`` and ``f2_cells`` = ``pixel_unshuffle(f2,
        2)`` where the caller has them already (``phase_activations``)."""
        fn = F.normalize(feats, dim=1)
        f2_cells = F.pixel_unshuffle(f2, 2) if f2_cells is None else f2_cells
        x_cells = F.pixel_unshuffle(x, 4) if x_cells is None else x_cells
        h4 = (_up(self.feat4(fn), 2) + self.block4(b2)
              + self.f2to4(f2_cells) + self.img4(x_cells))
        h4 = F.relu(self.conv4(F.relu(h4)))
        h2 = _up(self.up42(h4), 2) + self.f2(f2) + self.img2(F.pixel_unshuffle(x, 2))
        h2 = F.relu(self.conv2(F.relu(h2)))
        residual = self.out(h2)
        fused = fused_tail(fn, residual)
        return fused if fused is not None else F.normalize(_up(fn, 4) + residual, dim=1)


HEAD_KERNELS = 'nre_ros.models._head_kernels'


def fused_tail(fn: torch.Tensor, residual: torch.Tensor) -> torch.Tensor | None:
    """``normalize(up4(fn) + residual)`` in one compiled pass, float32 (1, C, 4h, 4w)
    channels-last, for the bf16 CPU runner's channels-last tensors (``fn`` (1, C, h, w),
    ``residual`` (1, C, 4h, 4w) bf16) at inference; None elsewhere (training, export, CUDA,
    float32, NCHW): the caller runs the torch ops. It replaces a bf16 upsampling, addition and
    normalization and the runner's float32 re-normalization (docs/decisions.md)."""
    cl = torch.channels_last
    if (residual.dtype != torch.bfloat16 or residual.shape[0] != 1
            or not residual.is_contiguous(memory_format=cl)
            or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()):
        return None
    kernels = compiled.usable(HEAD_KERNELS, fn, residual)
    if kernels is None:
        return None
    base = fn[0].float().permute(1, 2, 0).contiguous()                 # (h, w, C)
    out = torch.empty(residual.shape, dtype=torch.float32, memory_format=cl)
    bits = residual[0].permute(1, 2, 0).view(torch.int16).numpy().view(np.uint16)
    compiled.threads(out.numel())
    kernels._upsampled_base_plus_residual(base.numpy(), bits, out[0].permute(1, 2, 0).numpy())
    return out


def _head(head: FineHead, a: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head on ``pass_activations``' outputs."""
    return head(a['x'], a['f2'], a['b2'], a['feats'], a.get('x_cells'), a.get('f2_cells'))


def save_head(head: FineHead, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the head as safetensors; ``metadata`` (JSON-able provenance) beside its config."""
    return save_trained_module(head, head.config, path, NAME, metadata,
                               extra={'license': 'Apache-2.0 (nre_ros)'})


def load_head(path: str | Path) -> FineHead:
    """FineHead from a safetensors file written by ``save_head`` (no pickle)."""
    return load_trained_module(path, FineHead, NAME)


class XFeatHeadFineNet(nn.Module):
    """(1, 3, H, W) in [0, 1] (multiples of 32) -> L2-normalized (1, 64, H/2, W/2): XFeat's
    coarse pass (without its keypoint head) and the fine head on its activations."""

    def __init__(self, coarse_net: XFeatCoarseNet, head: FineHead) -> None:
        super().__init__()
        self.coarse_net = coarse_net
        self.head = head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        a = pass_activations(self.coarse_net, image, keypoints=False)
        return _head(self.head, a)


class XFeatHeadJointNet(nn.Module):
    """(1, 3, H, W) in [0, 1] (multiples of 32) -> both descriptor levels from one XFeat pass:
    the coarse level's L2-normalized (1, 64, H/8, W/8) descriptors (as ``XFeatCoarseNet``) and
    the head's L2-normalized (1, 64, H/2, W/2) fine descriptors. No keypoint scores: queries
    do not read them (map building runs the 'coarse' network, which has them)."""

    descriptor_outputs = (0, 1)       # outputs a runner re-normalizes after a bf16 pass
    output_names = ('descriptors', 'fine_descriptors')

    def __init__(self, coarse_net: XFeatCoarseNet, head: FineHead) -> None:
        super().__init__()
        self.coarse_net = coarse_net
        self.head = head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = pass_activations(self.coarse_net, image, keypoints=False)
        return F.normalize(a['feats'], dim=1), _head(self.head, a)


class XFeatMultiScaleHead(XFeatMultiScale):
    """Model 'xfeat-ms-head': XFeat coarse (/8, 64-d, as 'xfeat-ms') + the trained fine head
    on the same pass's activations (/2, 64-d). ``extract_joint`` runs XFeat once for both
    levels (the 'joint' network of ``networks()``, which backends run the same way:
    ``shares_pass``), without keypoint scores; ``extract`` with the fine level runs the
    'coarse' network (scores) and the 'fine' one (which reruns the coarse pass itself).

    Args:
        device: torch device.
        pretrained: False gives a seeded random-init head on a random XFeat (controls).
        weights: head file (default WEIGHTS_FILE).
        with_fine: as in XFeatMultiScale.
    """

    name = NAME
    shares_pass = True     # extract_joint costs one pass + the head, not two passes

    def __init__(self, device: str | torch.device = 'cpu', pretrained: bool = True,
                 weights: str | Path | None = None, with_fine: bool = True) -> None:
        super().__init__(device, pretrained, with_fine=with_fine)
        path = Path(weights) if weights else WEIGHTS_FILE
        if pretrained:
            head = load_head(path)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                head = FineHead(zero_init=False)
        self.head = head.to(self.device).eval()
        self.fine_net = XFeatHeadFineNet(self.coarse_net, self.head).eval()
        self.joint_net = XFeatHeadJointNet(self.coarse_net, self.head).eval()
        sha = xfeat_with_file_sha256(path) if pretrained else 'random-init-seed-0'
        self.spec = ModelSpec(
            name=NAME, coarse_stride=STRIDE, coarse_dim=DIM, fine_stride=FINE_STRIDE,
            fine_dim=DIM, inv_temperature=INV_TEMPERATURE,
            fine_inv_temperature=FINE_INV_TEMPERATURE, input_normalization=NORMALIZATION,
            weights_sha256=sha)

    def networks(self) -> dict[str, nn.Module]:
        """'coarse', 'fine' (coarse pass + head) and 'joint' (both levels from one pass)."""
        return {**super().networks(), 'joint': self.joint_net}

    @torch.inference_mode()
    def extract_joint(self, image: np.ndarray) -> DenseFeatures:
        """(H, W, 3) uint8 RGB -> both descriptor levels from one XFeat pass (the 'joint'
        network), without keypoint scores (what a query needs). ``extract`` with the fine
        level runs the 'coarse' and 'fine' networks instead, for the scores a map needs."""
        image = check_image(image)
        H, W = image.shape[:2]
        desc, fine_map = self.joint_net(pad_image(image, self.pad_multiple, self.device))
        return DenseFeatures(
            coarse=desc[0, :, :H // STRIDE, :W // STRIDE].contiguous(),
            fine=fine_map[0, :, :H // FINE_STRIDE, :W // FINE_STRIDE].contiguous(),
            keypoint_scores=None, image_size=(W, H))
