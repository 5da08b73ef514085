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


@pytest.fixture(scope='module')
def head_model():
    from nre_ros.models import load_model
    if not WEIGHTS_FILE.exists():
        pytest.skip(f'{WEIGHTS_FILE} not shipped')
    return load_model('xfeat-ms-head')


def test_registry_spec_and_one_pass_extract(head_model):
    from nre_ros.backends import BackendConfig, load_backend
    from nre_ros.models import MODEL_NAMES, load_model, unloadable_reason
    assert 'xfeat-ms-head' in MODEL_NAMES
    spec = head_model.spec
    assert (spec.name, spec.fine_stride, spec.fine_dim, spec.coarse_stride) == \
        ('xfeat-ms-head', 2, 64, 8)
    assert unloadable_reason(spec) is None
    image = np.random.default_rng(0).integers(0, 256, (96, 130, 3), dtype=np.uint8)
    full = head_model.extract(image)
    assert full.fine.shape == (64, 48, 65)
    torch.testing.assert_close(full.fine.norm(dim=0), torch.ones(48, 65))
    base = load_model('xfeat-ms').extract(image, fine=False)
    assert torch.equal(full.coarse, base.coarse)          # same coarse level as 'xfeat-ms'
    assert torch.equal(full.keypoint_scores, base.keypoint_scores)
    for m in (head_model, load_backend(BackendConfig(backend='torch'), model=head_model)):
        torch.testing.assert_close(m.extract_fine(image), full.fine)


def test_trained_head_localizes_better_than_untrained_on_a_warped_real_image(head_model,
                                                                              cabinet):
    """An exact homography of a held-out (never trained on) fr3 cabinet image: the fine-window
    argmax error (windows of +-8 cells around the truth shifted by up to 8 px) of the trained
    head beats the untrained head's (= the upsampled coarse level)."""
    import cv2

    from nre_ros.maps.features import select_keypoints
    from nre_ros.models.quality import argmax_errors, sample_descriptors
    from nre_ros.models.xfeat_fine_head import XFeatMultiScaleHead
    image = cabinet.load_rgb(cabinet.frames[0])
    H = np.array([[0.95, 0.08, 12.0], [-0.06, 0.97, 8.0], [2e-5, -3e-5, 1.0]])
    h, w = image.shape[:2]
    warped = cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR,
                                 borderValue=(128, 128, 128))
    untrained = XFeatMultiScaleHead()
    untrained.head.load_state_dict(FineHead(**untrained.head.config).state_dict())
    src = head_model.extract(image)
    uv, _ = select_keypoints(src.keypoint_scores, 400)
    p = np.c_[uv, np.ones(len(uv))] @ H.T
    uv_t = p[:, :2] / p[:, 2:]
    ok = (uv_t > 16).all(1) & (uv_t[:, 0] < w - 16) & (uv_t[:, 1] < h - 16)
    uv, uv_t = uv[ok], uv_t[ok]
    centre = uv_t + np.random.default_rng(0).uniform(-8, 8, uv_t.shape)
    medians = []
    for m in (head_model, untrained):
        d = sample_descriptors(m.extract(image).fine, uv, 2)
        e = argmax_errors(d, m.extract(warped).fine, 2, uv_t, centre, 8)
        medians.append(np.median(e))
    assert len(uv) > 100
    assert medians[0] < 0.8 * medians[1], medians


def test_phase_activations_are_the_original_layers_activations(random_xfeat, activations):
    """The joint pass's phase form (bf16 on a CPU, CUDA) computes the head's inputs as the
    original layers do (float32 here, so the difference is rounding only)."""
    from nre_ros.models.xfeat import XFeatCoarseNet
    from nre_ros.models.xfeat_fine_head import phase_activations
    net = XFeatCoarseNet(random_xfeat, phase=True)
    with torch.inference_mode():
        phase = phase_activations(net, _image())
    assert set(phase) == set(activations) | {'x_cells', 'f2_cells'}
    for key, value in activations.items():
        assert phase[key].shape == value.shape, key
        torch.testing.assert_close(phase[key], value, atol=1e-4, rtol=1e-4, msg=key)
    # the cell forms it passes on are exactly what the head would unshuffle itself
    assert torch.equal(phase['x_cells'], F.pixel_unshuffle(phase['x'], 4))
    assert torch.equal(phase['f2_cells'], F.pixel_unshuffle(phase['f2'], 2))


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_backend_joint_level_gives_both_levels_of_the_separate_networks(head_model, precision):
    """``extract_joint`` runs the one-pass 'joint' network: the same coarse level as the coarse
    network and the same fine level as the fine network (which reruns the coarse pass),
    unit-norm in float32 after a bf16 pass too, and no keypoint scores; ``extract`` with the
    fine level has the scores (the networks a map build needs)."""
    from nre_ros.backends import BackendConfig, load_backend
    from nre_ros.models import joint_features
    from nre_ros.precision import cpu_flags
    if precision == 'bf16' and not {'amx_bf16', 'avx512_bf16'} & set(cpu_flags()):
        pytest.skip('this CPU has no bf16 units')
    m = load_backend(BackendConfig(model='xfeat-ms-head', backend='torch', precision=precision),
                     model=head_model)
    assert m.shares_pass and 'joint' in m.runner.levels()
    image = np.random.default_rng(1).integers(0, 256, (96, 130, 3), dtype=np.uint8)
    joint = m.extract_joint(image)
    assert joint.keypoint_scores is None
    full = m.extract(image)
    coarse = m.extract(image, fine=False)
    assert coarse.fine is None and full.keypoint_scores is not None
    tol = {'fp32': 1e-5, 'bf16': 1e-6}[precision]     # bf16: the same ops in the same order
    torch.testing.assert_close(joint.coarse, coarse.coarse, atol=tol, rtol=tol)
    torch.testing.assert_close(full.keypoint_scores, coarse.keypoint_scores, atol=tol, rtol=tol)
    torch.testing.assert_close(joint.fine, m.extract_fine(image), atol=tol, rtol=tol)
    torch.testing.assert_close(full.fine, joint.fine, atol=tol, rtol=tol)
    torch.testing.assert_close(joint.fine.norm(dim=0), torch.ones(48, 65), atol=1e-5, rtol=0)
    torch.testing.assert_close(joint_features(m, image).fine, joint.fine, atol=0, rtol=0)
    # the torch model itself: the same one-pass levels, without scores
    plain = head_model.extract_joint(image)
    assert plain.keypoint_scores is None and plain.fine.shape == joint.fine.shape


def test_joint_features_of_a_backend_model_without_a_joint_network_runs_both_networks():
    """A backend model whose levels do not share a pass (xfeat-ms: the fine level is its own
    network on the x4 image) still has ``extract_joint``, which refuses; ``joint_features``
    gives it both levels from ``extract(fine=True)`` instead."""
    from nre_ros.backends import BackendConfig, load_backend
    from nre_ros.models import joint_features
    m = load_backend(BackendConfig(model='xfeat-ms', backend='torch', precision='fp32'))
    assert not m.shares_pass
    image = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match='no joint network'):
        m.extract_joint(image)
    both, full = joint_features(m, image), m.extract(image, fine=True)
    assert both.fine is not None and both.fine.shape == full.fine.shape
    torch.testing.assert_close(both.coarse, full.coarse, atol=0, rtol=0)
    torch.testing.assert_close(both.fine, full.fine, atol=0, rtol=0)


def test_tracking_level_needs_the_same_coarse_level_and_a_fine_level(head_model):
    """WithTrackingLevel pairs a map's model with a model that shares its coarse level."""
    from nre_ros.errors import ConfigError
    from nre_ros.models import WithTrackingLevel, load_model
    coarse_only = load_model('xfeat', 'cpu')
    with pytest.raises(ConfigError, match='tracking level'):
        WithTrackingLevel(load_model('xfeat-ms', 'cpu'), coarse_only)
    both = WithTrackingLevel(load_model('xfeat-ms', 'cpu'), head_model)
    assert both.spec.name == 'xfeat-ms' and both.tracking_spec == head_model.spec


def test_fused_tail_is_the_torch_tail_in_float32():
    """The bf16 runner's compiled tail: normalize(up4(fn) + residual) from the bf16 tensors, in
    float32, equal to torch's ops on the same values in float64; the torch ops elsewhere."""
    from nre_ros import compiled
    from nre_ros.models.xfeat_fine_head import fused_tail
    if not compiled.available():
        pytest.skip('numba is not available: the torch tail runs')
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    fn = F.normalize(torch.randn(1, 64, 7, 9, generator=g), dim=1).bfloat16()
    residual = (0.3 * torch.randn(1, 64, 28, 36, generator=g)).bfloat16()
    fn, residual = fn.contiguous(memory_format=cl), residual.contiguous(memory_format=cl)
    with torch.inference_mode():
        got = fused_tail(fn, residual)
        ref = F.normalize(F.interpolate(fn.double(), scale_factor=4.0, mode='bilinear',
                                        align_corners=False) + residual.double(), dim=1)
        assert got is not None and got.dtype == torch.float32 and got.shape == ref.shape
        assert got.is_contiguous(memory_format=cl)
        torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=0)
        assert fused_tail(fn.float(), residual.float()) is None              # float32
        assert fused_tail(fn, residual.contiguous()) is None                  # NCHW
    assert fused_tail(fn, residual.requires_grad_()) is None                  # training


def test_onnx_joint_level_names_its_two_outputs(head_model, tmp_path):
    """The exported 'joint' graph has the descriptors and the fine descriptors (no scores), as
    the torch network computes them."""
    import onnx
    from nre_ros.backends import BackendConfig, load_backend
    m = load_backend(BackendConfig(model='xfeat-ms-head', backend='onnxruntime',
                                   precision='fp32', cache_dir=str(tmp_path)), model=head_model)
    graph = next(tmp_path.rglob('xfeat-ms-head-joint.onnx'))
    assert [o.name for o in onnx.load(str(graph)).graph.output] == ['descriptors',
                                                                     'fine_descriptors']
    image = np.random.default_rng(2).integers(0, 256, (96, 130, 3), dtype=np.uint8)
    a, b = m.extract_joint(image), head_model.extract_joint(image)
    assert a.keypoint_scores is None
    torch.testing.assert_close(a.coarse, b.coarse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.fine, b.fine, atol=1e-5, rtol=1e-5)
