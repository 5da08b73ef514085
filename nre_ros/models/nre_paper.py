"""The NRE paper's networks (Germain et al. CVPR 2021, App. D.2) in plain torch (no torchvision).

Inception-v3 blocks (Szegedy et al. 2016), basic conv = conv (no bias) -> BN (eps 1e-3) -> ReLU,
head = 1x1 conv d->d (no bias) + BN, no ReLU, raw (not L2-normalized) descriptors.

- coarse: Inception-v3 trunk to a modified Mixed_7a (both strided convs stride 1, pool branch
  replaced by identity): 320 + 192 + 768 = 1280 channels at stride 16.
- fine: Inception-v3 start without max-pools, Conv2d_3b as 3x3, truncated at Mixed_5d:
  288 channels at stride 2.

Deviation, on purpose: every 3x3 convolution is padded ("same"), so a stride-s output of an
input whose sides are multiples of s is exactly H/s x W/s and cell i is centred on pixel
s*i + (s-1)/2 (nre_ros.camera). The official code's unpadded Conv2d_2a/4a would shift the grid.
No trained weights are available (germain-hug/NRE's are not on any registry): the training
package trains these, ``NrePaperModel(weights=...)`` loads the result.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nre_ros.errors import MapFormatError
from nre_ros.models.base import DenseFeatures, ModelSpec, check_image, file_sha256

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COARSE_STRIDE, COARSE_DIM = 16, 1280
FINE_STRIDE, FINE_DIM = 2, 288


class BasicConv(nn.Sequential):
    """conv (no bias) -> BN (eps 1e-3) -> ReLU; padding 'same' for odd kernels by default."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] | None = None) -> None:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        pad = (k[0] // 2, k[1] // 2) if padding is None else padding
        super().__init__(nn.Conv2d(cin, cout, k, stride, pad, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU(inplace=True))


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 64 + 64 + 96 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(cin, 64, 1)
        self.branch5x5 = nn.Sequential(BasicConv(cin, 48, 1), BasicConv(48, 64, 5))
        self.branch3x3dbl = nn.Sequential(BasicConv(cin, 64, 1), BasicConv(64, 96, 3),
                                          BasicConv(96, 96, 3))
        self.branch_pool = BasicConv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool2d(x, 3, 1, 1)
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x),
                          self.branch_pool(pool)], 1)


class InceptionB(nn.Module):
    """Mixed_6a (stride 2): 384 + 96 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2)
        self.branch3x3dbl = nn.Sequential(BasicConv(cin, 64, 1), BasicConv(64, 96, 3),
                                          BasicConv(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl(x), F.max_pool2d(x, 3, 2, 1)], 1)


class InceptionC(nn.Module):
    """Mixed_6b-6e: 4 x 192 = 768 channels, factorized 7x7 convolutions."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(cin, 192, 1)
        self.branch7x7 = nn.Sequential(BasicConv(cin, c7, 1), BasicConv(c7, c7, (1, 7)),
                                       BasicConv(c7, 192, (7, 1)))
        self.branch7x7dbl = nn.Sequential(
            BasicConv(cin, c7, 1), BasicConv(c7, c7, (7, 1)), BasicConv(c7, c7, (1, 7)),
            BasicConv(c7, c7, (7, 1)), BasicConv(c7, 192, (1, 7)))
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool2d(x, 3, 1, 1)
        return torch.cat([self.branch1x1(x), self.branch7x7(x), self.branch7x7dbl(x),
                          self.branch_pool(pool)], 1)


class InceptionD(nn.Module):
    """Mixed_7a as NRE modifies it: convs stride 1 / pad 1, pool branch = identity:
    320 + 192 + cin channels at the input's stride."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = nn.Sequential(BasicConv(cin, 192, 1), BasicConv(192, 320, 3))
        self.branch7x7x3 = nn.Sequential(
            BasicConv(cin, 192, 1), BasicConv(192, 192, (1, 7)), BasicConv(192, 192, (7, 1)),
            BasicConv(192, 192, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch7x7x3(x), x], 1)


class DescriptorHead(nn.Sequential):
    """1x1 conv d->d (no bias) + BN; no ReLU, no normalization."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim, eps=1e-3))


class ImageNetNormalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NreCoarseNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1], H and W multiples of 16 -> raw (B, 1280, H/16, W/16)."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (InceptionA(192, 32), InceptionA(256, 64),
                                                       InceptionA(288, 64))
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.head = DescriptorHead(COARSE_DIM)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(self.normalize(image))))
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        return self.head(self.Mixed_7a(x))


class NreFineNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1], H and W even -> raw (B, 288, H/2, W/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3)
        self.Conv2d_3b_3x3 = BasicConv(64, 80, 3)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (InceptionA(192, 32), InceptionA(256, 64),
                                                       InceptionA(288, 64))
        self.head = DescriptorHead(FINE_DIM)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(self.normalize(image))))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_3x3(x))
        return self.head(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))


class _Normalized(nn.Module):
    """Wraps a raw-descriptor net with L2 normalization (the DenseFeatures contract)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(image), dim=1)


class NrePaperModel:
    """Model 'nre-paper': NreCoarseNet + NreFineNet, random init or trained weights.

    The trained nets produce raw descriptors whose dot products are the logits (temperature 1);
    DenseFeatures carry them L2-normalized, and ``spec.inv_temperature`` = 1 records that the
    raw scale is not kept (a trained checkpoint should carry its calibrated temperature).

    Args:
        device: torch device.
        weights: a ``.safetensors`` or torch state-dict file with ``coarse.*`` and ``fine.*``
            keys (as written by the training package); None = seeded random init.
    """

    name = 'nre-paper'
    pad_multiple = COARSE_STRIDE

    def __init__(self, device: str | torch.device = 'cpu', weights: str | Path | None = None,
                 with_fine: bool = True) -> None:
        self.device = torch.device(device)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.coarse_raw, self.fine_raw = NreCoarseNet(), NreFineNet()
        if weights is not None:
            self._load(Path(weights))
        self.coarse_net = _Normalized(self.coarse_raw).eval().to(self.device)
        self.fine_net = _Normalized(self.fine_raw).eval().to(self.device)
        self.with_fine = with_fine
        self.spec = ModelSpec(
            name=self.name, coarse_stride=COARSE_STRIDE, coarse_dim=COARSE_DIM,
            fine_stride=FINE_STRIDE, fine_dim=FINE_DIM, inv_temperature=1.0,
            fine_inv_temperature=1.0,
            input_normalization='RGB / 255, ImageNet mean/std (in network), padded to 16',
            weights_sha256=file_sha256(weights) if weights else 'random-init-seed-0')

    def _load(self, path: Path) -> None:
        try:
            if path.suffix == '.safetensors':
                from safetensors.torch import load_file
                state = load_file(str(path))
            else:
                state = torch.load(str(path), map_location='cpu', weights_only=True)
            for prefix, net in (('coarse.', self.coarse_raw), ('fine.', self.fine_raw)):
                net.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                     if k.startswith(prefix)})
        except (OSError, RuntimeError, KeyError) as exc:
            raise MapFormatError(f'cannot load NRE weights {path}: {exc}') from exc

    def networks(self) -> dict[str, nn.Module]:
        return {'coarse': self.coarse_net, 'fine': self.fine_net}

    @torch.inference_mode()
    def extract(self, image: np.ndarray, fine: bool | None = None) -> DenseFeatures:
        from nre_ros.models.xfeat import pad_image
        image = check_image(image)
        H, W = image.shape[:2]
        x = pad_image(image, self.pad_multiple, self.device)
        coarse = self.coarse_net(x)[0, :, :H // COARSE_STRIDE, :W // COARSE_STRIDE]
        fine_map = None
        if self.with_fine if fine is None else fine:
            fine_map = self.fine_net(x)[0, :, :H // FINE_STRIDE, :W // FINE_STRIDE].contiguous()
        return DenseFeatures(coarse=coarse.contiguous(), fine=fine_map, keypoint_scores=None,
                             image_size=(W, H))
