"""XFeat's first block in phase form (nre_ros.models.xfeat_phase) equals the original layers on
the upsampled image: the fine descriptors of XFeatFineNet with and without it, on real images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nre_ros.models.xfeat import (PAD_MULTIPLE, XFeatFineNet, XFeatMultiScaleS3, load_xfeat_net,
                                  pad_image)
from nre_ros.models import xfeat_phase
from nre_ros.models.xfeat_phase import PhaseBlock1

torch.set_num_threads(2)
EXACT_ATOL = 1e-4     # float32, L2-normalized descriptors


@pytest.fixture(scope='module')
def xfeat():
    return load_xfeat_net(torch.device('cpu'))


@pytest.fixture(scope='module')
def images(fr1_rpy):
    rgb = fr1_rpy.load_rgb(fr1_rpy[10])
    return {'640x480': rgb,                                             # multiples of 32
            '328x200': np.ascontiguousarray(rgb[137:337, 61:389]),      # padded to 352x224
            '40x24': np.ascontiguousarray(rgb[300:324, 500:540])}       # mostly border


@pytest.mark.parametrize('upsample, fused', [(4, True), (2, True), (4, False)])
def test_phase_form_equals_the_original_network(xfeat, images, upsample, fused, monkeypatch):
    """fused: conv + ReLU as one oneDNN op (CPU inference), else F.conv2d + F.relu (as traced
    for ONNX)."""
    monkeypatch.setattr(xfeat_phase, 'USE_FUSED', fused)
    original = XFeatFineNet(xfeat, upsample, phase=False).eval()
    phase = XFeatFineNet(xfeat, upsample, phase=True).eval()
    assert original.phase_block1 is None and isinstance(phase.phase_block1, PhaseBlock1)
    for name, image in images.items():
        x = pad_image(image, PAD_MULTIPLE, torch.device('cpu'))
        with torch.inference_mode():
            assert xfeat_phase.fused_conv_relu(x) == (fused and xfeat_phase._HAS_FUSED)
            a, b = original(x), phase(x)
        diff = (a - b).abs().max().item()
        print(f'x{upsample} fused={fused} {name}: fine {tuple(a.shape[2:])} '
              f'max|phase - original| = {diff:.1e}')
        assert a.shape == b.shape and diff < EXACT_ATOL


def test_block2_input_equals_the_original_at_every_cell(xfeat, images):
    """block1(x) + skip1(x) itself on the smallest image, where most cells are near a border."""
    x = pad_image(images['40x24'], PAD_MULTIPLE, torch.device('cpu'))
    gray = x.mean(dim=1, keepdim=True)
    with torch.inference_mode():
        u = torch.nn.functional.interpolate(gray, scale_factor=4.0, mode='bilinear',
                                            align_corners=False)
        u = torch.nn.functional.instance_norm(u, eps=xfeat.norm.eps)
        expected = xfeat.block1(u) + xfeat.skip1(u)
        got = PhaseBlock1(xfeat, 4)(gray)
    assert got.shape == expected.shape == (1, 24, 32, 64)
    rel = (got - expected).abs().max() / expected.abs().max()
    print(f'block2 input 32x64 cells: max|phase - original| / max|original| = {rel:.1e}')
    assert rel < 1e-5


def test_phase_form_switches(xfeat, monkeypatch):
    assert XFeatFineNet(xfeat, 4).phase_block1 is not None                 # the default
    monkeypatch.setenv('NRE_ROS_FINE_PHASE', '0')
    assert XFeatFineNet(xfeat, 4).phase_block1 is None
    assert XFeatFineNet(xfeat, 4, phase=True).phase_block1 is not None
    monkeypatch.delenv('NRE_ROS_FINE_PHASE')
    assert XFeatFineNet(xfeat, XFeatMultiScaleS3.fine_upsample).phase_block1 is None   # 8/3
    with pytest.raises(ValueError, match='1, 2 or 4'):
        PhaseBlock1(xfeat, 3)
