"""``nre-ros export``: write the feature model as ONNX (dynamic H/W) plus its spec JSON."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nre_ros.models import DEFAULT_MODEL, MODEL_NAMES, load_model

NAME = 'export'
HELP = 'export the feature networks to ONNX (one file per level) with a model-spec JSON'
ORDER = 70
DEFAULT_OUTPUT = 'out/onnx'

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default=DEFAULT_MODEL,
                        choices=[m for m in MODEL_NAMES if m != 'disk'],
                        help=f'registry name (default {DEFAULT_MODEL})')
    parser.add_argument('--weights', default=None,
                        help='trained weight file (nre-paper: default random init; xfeat-ms-nre: '
                             'default the shipped heads)')
    parser.add_argument('--output', '-o', default=DEFAULT_OUTPUT,
                        help=f'output folder (default {DEFAULT_OUTPUT}, git-ignored in the '
                             'repository)')
    parser.add_argument('--check', action='store_true',
                        help='run ONNX Runtime on a random 480x640 image and report the max '
                             'difference to torch')


def run(args: argparse.Namespace) -> int:
    from nre_ros.backends.onnx_backend import export_onnx
    model = load_model(args.model, weights=args.weights)
    print(f'exporting {model.spec.name} networks to ONNX in {args.output} (this takes 10-40 s)',
          flush=True)
    paths = export_onnx(model, Path(args.output))
    for level, path in paths.items():
        print(f'{level:>6}: {path}  ({path.stat().st_size / 1e6:.1f} MB)')
    print(f'spec: {model.spec.to_json()}')
    if args.check:
        import numpy as np

        from nre_ros.backends.base import BackendModel
        from nre_ros.backends.onnx_backend import OnnxRunner
        onnx = BackendModel(model.spec, OnnxRunner({k: v for k, v in paths.items()
                                                    if k != 'spec'}), model.pad_multiple)
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        a, b = model.extract(image), onnx.extract(image)
        for level in ('coarse', 'fine'):
            if getattr(a, level) is not None:
                diff = (getattr(a, level) - getattr(b, level)).abs().max().item()
                print(f'{level}: max |onnxruntime - torch| = {diff:.2e}')
    return 0
