"""Benchmarks time the product as it runs: ``nre_ros`` is imported before anything that loads
torch's OpenMP runtime, so its workers sleep between parallel regions (``nre_ros.threads``).
A benchmark that imported torch first timed spinning workers, not the product."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
HEAVY = {'torch', 'numba', 'onnxruntime', 'nre_training'}     # load an OpenMP runtime


def _top_level_imports(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name.split('.')[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split('.')[0])
    return names


@pytest.mark.parametrize('path', sorted(BENCHMARKS.glob('*.py')), ids=lambda p: p.name)
def test_nre_ros_is_imported_before_torch(path):
    siblings = {p.stem for p in BENCHMARKS.glob('*.py')}
    names = _top_level_imports(path)
    heavy = [i for i, n in enumerate(names) if n in HEAVY or n in siblings]
    if not heavy:
        return
    first_nre = next((i for i, n in enumerate(names) if n == 'nre_ros'), len(names))
    assert first_nre < heavy[0], (f'{path.name} imports {names[heavy[0]]!r} before nre_ros')
