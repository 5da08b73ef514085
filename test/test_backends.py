"""Inference backends: torch CPU, ONNX export + ORT parity on real images, CUDA, TensorRT."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from nre_ros.backends import BackendConfig, load_backend
from nre_ros.backends.tensorrt_backend import engine_key, import_tensorrt
from nre_ros.datasets import load_rgb
from nre_ros.errors import BackendUnavailable, ConfigError
from nre_ros.models import DEFAULT_MODEL, load_model

torch.set_num_threads(2)
PARITY_ATOL = 1e-4      # float32 ONNX Runtime vs torch on L2-normalized descriptors


@pytest.fixture(scope='module')
def torch_model():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope='module')
def onnx_model(torch_model, tmp_path_factory):
    cfg = BackendConfig(backend='onnxruntime', cache_dir=str(tmp_path_factory.mktemp('cache')))
    return load_backend(cfg, model=torch_model), cfg


@pytest.fixture(scope='module')
def real_images(megadepth_pair, fr1_rpy):
    md = load_rgb(megadepth_pair['root'] / 'target_image.jpg')
    md = cv2.resize(md, (640, 425), interpolation=cv2.INTER_AREA)   # odd height on purpose
    return {'megadepth': md, 'tum': fr1_rpy.load_rgb(fr1_rpy[0])}


def _max_diff(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_torch_cpu_backend_equals_model(torch_model, real_images):
    backend = load_backend(BackendConfig(backend='torch', threads=2), model=torch_model)
    assert backend.backend == 'torch-cpu' and torch.get_num_threads() == 2
    image = real_images['tum'][:240, :320]
    a, b = torch_model.extract(image), backend.extract(image)
    assert backend.spec == torch_model.spec
    # channels_last changes the summation order only
    assert _max_diff(a.coarse, b.coarse) < 1e-5 and _max_diff(a.fine, b.fine) < 1e-5


def test_onnxruntime_threads_follow_num_threads(onnx_model):
    from nre_ros.threads import available_cpus
    model, _ = onnx_model
    for session in model.runner.sessions.values():
        opts = session.get_session_options()
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (available_cpus(), 1)
        assert opts.get_session_config_entry('session.intra_op.allow_spinning') == '0'


def test_onnx_export_files_and_spec(onnx_model):
    import onnx
    model, cfg = onnx_model
    files = sorted(p.name for p in (__import__('pathlib').Path(cfg.cache_dir) / 'onnx').rglob('*'))
    assert f'{DEFAULT_MODEL}-coarse.onnx' in files and f'{DEFAULT_MODEL}.spec.json' in files
    path = next((__import__('pathlib').Path(cfg.cache_dir) / 'onnx').rglob('*-coarse.onnx'))
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == [1, 3] and all(isinstance(d, str) for d in dims[2:])   # dynamic H, W
    spec_json = json.loads(next(path.parent.glob('*.spec.json')).read_text())
    assert spec_json['spec'] == json.loads(model.spec.to_json())


@pytest.mark.parametrize('which', ['megadepth', 'tum'])
def test_onnxruntime_parity_coarse(torch_model, onnx_model, real_images, which):
    image = real_images[which]
    a, b = torch_model.extract(image, fine=False), onnx_model[0].extract(image, fine=False)
    diff = _max_diff(a.coarse, b.coarse)
    print(f'{which} {image.shape[1]}x{image.shape[0]} coarse max|ort - torch| = {diff:.2e}')
    assert diff < PARITY_ATOL
    assert _max_diff(a.keypoint_scores, b.keypoint_scores) < PARITY_ATOL


def test_onnxruntime_parity_fine(torch_model, onnx_model, real_images):
    image = np.ascontiguousarray(real_images['megadepth'][100:340, 160:480])   # 320x240 crop
    a, b = torch_model.extract(image), onnx_model[0].extract(image)
    diff = _max_diff(a.fine, b.fine)
    print(f'fine 320x240 max|ort - torch| = {diff:.2e}')
    assert diff < PARITY_ATOL


def test_backend_errors():
    with pytest.raises(ConfigError, match='unknown backend'):
        load_backend(BackendConfig(backend='openvino'))
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match='CUDA'):
            load_backend(BackendConfig(backend='torch', device='cuda'))


def test_engine_key_changes_with_version_gpu_and_profile(tmp_path):
    onnx_file = tmp_path / 'm.onnx'
    onnx_file.write_bytes(b'graph')
    profile = ((32, 32), (480, 640), (480, 640))
    k = engine_key(onnx_file, '10.3.0', 'NVIDIA H100', profile, True)
    assert k == engine_key(onnx_file, '10.3.0', 'NVIDIA H100', profile, True)
    assert k != engine_key(onnx_file, '10.4.0', 'NVIDIA H100', profile, True)
    assert k != engine_key(onnx_file, '10.3.0', 'NVIDIA L4', profile, True)
    assert k != engine_key(onnx_file, '10.3.0', 'NVIDIA H100', ((32, 32),) * 3, True)
    onnx_file.write_bytes(b'other graph')
    assert k != engine_key(onnx_file, '10.3.0', 'NVIDIA H100', profile, True)


def _tensorrt_reason() -> str | None:
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    return None if torch.cuda.is_available() else 'TensorRT needs a CUDA GPU'


def test_tensorrt_unavailable_is_reported():
    if _tensorrt_reason() is None:
        pytest.skip('TensorRT is available here')
    with pytest.raises(BackendUnavailable, match='TensorRT'):
        load_backend(BackendConfig(backend='tensorrt'))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason='needs a CUDA GPU (torch CPU build here)')
def test_torch_cuda_fp16_close_to_cpu(torch_model, real_images):
    image = real_images['tum']
    cuda = load_backend(BackendConfig(backend='torch', device='cuda', fp16=True))
    a, b = torch_model.extract(image), cuda.extract(image)
    assert b.coarse.device.type == 'cuda'
    cos_c = (a.coarse * b.coarse.cpu()).sum(0).mean().item()
    cos_f = (a.fine * b.fine.cpu()).sum(0).mean().item()
    assert cos_c > 0.99 and cos_f > 0.99


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(_tensorrt_reason() is not None, reason=f'{_tensorrt_reason()}')
def test_tensorrt_close_to_torch_and_cached(torch_model, real_images, tmp_path, caplog):
    image = real_images['tum']
    cfg = BackendConfig(backend='tensorrt', cache_dir=str(tmp_path))
    with caplog.at_level('WARNING'):
        trt_model = load_backend(cfg, model=torch_model)
    assert 'building TensorRT engine' in caplog.text
    engines = sorted((tmp_path / 'tensorrt').glob('*.engine'))
    assert len(engines) == 2
    a, b = torch_model.extract(image), trt_model.extract(image)
    assert (a.coarse * b.coarse.cpu()).sum(0).mean().item() > 0.99
    assert (a.fine * b.fine.cpu()).sum(0).mean().item() > 0.99
    caplog.clear()
    with caplog.at_level('WARNING'):
        load_backend(cfg, model=torch_model)
    assert 'building TensorRT engine' not in caplog.text          # deserialized from the cache


def test_onnxruntime_parity_fine_full_size(torch_model, onnx_model, real_images):
    image = real_images['tum']                                      # 640x480
    a, b = torch_model.extract(image), onnx_model[0].extract(image)
    diff = _max_diff(a.fine, b.fine)
    print(f'fine 640x480 max|ort - torch| = {diff:.2e}')
    assert diff < PARITY_ATOL


def test_export_command(tmp_path, capsys):
    from nre_ros.cli import main
    assert main(['export', '--model', 'xfeat', '-o', str(tmp_path), '--check']) == 0
    out = capsys.readouterr().out
    assert (tmp_path / 'xfeat-coarse.onnx').exists() and (tmp_path / 'xfeat.spec.json').exists()
    diff = float(out.split('coarse: max |onnxruntime - torch| = ')[1].split()[0])
    assert diff < PARITY_ATOL


def test_graph_digest_follows_code_and_torch_version(tmp_path):
    """The export cache folder changes when the network code or torch changes, so an upgrade
    never reuses a graph exported by older code (a stale fine graph was found in a cache)."""
    from nre_ros.backends import graph_digest
    src = tmp_path / 'net.py'
    src.write_text('x = image.mean(dim=1)\n')
    a = graph_digest([src], '2.13.0')
    assert a == graph_digest([src], '2.13.0') and len(a) == 8
    assert a != graph_digest([src], '2.14.0')
    src.write_text('x = image\n')
    assert a != graph_digest([src], '2.13.0')
    assert graph_digest() == graph_digest()               # the package's own sources
