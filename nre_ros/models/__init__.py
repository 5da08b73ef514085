"""Feature models: registry of named models returning DenseFeatures."""
from __future__ import annotations

import torch

from nre_ros.errors import ConfigError
from nre_ros.models.base import DenseFeatures, FeatureModel, ModelSpec

__all__ = ['DenseFeatures', 'FeatureModel', 'ModelSpec', 'load_model', 'MODEL_NAMES']

MODEL_NAMES = ('xfeat',)


def load_model(name: str = 'xfeat', device: str | torch.device = 'cpu') -> FeatureModel:
    """Load a named feature model with its shipped weights."""
    if name == 'xfeat':
        from nre_ros.models.xfeat import XFeatCoarse
        return XFeatCoarse(device)
    raise ConfigError(f'unknown model {name!r}; available: {MODEL_NAMES}')
