"""The fine head on XFeat's coarse-pass activations (model 'xfeat-ms-head')."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nre_ros.errors import BackendUnavailable, MapFormatError
from nre_ros.models.xfeat import load_xfeat_net, xfeat_forward
from nre_ros.models.xfeat_fine_head import (WEIGHTS_FILE, FineHead, coarse_activations,
                                            load_head, save_head)


@pytest.fixture(scope='module')
def random_xfeat():
    return load_xfeat_net(torch.device('cpu'), pretrained=False)


@pytest.fixture(scope='module')
def activations(random_xfeat):
    with torch.inference_mode():
        return coarse_activations(random_xfeat, _image())


def test_coarse_activations_reproduce_xfeat_forward(random_xfeat, activations):
    with torch.inference_mode():
        feats, logits = xfeat_forward(random_xfeat, _image())
    assert torch.equal(activations['feats'], feats)
    assert torch.equal(activations['logits'], logits)
    assert activations['x'].shape == (1, 1, 64, 96)
    assert activations['f2'].shape == (1, 8, 32, 48)
    assert activations['b2'].shape == (1, 24, 16, 24)


def _image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(1, 3, 64, 96)


def _head_out(head: FineHead, a: dict) -> torch.Tensor:
    with torch.inference_mode():
        return head(a['x'], a['f2'], a['b2'], a['feats'])


def test_untrained_head_is_the_upsampled_coarse_level(activations):
    out = _head_out(FineHead(), activations)
    assert out.shape == (1, 64, 32, 48)
    up = F.interpolate(F.normalize(activations['feats'], dim=1), scale_factor=4.0,
                       mode='bilinear', align_corners=False)
    torch.testing.assert_close(out, F.normalize(up, dim=1))


def test_random_init_head_shape_and_unit_norm(activations):
    torch.manual_seed(1)
    out = _head_out(FineHead(zero_init=False), activations)
    assert out.shape == (1, 64, 32, 48)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1, 32, 48))
    up = F.interpolate(F.normalize(activations['feats'], dim=1), scale_factor=4.0,
                       mode='bilinear', align_corners=False)
    assert (out - F.normalize(up, dim=1)).abs().max() > 1e-3


def test_save_load_reproduces_the_head(tmp_path, activations):
    torch.manual_seed(2)
    head = FineHead(hidden4=16, hidden2=8, zero_init=False).eval()
    path = save_head(head, tmp_path / 'h.safetensors', {'steps': 3})
    loaded = load_head(path)
    assert loaded.config == {'hidden4': 16, 'hidden2': 8}
    assert torch.equal(_head_out(loaded, activations), _head_out(head, activations))
    with pytest.raises(BackendUnavailable):
        load_head(tmp_path / 'missing.safetensors')
    (tmp_path / 'bad.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(MapFormatError):
        load_head(tmp_path / 'bad.safetensors')
