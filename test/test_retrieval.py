"""Global descriptors and the retrieval index."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from nre_ros.errors import BackendUnavailable, ShapeError
from nre_ros.maps import RetrievalIndex, global_descriptor
from nre_ros.models.base import DenseFeatures


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_topk_matches_brute_force():
    rng = np.random.default_rng(0)
    db = _unit(rng.normal(size=(5000, 320))).astype(np.float32)
    q = _unit(rng.normal(size=(7, 320))).astype(np.float32)
    index = RetrievalIndex(db)
    idx, scores = index.query(q, 10)
    ref = np.argsort(-(q @ db.T), axis=1)[:, :10]
    assert idx.shape == (7, 10) and np.array_equal(idx, ref)
    assert np.all(np.diff(scores, axis=1) <= 0)
    i1, s1 = index.query(db[123], 3)                   # a database vector finds itself first
    assert i1[0] == 123 and s1[0] == pytest.approx(1.0, abs=1e-5) and i1.shape == (3,)
    assert index.query(q[0], 10**6)[0].shape == (5000,)  # k clipped to K
    many = _unit(rng.normal(size=(40, 320))).astype(np.float32)   # over SMALL_BATCH: BLAS
    assert np.array_equal(index.query(many, 10)[0], np.argsort(-(many @ db.T), axis=1)[:, :10])
    assert np.array_equal(index.query(many[:7], 10)[0], index.query(many, 10)[0][:7])


def test_bad_inputs():
    with pytest.raises(ShapeError, match='must be'):
        RetrievalIndex(np.zeros((0, 8), np.float32))
    index = RetrievalIndex(np.eye(4, dtype=np.float32))
    with pytest.raises(ShapeError, match=r'\(4,\)'):
        index.query(np.zeros(5), 1)


def test_faiss_backend_same_interface():
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match='faiss'):
            RetrievalIndex(np.eye(4, dtype=np.float32), backend='faiss')
        assert RetrievalIndex(np.eye(4, dtype=np.float32), backend='auto').backend == 'numpy'
        pytest.skip('faiss not installed: numpy fallback checked')
    rng = np.random.default_rng(1)
    db = _unit(rng.normal(size=(300, 64))).astype(np.float32)
    a = RetrievalIndex(db, 'numpy').query(db[:5], 4)[0]
    b = RetrievalIndex(db, 'faiss').query(db[:5], 4)[0]
    assert np.array_equal(a, b)


def test_global_descriptor_properties():
    g = torch.nn.functional.normalize(torch.randn(64, 60, 80), dim=0)
    f = DenseFeatures(coarse=g, fine=None, keypoint_scores=None, image_size=(640, 480))
    d = global_descriptor(f)
    assert d.dtype == np.float32 and d.shape == (64 * 5,)
    assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)
    flipped = DenseFeatures(coarse=g.flip(-1), fine=None, keypoint_scores=None,
                            image_size=(640, 480))
    assert np.dot(d, global_descriptor(flipped)) < 0.999      # the pyramid sees the layout


def test_retrieval_on_real_frames(fr1_rpy):
    """A query between two map frames retrieves a near keyframe before a far one."""
    from nre_ros.models import load_model
    model = load_model('xfeat')
    frames = fr1_rpy.frames
    db_frames = [frames[0], frames[100], frames[200]]
    db = np.stack([global_descriptor(model.extract(fr1_rpy.load_rgb(f))) for f in db_frames])
    q = global_descriptor(model.extract(fr1_rpy.load_rgb(frames[101])))
    idx, _ = RetrievalIndex(db).query(q, 3)
    assert idx[0] == 1


def test_numpy_and_faiss_give_the_same_top_k_on_a_real_map():
    """The demo map's keyframe descriptors against real queries (the demo query images'
    descriptors, and the keyframes' own descriptors mixed 70/30 with their successors): the
    same keyframes in the same order; over a whole ranking, order may differ only between
    keyframes whose scores tie within float32 rounding."""
    pytest.importorskip('faiss', reason='faiss-cpu not installed (optional retrieval backend; '
                                        'requirements-dev.txt installs it)')
    from nre_ros.datasets import TumSequence
    from nre_ros.maps import load_map
    from nre_ros.models import load_model
    from nre_ros.paths import shared_file
    m = load_map(shared_file('maps/demo/fr1_rpy.nremap'))
    seq = TumSequence(shared_file('maps/demo/queries'))
    model = load_model(m.spec.name)
    real = np.stack([global_descriptor(model.extract(seq.load_rgb(f))) for f in seq.frames])
    db = np.asarray(m.kf_global)
    mixed = _unit(0.7 * db[:-1] + 0.3 * db[1:]).astype(np.float32)
    q = np.concatenate([real, mixed])
    numpy_index, faiss_index = RetrievalIndex(db, 'numpy'), RetrievalIndex(db, 'faiss')
    assert (numpy_index.backend, faiss_index.backend) == ('numpy', 'faiss')
    assert RetrievalIndex(db, 'auto').backend == 'faiss'
    for k in (1, 5):
        i_np, s_np = numpy_index.query(q, k)
        i_fa, s_fa = faiss_index.query(q, k)
        assert np.array_equal(i_np, i_fa), k
        assert np.allclose(s_np, s_fa, atol=1e-5)
    assert np.array_equal(i_np[len(real):, 0], np.arange(len(mixed)))   # the 70 % keyframe
    i_np, s_np = numpy_index.query(q, len(db))
    i_fa, s_fa = faiss_index.query(q, len(db))
    differ = i_np != i_fa
    exact = (q.astype(np.float64) @ db.T.astype(np.float64))
    assert np.allclose(s_np, s_fa, atol=1e-5)
    assert np.allclose(np.take_along_axis(exact, i_fa, 1)[differ], s_np[differ], atol=1e-5)
    assert differ.mean() < 0.01


def test_pipeline_uses_the_configured_retrieval_backend(monkeypatch):
    from nre_ros.errors import ConfigError
    from nre_ros.maps import load_map
    from nre_ros.paths import shared_file
    from nre_ros.pipeline import PipelineConfig, Relocalizer

    class _NoModel:                         # the index is built before any network runs
        def __init__(self, spec):
            self.spec = spec

    m = load_map(shared_file('maps/demo/fr1_rpy.nremap'))

    def backend(**retrieval):
        config = PipelineConfig.from_dict({'retrieval': retrieval})
        return Relocalizer(m, _NoModel(m.spec), config).index.backend

    assert backend(backend='numpy') == 'numpy'
    with pytest.raises(ConfigError, match='backend'):
        PipelineConfig.from_dict({'retrieval': {'backend': 'annoy'}})
    try:
        import faiss  # noqa: F401
    except ImportError:
        pass
    else:
        assert backend() == backend(backend='faiss') == 'faiss'     # auto: faiss when present
    monkeypatch.setitem(sys.modules, 'faiss', None)                   # as if not installed
    assert backend() == 'numpy'
    with pytest.raises(BackendUnavailable, match='faiss-cpu'):
        backend(backend='faiss')
