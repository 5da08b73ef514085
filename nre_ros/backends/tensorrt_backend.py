"""TensorRT 10+ runner: engines built from the exported ONNX files, cached on disk.

Engines are built with the TensorRT Python API (fp16, one optimization profile spanning the
configured image sizes) and cached as ``<cache>/<model>-<level>-<key>.engine`` where the key
hashes the ONNX file, the TensorRT version, the GPU name and the profile, so a new driver stack
or GPU rebuilds instead of loading an incompatible engine. Building takes minutes and is
logged loudly; later start-ups only deserialize.

TensorRT cannot be installed on the project's CPU machines (no libnvinfer wheel on PyPI or
Debian): the import is guarded and raises BackendUnavailable with the reason.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from nre_ros.errors import BackendUnavailable
from nre_ros.models.base import file_sha256

logger = logging.getLogger(__name__)

MIN_TRT_MAJOR = 10


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying why not."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:   # OSError: bindings present, libnvinfer missing
        raise BackendUnavailable(
            f'TensorRT is not importable ({exc}); install TensorRT >= {MIN_TRT_MAJOR} with its '
            "libraries (pip tensorrt-cu12 from NVIDIA's index) or use backend torch-cuda"
        ) from exc
    major = int(trt.__version__.split('.')[0])
    if major < MIN_TRT_MAJOR:
        raise BackendUnavailable(f'TensorRT {trt.__version__} found, {MIN_TRT_MAJOR}+ needed')
    return trt


def engine_key(onnx_path: str | Path, trt_version: str, gpu_name: str,
               profile: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
               fp16: bool) -> str:
    """Cache key: ONNX content hash + TensorRT version + GPU name + profile + precision."""
    text = '|'.join([file_sha256(onnx_path), trt_version, gpu_name, repr(profile),
                     'fp16' if fp16 else 'fp32'])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_engine(trt, onnx_path: Path, profile, fp16: bool, workspace_bytes: int = 1 << 30
                 ) -> bytes:
    """Serialized engine for ``onnx_path`` with one profile (min, opt, max) of (H, W)."""
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)            # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    (h0, w0), (h1, w1), (h2, w2) = profile
    opt_profile.set_shape('image', (1, 3, h0, w0), (1, 3, h1, w1), (1, 3, h2, w2))
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f'TensorRT failed to build an engine for {onnx_path}')
    return bytes(serialized)


class TensorRTRunner:
    """Runs exported level networks as TensorRT engines on the current CUDA device.

    Args:
        paths: {'coarse': onnx path, 'fine': onnx path}.
        cache_dir: where engines are cached.
        image_sizes: padded (H, W) sizes the profile must cover; the largest is the optimum.
        fp16: build with FP16 kernels (I/O stays float32).
    """

    def __init__(self, paths: dict[str, str | Path], cache_dir: str | Path,
                 image_sizes: list[tuple[int, int]] = ((480, 640),), fp16: bool = True) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable('TensorRT needs a CUDA GPU; '
                                     'torch.cuda.is_available() is False')
        self.trt = trt
        self.device = torch.device('cuda')
        self.input_dtype = torch.float32
        self.name = 'tensorrt' + ('-fp16' if fp16 else '')
        hs, ws = [s[0] for s in image_sizes], [s[1] for s in image_sizes]
        opt = max(image_sizes, key=lambda s: s[0] * s[1])
        profile = ((min(hs), min(ws)), tuple(opt), (max(hs), max(ws)))
        gpu = torch.cuda.get_device_name(self.device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts = {}, {}
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for level, onnx_path in paths.items():
            key = engine_key(onnx_path, trt.__version__, gpu, profile, fp16)
            engine_path = cache_dir / f'{Path(onnx_path).stem}-{key}.engine'
            if not engine_path.exists():
                logger.warning('building TensorRT engine for %s (%s, TensorRT %s, profile %s, '
                               '%s): first run takes minutes; cached as %s', onnx_path, gpu,
                               trt.__version__, profile, 'fp16' if fp16 else 'fp32', engine_path)
                t0 = time.perf_counter()
                data = build_engine(trt, Path(onnx_path), profile, fp16)
                tmp = engine_path.with_suffix('.tmp')
                tmp.write_bytes(data)
                tmp.replace(engine_path)                   # atomic: no half-written cache
                logger.warning('built TensorRT engine %s in %.0f s', engine_path,
                               time.perf_counter() - t0)
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise BackendUnavailable(f'cannot deserialize {engine_path}; delete it to rebuild')
            self.engines[level] = engine
            self.contexts[level] = engine.create_execution_context()
            logger.info('loaded TensorRT engine %s', engine_path)

    def levels(self) -> tuple[str, ...]:
        return tuple(self.engines)

    def __call__(self, level: str, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        trt, engine, context = self.trt, self.engines[level], self.contexts[level]
        x = image.to(self.device, torch.float32).contiguous()
        context.set_input_shape('image', tuple(x.shape))
        context.set_tensor_address('image', x.data_ptr())
        outputs = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32,
                              device=self.device)
            context.set_tensor_address(name, out.data_ptr())
            outputs.append((name, out))
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise BackendUnavailable(f'TensorRT execution failed for level {level}')
        stream.synchronize()
        order = {'descriptors': 0, 'scores': 1, 'fine_descriptors': 2}
        return tuple(o for _, o in sorted(outputs, key=lambda t: order.get(t[0], 9)))
