"""Training data: exact synthetic geometry, occlusion test, pair mining, COLMAP pairs, splits,
and the 'xfeat-ms-nre' model registration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_dataset
from nre_ros.camera import Camera
from nre_training.data import (FR1, SACRE_COEUR, SACRE_COEUR_HELD_OUT, Pair, View,
                               assign_splits, fr1_training_names, mine_pairs, sample_points,
                               split_names, synthetic_pair)

CAM = Camera.from_params(160, 120, 150.0, 150.0, 79.5, 59.5)


def textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((120, 160, 3)) * 255).astype(np.uint8)


def test_fr1_training_frames_exclude_every_query_split():
    shared_dataset(FR1.name)
    names = set(fr1_training_names())
    assert names and not names & set(split_names(FR1, 'query'))
    assert not names & set(split_names(FR1, 'hard_query'))


def test_synthetic_pairs_have_exact_plane_geometry():
    rng = np.random.default_rng(0)
    tex = View('t', textured(), CAM, np.eye(4))
    for _ in range(5):
        src, tgt, pair = synthetic_pair(tex, rng, 64)
        assert len(pair.uv_src) > 10
        h = pair.meta['H'] @ np.c_[pair.uv_src, np.ones(len(pair.uv_src))].T
        np.testing.assert_allclose((h[:2] / h[2]).T, pair.uv_tgt, atol=1e-6)
        assert np.all(CAM.in_image(pair.uv_tgt, 8.0))
        assert tgt.image.shape == src.image.shape and tgt.image.dtype == np.uint8


def test_occluded_points_are_dropped():
    """Source sees a wall at 2 m; the target (same pose) has an occluder at 1 m on the left
    half of its depth image: no sampled point may land there."""
    depth = np.full((120, 160), 2.0, np.float32)
    src = View('s', textured(1), CAM, np.eye(4), depth)
    occluded = depth.copy()
    occluded[:, :80] = 1.0
    tgt = View('t', textured(2), CAM, np.eye(4), occluded)
    pair = sample_points(Pair('s', 't', np.zeros((0, 2)), np.zeros((0, 2)), 0, 1), src, tgt,
                         200, np.random.default_rng(0))
    assert len(pair.uv_src) > 50
    assert pair.uv_tgt[:, 0].min() > 79.0
    np.testing.assert_allclose(pair.uv_src, pair.uv_tgt, atol=1e-6)


def test_mining_thresholds_and_even_splits():
    depth = np.full((120, 160), 2.0, np.float32)
    views = []
    for k, ang in enumerate([0, 5, 10, 15, 20, 60]):
        c, s = np.cos(np.radians(ang)), np.sin(np.radians(ang))
        T = np.eye(4)
        T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]     # yaw about the camera centre
        views.append(View(f'v{k}', textured(k), CAM, T, depth))
    pairs = mine_pairs(views, min_covis=0.3, min_angle=3.0)
    assert pairs and all(p.angle_deg >= 3.0 and p.covis >= 0.3 for p in pairs)
    assert not any('v5' in (p.src, p.tgt) for p in pairs)    # 40+ deg off: no overlap
    counts = {s: sum(p.split == s for p in pairs) for s in ('easy', 'medium', 'hard')}
    assert max(counts.values()) - min(counts.values()) <= 1
    easy = max(p.angle_deg for p in pairs if p.split == 'easy')
    assert easy <= min(p.angle_deg for p in pairs if p.split == 'hard')


def test_assign_splits_terciles():
    pairs = [Pair('a', 'b', np.zeros((0, 2)), np.zeros((0, 2)), a, 1.0) for a in range(9)]
    assert [p.split for p in assign_splits(pairs)] == ['easy'] * 3 + ['medium'] * 3 + ['hard'] * 3


def test_colmap_pairs_skip_held_out_images_and_reproject():
    pytest.importorskip('pycolmap')
    shared_dataset(SACRE_COEUR.name)
    from nre_training.data import colmap_views_and_pairs
    views, pairs = colmap_views_and_pairs(SACRE_COEUR / 'reference_sfm_pycolmap',
                                          SACRE_COEUR / 'images')
    names = {v.key.split(':', 1)[1] for v in views}
    assert names and not names & set(SACRE_COEUR_HELD_OUT)
    assert pairs and all(len(p.uv_src) == len(p.uv_tgt) for p in pairs)
    by_key = {v.key: v for v in views}
    for p in pairs[:3]:
        cam = by_key[p.tgt].camera
        assert max(cam.width, cam.height) == 640 and np.all(cam.in_image(p.uv_tgt))


def test_model_registered_and_identity_heads_equal_xfeat_ms():
    from nre_ros.models import MODEL_NAMES, load_model
    assert 'xfeat-ms-nre' in MODEL_NAMES
    torch.set_num_threads(1)
    ref = load_model('xfeat-ms')
    m = load_model('xfeat-ms-nre', pretrained=False)   # identity heads on a random XFeat
    ref_rand = load_model('xfeat-ms', pretrained=False)
    image = textured(3)
    a, b = m.extract(image, fine=False), ref_rand.extract(image, fine=False)
    assert torch.allclose(a.coarse, b.coarse, atol=1e-6)
    assert m.spec.inv_temperature == ref.spec.inv_temperature
    assert m.spec.coarse_stride == 8 and m.spec.fine_stride == 2 and m.spec.name == 'xfeat-ms-nre'


def test_shipped_heads_load_and_match_the_training_path():
    """load_model('xfeat-ms-nre') (the node's path) == the training code's head on cached
    raw features, and the spec carries the learned temperatures."""
    from nre_ros.models import load_model
    from nre_ros.models.xfeat_nre import WEIGHTS_FILE, load_heads
    from nre_training.features import backbone_features, dense_coarse
    if not WEIGHTS_FILE.exists():
        pytest.skip('no trained heads shipped')
    torch.set_num_threads(1)
    m = load_model('xfeat-ms-nre')
    heads = load_heads(WEIGHTS_FILE)
    image = textured(4)
    raw = backbone_features(m.coarse_net.xfeat, image, fine=False)
    with torch.no_grad():
        ref = dense_coarse(heads.coarse, raw)
    assert torch.allclose(m.extract(image, fine=False).coarse, ref, atol=1e-5)
    assert m.spec.inv_temperature == pytest.approx(heads.inv_temperatures()[0], rel=1e-5)
