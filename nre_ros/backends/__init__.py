"""Inference backends behind one interface: ``load_backend(config).extract(image)``.

| backend | device | precision | notes |
|---|---|---|---|
| ``torch`` | cpu / cuda | fp32 / bf16 on CPU / fp16 on CUDA | inference_mode, thread count from the config |
| ``onnxruntime`` | cpu / cuda | fp32 | exports the model to ONNX (dynamic H/W) into the cache |
| ``tensorrt`` | cuda | fp16 | engine built from the ONNX file, cached by hash/version/GPU |
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nre_ros.backends.base import BackendModel, Runner, padded_size
from nre_ros.errors import BackendUnavailable, ConfigError
from nre_ros.models import DEFAULT_MODEL, load_model
from nre_ros.precision import resolve_precision
from nre_ros.threads import apply_threads

__all__ = ['BackendConfig', 'BackendModel', 'Runner', 'load_backend', 'BACKENDS',
           'default_cache_dir', 'graph_digest']

logger = logging.getLogger(__name__)

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')


@dataclass(frozen=True)
class BackendConfig:
    """How the feature networks run.

    Attributes:
        model: registry name (nre_ros.models.MODEL_NAMES).
        backend: one of BACKENDS.
        device: 'cpu' or 'cuda' ('tensorrt' implies cuda).
        fp16: half precision for torch on CUDA (TensorRT always builds fp16; ONNX Runtime fp32).
        precision: 'fp32', 'bf16' (torch on CPU) or 'auto' (nre_ros.precision: bf16 on a CPU
            with bf16 units when the backend is torch, else fp32).
        threads: CPU threads (torch intra-op / ORT intra-op threads): 'auto' (the CPUs this
            process may use, nre_ros.threads), a count, or 0 = leave torch's as they are.
        cache_dir: where ONNX files and TensorRT engines go ('' = default_cache_dir()).
        image_sizes: (H, W) input sizes the TensorRT profile must cover.
        with_fine: compute the fine level by default in ``extract``.
    """

    model: str = DEFAULT_MODEL
    backend: str = 'torch'
    device: str = 'cpu'
    fp16: bool = False
    precision: str = 'fp32'
    threads: int | str = 'auto'
    cache_dir: str = ''
    image_sizes: tuple[tuple[int, int], ...] = ((480, 640),)
    with_fine: bool = True


def default_cache_dir() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'nre_ros'


def graph_digest(sources: list[Path] | None = None, torch_version: str = torch.__version__
                 ) -> str:
    """8 hex digits of sha256 over the code that defines and exports the networks (every
    ``nre_ros/models/*.py`` and the ONNX exporter, or ``sources``) and the torch version: part
    of the export cache folder's name, so that an upgraded nre_ros or torch never runs a graph
    exported by older code (same weights, different ops)."""
    if sources is None:
        import nre_ros.models
        from nre_ros.backends import onnx_backend
        sources = sorted(Path(nre_ros.models.__file__).parent.glob('*.py'))
        sources.append(Path(onnx_backend.__file__))
    digest = hashlib.sha256(torch_version.encode())
    for path in sources:
        digest.update(path.name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:8]


def _export_atomically(model, onnx_dir: Path, export) -> None:
    """Export into a private folder, then rename it into place: a concurrent process (a test,
    a second node) never reads half-written files; the loser of a race discards its copy."""
    import shutil
    import tempfile
    onnx_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=onnx_dir.name + '.', dir=onnx_dir.parent))
    try:
        export(model, tmp)
        if (onnx_dir / f'{model.spec.name}.spec.json').exists():
            return                       # another process finished first: keep its files
        if onnx_dir.exists():            # a stale, incomplete folder (no spec file): replace it
            shutil.rmtree(onnx_dir, ignore_errors=True)
        os.replace(tmp, onnx_dir)
    except OSError:
        if not (onnx_dir / f'{model.spec.name}.spec.json').exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_backend(config: BackendConfig = BackendConfig(), model=None) -> BackendModel:
    """Build the configured backend around ``config.model`` (or an already loaded ``model``).

    Raises:
        ConfigError: unknown backend name, or precision bf16 on a backend without it.
        BackendUnavailable: the backend cannot run here (no CUDA, no TensorRT, ...), with why.
    """
    if config.backend not in BACKENDS:
        raise ConfigError(f'unknown backend {config.backend!r}; available: {BACKENDS}')
    threads = apply_threads(config.threads) if config.threads else None
    device = 'cuda' if config.backend == 'tensorrt' else config.device
    if config.backend == 'torch' and device.startswith('cuda') and not torch.cuda.is_available():
        raise BackendUnavailable('torch CUDA backend asked for, but torch.cuda.is_available() is '
                                 'False (CPU build of torch or no GPU); use device=cpu')
    model = model or load_model(config.model, 'cpu' if config.backend != 'torch' else device)
    if config.backend == 'torch':
        from nre_ros.backends.torch_backend import TorchRunner
        bf16 = resolve_precision(config.precision, device, config.backend) == 'bf16'
        runner = TorchRunner(model.networks(), device, fp16=config.fp16, threads=threads,
                             bf16=bf16)
    else:
        resolve_precision(config.precision, device, config.backend)   # bf16 -> ConfigError
        from nre_ros.backends.onnx_backend import export_onnx, export_problem
        cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        onnx_dir = cache / 'onnx' / (f'{model.spec.name}-{model.spec.weights_sha256[:12]}-'
                                     f'{graph_digest()}')
        spec_file = onnx_dir / f'{model.spec.name}.spec.json'
        if spec_file.exists():
            problem = export_problem(spec_file, list(model.networks()))
            if problem:
                logger.warning('ONNX cache %s is not the graph nre_ros exported (%s): '
                               'exporting again', onnx_dir, problem)
                import shutil
                shutil.rmtree(onnx_dir, ignore_errors=True)
        if not spec_file.exists():
            logger.warning('exporting %s networks to ONNX, this takes 10-40 s (first run with '
                           'these weights; cached in %s)', model.spec.name, onnx_dir)
            _export_atomically(model, onnx_dir, export_onnx)
        problem = export_problem(spec_file, list(model.networks()))
        if problem:
            raise BackendUnavailable(f'the ONNX export in {onnx_dir} does not verify ({problem});'
                                     ' delete the folder and retry')
        paths = {level: onnx_dir / f'{model.spec.name}-{level}.onnx' for level in model.networks()}
        if config.backend == 'onnxruntime':
            from nre_ros.backends.onnx_backend import OnnxRunner
            runner = OnnxRunner(paths, device, threads=threads)
        else:
            from nre_ros.backends.tensorrt_backend import TensorRTRunner
            sizes = [padded_size(s, model.pad_multiple) for s in config.image_sizes]
            runner = TensorRTRunner(paths, cache / 'tensorrt', sizes, fp16=True)   # always fp16
    return BackendModel(model.spec, runner, model.pad_multiple, config.with_fine)
