"""ONNX export (dynamic H/W) of a model's level networks and an ONNX Runtime runner.

Files: ``<dir>/<model>-<level>.onnx`` plus ``<dir>/<model>.spec.json`` (the ModelSpec and the
SHA-256 of each graph, checked before every use), written by ``export_onnx`` (``nre-ros export``). Input ``image`` (1, 3, H, W) float32 in [0, 1] with H, W
multiples of the model's pad multiple; outputs ``descriptors`` (1, C, H/s, W/s) L2-normalized and,
for coarse levels that have one, ``scores`` (1, 1, H, W); a 'joint' level (both levels from one
pass) has ``descriptors`` and ``fine_descriptors`` (the network's ``output_names``).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nre_ros.backends.base import padded_size
from nre_ros.errors import BackendUnavailable
from nre_ros.models.base import file_sha256
from nre_ros.threads import resolve_threads

logger = logging.getLogger(__name__)

OPSET = 18


def _output_names(net: nn.Module, example: torch.Tensor) -> list[str]:
    with torch.inference_mode():
        out = net(example)
    n = len(out) if isinstance(out, tuple) else 1
    names = getattr(net, 'output_names', ('descriptors', 'scores', 'fine_descriptors')[:n])
    if len(names) != n:
        raise ValueError(f'{type(net).__name__} returns {n} outputs, names {names}')
    return list(names)


def export_level(net: nn.Module, path: str | Path, example_hw: tuple[int, int] = (480, 640),
                 dynamo: bool = False) -> Path:
    """Export one level network to ONNX with dynamic H and W; returns the path.

    The legacy TorchScript exporter (``dynamo=False``) is the default: it handles XFeat's
    scale-factor interpolation with symbolic sizes and needs no onnxscript; ``dynamo=True``
    uses torch.export (opset 20) and is kept as an option.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.float().cpu().eval()
    example = torch.rand(1, 3, *example_hw)
    outputs = _output_names(net, example)
    axes = {'image': {2: 'H', 3: 'W'}, **{o: {2: f'{o}_h', 3: f'{o}_w'} for o in outputs}}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if dynamo:
            from torch.export import Dim
            torch.onnx.export(net, (example,), str(path), input_names=['image'],
                              output_names=outputs, dynamo=True,
                              dynamic_shapes={'image': {2: Dim('H', min=32, max=4096),
                                                        3: Dim('W', min=32, max=4096)}})
        else:
            torch.onnx.export(net, (example,), str(path), input_names=['image'],
                              output_names=outputs, dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
    logger.info('exported %s (%d outputs, dynamic H/W)', path, len(outputs))
    return path


def export_onnx(model, out_dir: str | Path) -> dict[str, Path]:
    """Export every level of ``model`` (from ``nre_ros.models.load_model``) and its spec JSON.

    Returns:
        {'coarse': path, 'fine': path, 'spec': path} (fine only when the model has one).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example_hw = padded_size((480, 640), model.pad_multiple)
    paths = {level: export_level(net, out_dir / f'{model.spec.name}-{level}.onnx', example_hw)
             for level, net in model.networks().items()}
    spec_path = out_dir / f'{model.spec.name}.spec.json'
    spec_path.write_text(json.dumps({'spec': json.loads(model.spec.to_json()),
                                     'pad_multiple': model.pad_multiple,
                                     'levels': sorted(paths),
                                     'sha256': {level: file_sha256(p)
                                                for level, p in paths.items()}},
                                    indent=2, sort_keys=True))
    paths['spec'] = spec_path
    return paths


def export_problem(spec_path: str | Path, levels: list[str] | tuple[str, ...]) -> str | None:
    """Why the exported graphs next to ``spec_path`` cannot be trusted (no recorded SHA-256,
    a graph missing, or a graph whose SHA-256 differs from the one recorded at export: planted,
    truncated or half-written), or None when every level matches."""
    spec_path = Path(spec_path)
    try:
        recorded = json.loads(spec_path.read_text()).get('sha256')
    except (OSError, ValueError, AttributeError) as exc:
        return f'{spec_path} is unreadable ({exc!r})'
    if not isinstance(recorded, dict):
        return f'{spec_path} records no SHA-256 of the graphs (exported by an older nre_ros)'
    for level in levels:
        graph = spec_path.with_name(spec_path.name.replace('.spec.json', f'-{level}.onnx'))
        if not graph.is_file():
            return f'{graph} is missing'
        if recorded.get(level) != file_sha256(graph):
            return (f'{graph} has SHA-256 {file_sha256(graph)[:12]}…, the export recorded '
                    f'{str(recorded.get(level))[:12]}…')
    return None


class OnnxRunner:
    """Runs exported level networks with ONNX Runtime.

    Args:
        paths: {'coarse': onnx path, 'fine': onnx path}.
        device: 'cpu' (CPUExecutionProvider) or 'cuda' (CUDAExecutionProvider, CPU fallback off).
        threads: intra-op threads for the CPU provider: a count or 'auto' (nre_ros.threads;
            the same count torch gets); inter-op 1 (the graphs run one at a time).
    """

    def __init__(self, paths: dict[str, str | Path], device: str = 'cpu',
                 threads: int | str | None = 'auto') -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable('onnxruntime is not installed '
                                     '(pip install onnxruntime==1.32.0)') from exc
        providers = ['CPUExecutionProvider']
        if str(device).startswith('cuda'):
            if 'CUDAExecutionProvider' not in ort.get_available_providers():
                raise BackendUnavailable(
                    'ONNX Runtime has no CUDAExecutionProvider here (providers: '
                    f'{ort.get_available_providers()}); install onnxruntime-gpu or use device=cpu')
            providers = ['CUDAExecutionProvider']
        opts = ort.SessionOptions()
        # ORT's worker threads otherwise spin for a while after each run, taking the cores
        # from the torch work that follows
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = resolve_threads(threads)
        self.sessions = {k: ort.InferenceSession(str(p), opts, providers=providers)
                         for k, p in paths.items()}
        self.device = torch.device('cpu')   # outputs are copied to host memory
        self.input_dtype = torch.float32
        self.name = 'onnxruntime-' + ('cuda' if providers[0].startswith('CUDA') else 'cpu')

    def levels(self) -> tuple[str, ...]:
        return tuple(self.sessions)

    def __call__(self, level: str, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = np.ascontiguousarray(image.detach().cpu().float().numpy())
        outs = self.sessions[level].run(None, {'image': x})
        return tuple(torch.from_numpy(o) for o in outs)
