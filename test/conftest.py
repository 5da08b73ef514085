"""Shared fixtures: real data from ../shared/data (skipped with a reason when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nre_ros.paths import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f'real data set {name} not found at {path} (set NRE_SHARED_DATA)')
    return path


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
