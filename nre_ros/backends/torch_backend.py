"""torch runners: CPU (float32 or bfloat16, inference_mode, configured thread count) and CUDA
(fp16)."""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from nre_ros.errors import BackendUnavailable
from nre_ros.threads import apply_threads

logger = logging.getLogger(__name__)


class TorchRunner:
    """Runs a model's level networks with torch.

    Args:
        networks: {'coarse': net, 'fine': net} as returned by ``model.networks()``.
        device: 'cpu' or 'cuda[:i]'.
        fp16: run in half precision (CUDA only; outputs are returned as float32).
        threads: torch intra-op threads (CPU): a count or 'auto' (nre_ros.threads); None
            leaves torch's setting.
        channels_last: levels run in NHWC memory format (the fine level only by default:
            oneDNN's 1-channel first convolution is slow in NCHW, while XFeat coarse is slower
            in NHWC; docs/decisions.md). With bf16 every level runs in NHWC.
        bf16: run under ``torch.autocast(dtype=torch.bfloat16)`` (convolutions and matrix
            products in bf16, reductions such as the instance norm in fp32); the descriptor
            outputs (the first, or those a network lists in ``descriptor_outputs``) are
            re-normalized in float32 and stay channels_last (``normalized_descriptors``).
    """

    def __init__(self, networks: dict[str, nn.Module], device: str | torch.device = 'cpu',
                 fp16: bool = False, threads: int | str | None = 'auto',
                 channels_last: tuple[str, ...] = ('fine',), bf16: bool = False) -> None:
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise BackendUnavailable('torch CUDA backend asked for, but torch.cuda.is_available()'
                                     ' is False (CPU build of torch or no GPU); use backend=torch')
        if fp16 and self.device.type != 'cuda':
            raise BackendUnavailable('fp16 needs CUDA; on CPU use fp16=False')
        if fp16 and bf16:
            raise BackendUnavailable('fp16 and bf16 are exclusive')
        if threads and self.device.type == 'cpu':
            apply_threads(threads)
        self.fp16 = fp16
        self.bf16 = bf16
        self.input_dtype = torch.float16 if fp16 else torch.float32
        # private copies per level: the caller's model stays untouched by the dtype and
        # memory-format changes below, and levels sharing weights (XFeat) get their own layout
        networks = {k: copy.deepcopy(net) for k, net in networks.items()}
        self.networks = {k: net.to(self.device).eval() for k, net in networks.items()}
        if fp16:
            # keep normalization statistics in fp32 would need per-layer casts; XFeat's
            # instance norm is stable in fp16 on [0, 1] inputs (checked against fp32 in tests)
            self.networks = {k: net.half() for k, net in self.networks.items()}
        if bf16:
            channels_last = tuple(self.networks)
        self.memory_formats = {k: torch.channels_last if k in channels_last
                               else torch.contiguous_format for k in self.networks}
        self.networks = {k: net.to(memory_format=self.memory_formats[k])
                         for k, net in self.networks.items()}
        self.name = f'torch-{self.device.type}' + ('-fp16' if fp16 else '-bf16' if bf16 else '')

    def levels(self) -> tuple[str, ...]:
        return tuple(self.networks)

    @torch.inference_mode()
    def __call__(self, level: str, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.to(self.device, self.input_dtype).contiguous(
            memory_format=self.memory_formats[level])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.networks[level](x)
        out = out if isinstance(out, tuple) else (out,)
        if self.bf16:     # descriptors re-normalised in float32, in the network's layout
            desc = getattr(self.networks[level], 'descriptor_outputs', (0,))
            return tuple(normalized_descriptors(o) if i in desc else o.float().contiguous()
                         for i, o in enumerate(out))
        return tuple(o.float().contiguous() for o in out)


def normalized_descriptors(desc: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) descriptors, any dtype -> float32 L2-normalised over C, in the memory format
    they came in: a channels_last tensor stays channels_last (each cell's C values one
    contiguous row), so no transpose is made (why: docs/decisions.md, "Descriptor layout");
    consumers read either layout (``nre_ros.models.base.DenseFeatures``). A float32 output of
    a bf16 pass was normalized in float32 by the network itself (``xfeat_fine_head.
    fused_tail``) and is returned as it is."""
    if desc.dtype == torch.float32:
        return desc
    x = desc.float()
    return x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12))
