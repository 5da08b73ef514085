"""Feature-model interface shared by the pipeline, map builders, backends and training.

A feature model turns an RGB image into dense descriptor maps: a coarse map (stride 8-16)
for global NRE loss maps and optionally a fine map (stride 1-2) for local windows.

Grid convention (nre_ros.camera): a stride-k map of an H x W image has H//k x W//k cells and
cell (i, j) is centred on pixel (k*j + (k-1)/2, k*i + (k-1)/2); use
``Camera.feature_grid(k)`` for its intrinsics. Descriptors are L2-normalized along C.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from nre_ros.errors import BackendUnavailable, InputError, MapFormatError


@dataclass(frozen=True)
class ModelSpec:
    """Everything that must match between a map and the model that queries it.

    Attributes:
        name: registry name, e.g. 'xfeat'.
        coarse_stride, coarse_dim: stride and channels of the coarse map.
        fine_stride, fine_dim: same for the fine map (0 when the model has no fine level).
        inv_temperature: inverse softmax temperature for the (L2-normalized) descriptors.
        fine_inv_temperature: same for the fine descriptors.
        input_normalization: how the network expects its input, for humans and exporters.
        weights_sha256: hash of the weight file(s), so a map never meets other weights.
    """

    name: str
    coarse_stride: int
    coarse_dim: int
    fine_stride: int
    fine_dim: int
    inv_temperature: float
    fine_inv_temperature: float
    input_normalization: str
    weights_sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> 'ModelSpec':
        return cls(**data)

    def same_coarse_level(self, other: 'ModelSpec') -> bool:
        """Whether ``other``'s coarse descriptors can be matched against this model's."""
        return all(getattr(self, k) == getattr(other, k) for k in
                   ('coarse_stride', 'coarse_dim', 'inv_temperature', 'input_normalization'))

    def mismatch(self, other: 'ModelSpec') -> str | None:
        """Human-readable difference between two specs, None when they are compatible."""
        a, b = asdict(self), asdict(other)
        diffs = [f'{k}: {a[k]!r} != {b[k]!r}' for k in a if a[k] != b[k]]
        return '; '.join(diffs) or None


@dataclass(frozen=True)
class DenseFeatures:
    """Dense features of one image (all tensors on the model's device, float32).

    Descriptor maps are (C, h, w) tensors in either memory layout: contiguous, or a view of
    contiguous (h, w, C) rows (channels-last networks; ``permute(1, 2, 0).is_contiguous()``).

    Attributes:
        coarse: (C, H//s, W//s) L2-normalized descriptors, s = spec.coarse_stride.
        fine: (Cf, H//sf, W//sf) L2-normalized fine descriptors, or None.
        keypoint_scores: (H, W) detector score map in [0, 1] at image resolution, or None.
        image_size: (W, H) of the image the features were computed on.
        fine_tracking: (Ct, H//st, W//st) the tracking level's fine descriptors
            (``WithTrackingLevel``, map building only), or None.
    """

    coarse: torch.Tensor
    fine: torch.Tensor | None
    keypoint_scores: torch.Tensor | None
    image_size: tuple[int, int]
    fine_tracking: torch.Tensor | None = None


class FeatureModel(Protocol):
    """What every model/backend exposes."""

    spec: ModelSpec
    device: torch.device

    def extract(self, image: np.ndarray) -> DenseFeatures:
        """(H, W, 3) uint8 RGB image -> DenseFeatures."""
        ...


def check_image(image: np.ndarray, min_size: int = 32) -> np.ndarray:
    """Validate an (H, W, 3) uint8 RGB (or (H, W) gray) image; InputError otherwise."""
    if not isinstance(image, np.ndarray):
        raise InputError(f'image must be a numpy array, got {type(image).__name__}')
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f'image must be HxWx3 RGB or HxW gray, got shape {image.shape}')
    if image.shape[0] < min_size or image.shape[1] < min_size:
        raise InputError(f'image {image.shape[1]}x{image.shape[0]} is smaller than {min_size} px')
    if image.dtype != np.uint8:
        raise InputError(f'image must be uint8, got {image.dtype}')
    return image


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def save_trained_module(module: torch.nn.Module, config: dict, path: str | Path, model: str,
                        metadata: dict | None = None, extra: dict | None = None) -> Path:
    """Write a trained module's tensors as safetensors (no pickle) with the JSON ``config`` its
    constructor takes, the ``model`` name and ``metadata`` (JSON-able provenance); ``extra``:
    more string entries of the header."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {'model': model, 'config': json.dumps(config), **(extra or {}),
            'provenance': json.dumps(metadata or {}, sort_keys=True)}
    save_file(state, str(path), metadata=meta)
    return path


def load_trained_module(path: str | Path, build: Callable[..., torch.nn.Module], model: str,
                        missing_hint: str = '') -> torch.nn.Module:
    """The module ``build(**config)`` with the tensors of a file written by
    ``save_trained_module``, in eval mode. A missing file raises BackendUnavailable
    (``missing_hint`` appended), an unreadable or mismatching one MapFormatError."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as exc:  # pragma: no cover - safetensors is a core requirement
        raise BackendUnavailable('safetensors is not installed') from exc
    path = Path(path)
    if not path.exists():
        raise BackendUnavailable(f'{model} weights {path} not found{missing_hint}')
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        module = build(**json.loads(meta['config']))
        module.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
        raise MapFormatError(f'cannot read {model} weights {path}: {exc!r}') from exc
    return module.eval()
