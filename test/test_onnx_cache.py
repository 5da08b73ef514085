"""The ONNX export cache is verified by SHA-256 before use and re-exported when it differs."""
from __future__ import annotations

import json
import logging

import numpy as np

from nre_ros.backends import BackendConfig, load_backend
from nre_ros.backends.onnx_backend import export_problem
from nre_ros.models.base import file_sha256


def _fake_export(tmp_path, name='m', levels=('coarse',)):
    for level in levels:
        (tmp_path / f'{name}-{level}.onnx').write_bytes(b'graph-' + level.encode())
    spec = tmp_path / f'{name}.spec.json'
    spec.write_text(json.dumps({'levels': list(levels), 'sha256': {
        level: file_sha256(tmp_path / f'{name}-{level}.onnx') for level in levels}}))
    return spec


def test_export_problem_names_each_kind_of_damage(tmp_path):
    spec = _fake_export(tmp_path, levels=('coarse', 'fine'))
    assert export_problem(spec, ['coarse', 'fine']) is None
    (tmp_path / 'm-fine.onnx').write_bytes(b'graph-fin')              # truncated
    assert 'SHA-256' in export_problem(spec, ['coarse', 'fine'])
    (tmp_path / 'm-fine.onnx').unlink()
    assert 'missing' in export_problem(spec, ['coarse', 'fine'])
    spec.write_text(json.dumps({'levels': ['coarse']}))                 # older export, no hash
    assert 'no SHA-256' in export_problem(spec, ['coarse'])


def test_planted_or_truncated_graph_is_exported_again(tmp_path, caplog):
    cfg = BackendConfig(model='xfeat', backend='onnxruntime', cache_dir=str(tmp_path))
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    reference = load_backend(cfg).extract(image).coarse
    graph = next((tmp_path / 'onnx').rglob('xfeat-coarse.onnx'))
    good = graph.read_bytes()
    for damaged in (good[:len(good) // 2], good + b'\0planted'):
        graph.write_bytes(damaged)
        with caplog.at_level(logging.WARNING):
            model = load_backend(cfg)
        assert 'exporting again' in caplog.text
        caplog.clear()
        assert graph.read_bytes() != damaged
        assert export_problem(graph.with_name('xfeat.spec.json'), ['coarse']) is None
        assert float((model.extract(image).coarse - reference).abs().max()) < 1e-5
