"""Shared fixtures: real data from ../shared/data (skipped with a reason when absent)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from nre_ros.paths import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()


def load_benchmark(script: str, module_name: str) -> ModuleType:
    """``benchmarks/<script>`` imported as ``module_name`` (registered in sys.modules, which
    dataclasses need; ``benchmarks/`` on sys.path for the scripts' own imports)."""
    bench = REPO / 'benchmarks'
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(module_name, bench / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f'real data set {name} not found at {path} (set NRE_SHARED_DATA)')
    return path


@pytest.fixture(scope='module')
def reloc():
    """A Relocalizer on the shipped demo map with the default config; one per test module, so
    no module sees state (camera, tracking prior) another module left in it."""
    from nre_ros.paths import shared_file
    from nre_ros.pipeline import PipelineConfig, Relocalizer
    return Relocalizer.from_config(shared_file('maps/demo/fr1_rpy.nremap'), PipelineConfig())


@pytest.fixture(scope='session')
def fr1_rpy():
    from nre_ros.datasets import TumSequence
    return TumSequence(shared_dataset('tum_rgbd_fr1_rpy'))


@pytest.fixture(scope='session')
def cabinet():
    from nre_ros.datasets import TumSequence
    return TumSequence(shared_dataset('tum_rgbd_fr3_cabinet_keyframes'))


@pytest.fixture(scope='session')
def megadepth_pair():
    import numpy as np
    root = shared_dataset('nre_megadepth_pair')
    data = dict(np.load(root / 'sample.npz', allow_pickle=False))
    data['root'] = root
    return data
