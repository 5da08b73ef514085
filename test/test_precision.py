"""Network precision: ``auto`` resolved from (injected) CPU flags, bf16 descriptors against fp32
on real images, and the backend each precision selects."""
from __future__ import annotations

import pytest
import torch

from nre_ros.backends import BackendConfig, load_backend
from nre_ros.errors import ConfigError
from nre_ros.maps.triangulate import select_keypoints
from nre_ros.models import DEFAULT_MODEL, load_model
from nre_ros.pipeline import PipelineConfig, coarse_matmul_dtype, resolve_runtime
from nre_ros.precision import bf16_unit, cpu_flags, describe, resolve_precision

AMX = {'fpu', 'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16', 'amx_int8'}
AVX512_BF16 = {'fpu', 'avx512f', 'avx512_bf16'}
PLAIN_X86 = {'fpu', 'sse4_2', 'avx2', 'avx512f'}
NO_BF16 = 'this CPU has no bf16 unit (amx_bf16 / avx512_bf16): bf16 would be emulated'

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm
CPU implementer\t: 0x41
"""


def test_cpu_flags_read_the_first_x86_flags_line(tmp_path):
    (tmp_path / 'x86').write_text(X86_CPUINFO)
    (tmp_path / 'arm').write_text(ARM_CPUINFO)
    flags = cpu_flags(tmp_path / 'x86')
    assert {'avx512_bf16', 'amx_bf16', 'avx2'} <= flags and 'spectre_v1' not in flags
    assert bf16_unit(flags) == 'AMX-BF16'
    # aarch64 lists 'Features', macOS / Windows have no /proc/cpuinfo: fp32
    assert cpu_flags(tmp_path / 'arm') == frozenset()
    assert cpu_flags(tmp_path / 'missing') == frozenset()


@pytest.mark.parametrize('flags, device, backend, expected', [
    (AMX, 'cpu', 'auto', 'bf16'),
    (AVX512_BF16, 'cpu', 'torch', 'bf16'),
    (PLAIN_X86, 'cpu', 'auto', 'fp32'),
    (set(), 'cpu', 'auto', 'fp32'),              # aarch64, macOS
    (AMX, 'cpu', 'onnxruntime', 'fp32'),         # no bf16 path in ORT: fp32 as before
    (AMX, 'cuda', 'auto', 'fp32'),               # CUDA keeps its own (fp32 torch)
    (AMX, 'cuda', 'tensorrt', 'fp32'),
])
def test_auto_precision_follows_the_cpu_flags(flags, device, backend, expected):
    assert resolve_precision('auto', device, backend, flags) == expected


def test_explicit_precision_and_errors(caplog):
    assert resolve_precision('fp32', 'cpu', 'auto', AMX) == 'fp32'
    assert resolve_precision('bf16', 'cpu', 'torch', AMX) == 'bf16'
    with caplog.at_level('WARNING'):
        assert resolve_precision('bf16', 'cpu', 'auto', PLAIN_X86) == 'bf16'
    assert 'emulates' in caplog.text
    for device, backend in [('cpu', 'onnxruntime'), ('cuda', 'torch'), ('cuda', 'tensorrt')]:
        with pytest.raises(ConfigError, match='bf16 runs on the torch CPU backend'):
            resolve_precision('bf16', device, backend, AMX)
    with pytest.raises(ConfigError, match='precision'):
        resolve_precision('fp16', 'cpu', 'auto', AMX)
    with pytest.raises(ConfigError, match='pipeline.precision'):
        PipelineConfig(precision='int8')
    assert describe('bf16', AMX) == 'networks in bf16 (CPU has AMX-BF16)'
    assert describe('bf16', AVX512_BF16) == 'networks in bf16 (CPU has AVX512-BF16)'


def test_runtime_of_the_pipeline_config():
    """bf16 runs on torch (nre_ros has no ONNX Runtime bf16 path; docs/decisions.md); fp32
    keeps the ONNX Runtime default on CPU."""
    assert resolve_runtime(PipelineConfig(), AMX) == ('torch', 'bf16')
    assert resolve_runtime(PipelineConfig(precision='fp32'), AMX)[1] == 'fp32'
    assert resolve_runtime(PipelineConfig(), PLAIN_X86)[1] == 'fp32'
    assert resolve_runtime(PipelineConfig(backend='onnxruntime'), AMX) == ('onnxruntime', 'fp32')
    assert resolve_runtime(PipelineConfig(device='cuda'), AMX) == ('torch', 'fp32')
    with pytest.raises(ConfigError):
        resolve_runtime(PipelineConfig(backend='onnxruntime', precision='bf16'), AMX)


@pytest.fixture(scope='module')
def fp32_and_bf16():
    model = load_model(DEFAULT_MODEL)
    fp32 = load_backend(BackendConfig(backend='torch', threads=2), model=model)
    bf16 = load_backend(BackendConfig(backend='torch', precision='bf16', threads=2), model=model)
    return fp32, bf16


@pytest.mark.skipif(bf16_unit() is None, reason=NO_BF16)
def test_coarse_matmul_follows_the_networks_precision(fp32_and_bf16):
    """bf16 dot products for the coarse maps only where the networks themselves ran in bf16
    on the CPU (their descriptors are bf16-rounded already); a plain model: float32."""
    fp32, bf16 = fp32_and_bf16
    assert coarse_matmul_dtype(bf16) == torch.bfloat16
    assert coarse_matmul_dtype(fp32) == torch.float32
    assert coarse_matmul_dtype(load_model(DEFAULT_MODEL)) == torch.float32


@pytest.mark.skipif(bf16_unit() is None, reason=NO_BF16)
def test_bf16_descriptors_match_fp32_on_a_real_image(fp32_and_bf16, fr1_rpy):
    fp32, bf16 = fp32_and_bf16
    assert bf16.backend == 'torch-cpu-bf16' and bf16.spec == fp32.spec   # same map identity
    image = fr1_rpy.load_rgb(fr1_rpy[0])
    a, b = fp32.extract(image), bf16.extract(image)
    for level in ('coarse', 'fine'):
        x, y = getattr(a, level), getattr(b, level)
        assert y.dtype == torch.float32 and y.shape == x.shape
        assert torch.allclose(y.norm(dim=0), torch.ones(()), atol=1e-5)   # L2-normalized
        cos = (x * y).sum(0).flatten()
        print(f'{level}: cosine bf16 vs fp32 median {cos.median():.5f}, '
              f'1st percentile {cos.quantile(0.01):.5f}, min {cos.min():.4f}')
        assert cos.median() > 0.998 and cos.quantile(0.01) > 0.97
    # the keypoint scores pick the map's points: (nearly) the same 600 per keyframe
    keep = [{tuple(u) for u in select_keypoints(f.keypoint_scores, 600)[0].astype(int).tolist()}
            for f in (a, b)]
    overlap = len(keep[0] & keep[1]) / len(keep[0])
    print(f'keypoints: {overlap:.3f} of the fp32 top 600 kept in bf16')
    assert overlap > 0.9


@pytest.mark.parametrize('shape', [(1, 64, 60, 80), (2, 8, 3, 5), (1, 64, 1, 1), (2, 16, 50, 90)])
def test_bf16_descriptors_are_renormalised_in_float32_in_their_layout(shape):
    """bf16 descriptors come back float32, unit-norm over C (zero vectors stay zero) and in the
    memory format they came in: channels_last stays channels_last (no transpose)."""
    from nre_ros.backends.torch_backend import normalized_descriptors
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).bfloat16()
    x[0, :, 0, 0] = 0
    for fmt in (torch.contiguous_format, torch.channels_last):
        desc = x.contiguous(memory_format=fmt)
        got = normalized_descriptors(desc)
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(got, torch.nn.functional.normalize(desc.float(), dim=1),
                                   rtol=0, atol=1e-6)
        assert float(got[0, :, 0, 0].abs().max()) == 0.0
        norms = got.norm(dim=1)
        norms[0, 0, 0] = 1.0
        torch.testing.assert_close(norms, torch.ones(shape[0], *shape[2:]))


def test_backend_crops_keep_the_channels_last_layout():
    """``cropped``: a channels-last network output stays (h, w, C) rows, also when the padding
    is cropped off; a contiguous one stays contiguous; the values are the crop's either way."""
    from nre_ros.backends.base import cropped
    x = torch.randn(1, 16, 12, 20, generator=torch.Generator().manual_seed(2))
    for h, w in ((12, 20), (10, 17)):
        for fmt in (torch.contiguous_format, torch.channels_last):
            got = cropped(x.contiguous(memory_format=fmt), h, w)
            assert torch.equal(got, x[0, :, :h, :w])
            assert (got.permute(1, 2, 0) if fmt == torch.channels_last else got).is_contiguous()
