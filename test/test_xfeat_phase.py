"""XFeat's first block in phase form (nre_ros.models.xfeat_phase) equals the original layers on
the upsampled image: the fine descriptors of XFeatFineNet with and without it, on real images."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nre_ros.models.xfeat import (PAD_MULTIPLE, XFeatCoarseNet, XFeatFineNet, XFeatMultiScaleS3, load_xfeat_net,
                                  pad_image, xfeat_tail)
from nre_ros.models import xfeat_phase
from nre_ros.models.xfeat_phase import FoldedTail, PhaseBlock1

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


@pytest.mark.parametrize('fused', [True, False])
def test_coarse_phase_form_equals_the_original_network(xfeat, images, fused, monkeypatch):
    """The coarse net with its first block on 4 x 4 cells and every BatchNorm folded (keypoint
    head included) vs XFeat's own layers, float32: descriptors and keypoint scores."""
    monkeypatch.setattr(xfeat_phase, 'USE_FUSED', fused)
    original = XFeatCoarseNet(xfeat, phase=False).eval()
    phase = XFeatCoarseNet(xfeat, phase=True).eval()
    assert original.phase_block1 is None and not original.uses_phase_form(torch.zeros(1))
    for name, image in images.items():
        x = pad_image(image, PAD_MULTIPLE, torch.device('cpu'))
        with torch.inference_mode():
            (a, sa), (b, sb) = original(x), phase(x)
        diff, score_diff = (a - b).abs().max().item(), (sa - sb).abs().max().item()
        print(f'coarse fused={fused} {name}: max|phase - original| descriptors {diff:.1e}, '
              f'scores {score_diff:.1e}')
        assert a.shape == b.shape and diff < EXACT_ATOL and score_diff < 1e-5


def test_mean_square_reads_nchw_and_channels_last_alike():
    """The phases' mean square (a dot product over the values in memory order) equals the
    mean of the squares in either memory format, also for a strided view."""
    x = torch.randn(1, 16, 30, 40, generator=torch.Generator().manual_seed(3))
    expected = (x.double() ** 2).mean().item()
    for t in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, ::2]):
        got = xfeat_phase._mean_square(t)
        assert got.shape == (1, 1, 1, 1)
        assert got.item() == pytest.approx((t.double() ** 2).mean().item(), rel=1e-6)
    assert xfeat_phase._mean_square(x).item() == pytest.approx(expected, rel=1e-6)


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


@pytest.mark.parametrize('fused', [True, False])
def test_folded_tail_equals_the_original_layers(xfeat, images, fused, monkeypatch):
    """block2 .. block_fusion with the BatchNorms folded (FoldedTail) vs XFeat's own layers in
    float32 on the block2 input of a TUM frame (640x480, x4): the L2-normalized features within
    1e-5, the raw ones no farther from a float64 run of the original layers than they are."""
    monkeypatch.setattr(xfeat_phase, 'USE_FUSED', fused)
    x = pad_image(images['640x480'], PAD_MULTIPLE, torch.device('cpu'))
    with torch.inference_mode():
        block2_input = PhaseBlock1(xfeat, 4)(x.mean(dim=1, keepdim=True))
        expected = xfeat_tail(xfeat, block2_input)
        got = xfeat_tail(FoldedTail(xfeat), block2_input)
        exact = xfeat_tail(copy.deepcopy(xfeat).double(), block2_input.double())
    assert got.shape == expected.shape == (1, 64, 240, 320)
    unit = (F.normalize(got, dim=1) - F.normalize(expected, dim=1)).abs().max().item()
    folded_err = (got.double() - exact).abs().max().item()
    original_err = (expected.double() - exact).abs().max().item()
    print(f'fused={fused}: max|folded - original| L2-normalized {unit:.1e}; raw features '
          f'(max {exact.abs().max():.1f}) vs float64: folded {folded_err:.1e}, '
          f'original {original_err:.1e}')
    assert unit <= 1e-5 and folded_err <= 1.5 * original_err


def test_phase_form_switches(xfeat, monkeypatch):
    """By default the phase form runs in bfloat16 (autocast) on a CPU and on other devices;
    float32 on a CPU keeps the original layers; NRE_ROS_FINE_PHASE=0/1 (coarse net:
    NRE_ROS_COARSE_PHASE) or ``phase`` force."""
    x = torch.rand(1, 3, 32, 32)
    net = XFeatFineNet(xfeat, 4)
    assert net.phase_block1 is not None and not net.uses_phase_form(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert net.uses_phase_form(x)
    assert XFeatFineNet(xfeat, 4, phase=True).uses_phase_form(x)
    monkeypatch.setenv('NRE_ROS_FINE_PHASE', '0')
    assert XFeatFineNet(xfeat, 4).phase_block1 is None
    monkeypatch.setenv('NRE_ROS_FINE_PHASE', '1')
    assert XFeatFineNet(xfeat, 4).uses_phase_form(x)
    assert XFeatFineNet(xfeat, XFeatMultiScaleS3.fine_upsample).phase_block1 is None   # 8/3
    coarse = XFeatCoarseNet(xfeat)
    assert not coarse.uses_phase_form(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert coarse.uses_phase_form(x)
    monkeypatch.setenv('NRE_ROS_COARSE_PHASE', '0')
    assert XFeatCoarseNet(xfeat).phase_block1 is None
    monkeypatch.setenv('NRE_ROS_COARSE_PHASE', '1')
    assert XFeatCoarseNet(xfeat).uses_phase_form(x)
    with pytest.raises(ValueError, match='1, 2 or 4'):
        PhaseBlock1(xfeat, 3)


def test_phase_form_exports_to_onnx_with_dynamic_sizes(xfeat, images, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    from nre_ros.backends.onnx_backend import export_level
    net = XFeatFineNet(xfeat, 4, phase=True).eval()
    path = export_level(net, tmp_path / 'fine.onnx', example_hw=(96, 128))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for name in ('640x480', '328x200'):
        x = pad_image(images[name], PAD_MULTIPLE, torch.device('cpu'))
        with torch.inference_mode():
            expected = XFeatFineNet(xfeat, 4, phase=False)(x).numpy()
        got = session.run(None, {'image': x.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        print(f'ONNX Runtime phase form {name}: max|ort - torch original| = {diff:.1e}')
        assert got.shape == expected.shape and diff < EXACT_ATOL


def test_bf16_weights_keep_the_filter_sums(xfeat):
    """In bfloat16 the folded weights are rounded so that each filter's sum (its response to a
    flat input) stays close; plain rounding moves the nearly zero sums of the first layer."""
    layer = PhaseBlock1(xfeat, 4).layers[0]
    w, q = layer.weight.double(), layer.weight_bf16.double()
    assert torch.equal(layer.weight_bf16.to(torch.bfloat16).float(), layer.weight_bf16)
    assert (q - w).abs().max() <= 2 ** -7 * w.abs().max()          # still a rounding of w
    plain = (w.to(torch.bfloat16).double() - w).flatten(1).sum(1).abs().max()
    kept = (q - w).flatten(1).sum(1).abs().max()
    assert kept < plain / 2
