"""One extraction front-end over interchangeable network runners (torch, ONNX Runtime, TensorRT).

A *runner* executes a model's level networks on a padded (1, 3, H, W) float image in [0, 1]
and returns torch tensors; ``BackendModel`` does the rest (validation, padding, cropping to
the grid of the unpadded image), so every backend yields the same ``DenseFeatures``.
"""
from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch

from nre_ros.models.base import DenseFeatures, ModelSpec, check_image
from nre_ros.models.xfeat import pad_image

logger = logging.getLogger(__name__)


def padded_size(size: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """Each side of ``size`` rounded up to a multiple of ``multiple``."""
    return tuple(-(-s // multiple) * multiple for s in size)


class Runner(Protocol):
    """Runs one level network of a model: 'coarse' (descriptors, scores), 'fine'
    (descriptors) or, where the model has it, 'joint' (descriptors, fine descriptors from one
    pass)."""

    name: str
    device: torch.device
    input_dtype: torch.dtype

    def levels(self) -> tuple[str, ...]:
        ...

    def __call__(self, level: str, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1, 3, H, W) padded image -> the level's outputs, each (1, C, h, w), float32."""
        ...


class BackendModel:
    """A FeatureModel whose networks run on ``runner``.

    Args:
        spec: the model's spec (identical for every backend of the same weights).
        runner: executes the level networks.
        pad_multiple: pad the image right/bottom (replicate) to this multiple.
        with_fine: compute the fine level by default.
    """

    def __init__(self, spec: ModelSpec, runner: Runner, pad_multiple: int,
                 with_fine: bool = True) -> None:
        self.spec = spec
        self.runner = runner
        self.device = runner.device
        self.pad_multiple = pad_multiple
        self.with_fine = with_fine and spec.fine_stride > 0 and 'fine' in runner.levels()

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def shares_pass(self) -> bool:
        """Whether both levels come out of one pass (a 'joint' network): then
        ``extract_joint`` costs little more than the coarse level alone."""
        return 'joint' in self.runner.levels()

    def extract(self, image: np.ndarray, fine: bool | None = None) -> DenseFeatures:
        """(H, W, 3) uint8 RGB -> DenseFeatures (float32 on ``self.device``), keypoint scores
        included."""
        image = check_image(image)
        H, W = image.shape[:2]
        x = pad_image(image, self.pad_multiple, self.device, self.runner.input_dtype)
        with_fine = (self.with_fine if fine is None else fine) and self.spec.fine_stride > 0
        with torch.inference_mode():
            out = self.runner('coarse', x)
            s = self.spec.coarse_stride
            coarse = cropped(out[0], H // s, W // s)
            scores = out[1][0, 0, :H, :W].float().contiguous() if len(out) > 1 else None
            fine_map = self._fine(x, H, W) if with_fine else None
        return DenseFeatures(coarse=coarse, fine=fine_map, keypoint_scores=scores,
                             image_size=(W, H))

    def extract_joint(self, image: np.ndarray) -> DenseFeatures:
        """(H, W, 3) uint8 RGB -> both descriptor levels from the 'joint' network's one pass,
        without keypoint scores (a query's features; ``shares_pass`` models only)."""
        if not self.shares_pass:
            raise ValueError(f'model {self.spec.name} has no joint network on this backend')
        image = check_image(image)
        H, W = image.shape[:2]
        x = pad_image(image, self.pad_multiple, self.device, self.runner.input_dtype)
        with torch.inference_mode():
            desc, fine_desc = self.runner('joint', x)
            s, sf = self.spec.coarse_stride, self.spec.fine_stride
            return DenseFeatures(coarse=cropped(desc, H // s, W // s),
                                 fine=cropped(fine_desc, H // sf, W // sf),
                                 keypoint_scores=None, image_size=(W, H))

    def extract_fine(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (C, H/fs, W/fs) fine descriptors only (no coarse pass)."""
        sf = self.spec.fine_stride
        if sf <= 0 or 'fine' not in self.runner.levels():
            raise ValueError(f'model {self.spec.name} has no fine level on this backend')
        image = check_image(image)
        H, W = image.shape[:2]
        x = pad_image(image, self.pad_multiple, self.device, self.runner.input_dtype)
        with torch.inference_mode():
            return self._fine(x, H, W)

    def _fine(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Padded image -> (C, H/fs, W/fs) float32 fine map of the H x W image."""
        sf = self.spec.fine_stride
        return cropped(self.runner('fine', x)[0], H // sf, W // sf)


def cropped(desc: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(1, C, H', W') descriptors -> the float32 (C, h, w) top-left crop, dense in its layout:
    channels-last outputs stay a (C, h, w) view of (h, w, C) rows (no transpose), others are
    made contiguous."""
    crop = desc[0, :, :h, :w].float()
    if desc.shape[1] > 1 and desc.is_contiguous(memory_format=torch.channels_last):
        return crop.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return crop.contiguous()
