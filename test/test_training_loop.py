"""Training loop: checkpoints in safetensors, deterministic resume, 1-process DDP (gloo).

Fast tests run on a fake feature cache (random tensors); the short real run is ``slow``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nre_ros.errors import BackendUnavailable, MapFormatError
from nre_ros.models.xfeat_nre import NreHeads, load_heads, save_heads
from nre_training.features import FeatureCache
from nre_training.train import (TrainConfig, TrainPair, draw_batch, load_checkpoint,
                                make_state, save_checkpoint, train_steps)

ROOT = Path(__file__).resolve().parents[1]


def fake_cache_and_pairs(n_images: int = 3, n_points: int = 40, seed: int = 0
                         ) -> tuple[FeatureCache, list[TrainPair]]:
    """64x80 images: coarse 8x10 grid, fine 32x40 grid, random raw features; points shared
    by the same random offsets so the task is learnable."""
    g = torch.Generator().manual_seed(seed)
    cache = FeatureCache()
    for i in range(n_images):
        cache.entries[f'im{i}'] = {
            'coarse': torch.randn(64, 8, 10, generator=g),
            'fine': torch.randn(64, 32, 40, generator=g).to(torch.float16),
            'scores': torch.rand(64, 80, generator=g),
            'size': torch.tensor([80, 64])}
    pairs = []
    for i in range(n_images):
        j = (i + 1) % n_images
        uv_s = torch.rand(n_points, 2, generator=g) * torch.tensor([60.0, 44.0]) + 10
        uv_t = uv_s + torch.tensor([3.0, -2.0])
        pairs.append(TrainPair(f'im{i}', f'im{j}', uv_s, uv_t, fine=True))
    return cache, pairs


def small_cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch=2, points=16, window=8, jitter=1.0, progress=False,
                validate=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_identity_heads_reproduce_normalized_features():
    heads = NreHeads()
    x = torch.randn(2, 64, 5, 7)
    assert torch.allclose(heads.coarse(x), torch.nn.functional.normalize(x, dim=1), atol=1e-6)
    assert heads.inv_temperatures() == pytest.approx((20.0, 20.0))


def test_batches_are_a_function_of_seed_and_step():
    _, pairs = fake_cache_and_pairs()
    cfg = small_cfg(batch=4)
    a, b = draw_batch(pairs, 5, cfg), draw_batch(pairs, 5, cfg)
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b))
    # two ranks split one step's batch
    r0, r1 = draw_batch(pairs, 5, cfg, 0, 2), draw_batch(pairs, 5, cfg, 1, 2)
    assert len(r0) + len(r1) == 4


def test_checkpoint_reload_is_bit_identical_and_resume_matches(tmp_path):
    torch.set_num_threads(1)
    cache, pairs = fake_cache_and_pairs()
    cfg = small_cfg()
    full = make_state(cfg)
    train_steps(full, pairs, cache, cfg, 6)

    half = make_state(cfg)
    train_steps(half, pairs, cache, cfg, 3)
    path = save_checkpoint(tmp_path / 'ckpt.safetensors', half.heads, half.opt, half.step, cfg)
    assert path.read_bytes()[:8]  # safetensors header length, not a pickle
    resumed = make_state(cfg)
    assert load_checkpoint(path, resumed.heads, resumed.opt) == 3
    for (k, a), (_, b) in zip(half.heads.state_dict().items(),
                              resumed.heads.state_dict().items()):
        assert torch.equal(a, b), k
    sa, sb = half.opt.state_dict()['state'], resumed.opt.state_dict()['state']
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    resumed.step = 3
    train_steps(resumed, pairs, cache, cfg, 6)
    for (k, a), (_, b) in zip(full.heads.state_dict().items(),
                              resumed.heads.state_dict().items()):
        assert torch.equal(a, b), k


def test_heads_file_roundtrip(tmp_path):
    heads = NreHeads()
    with torch.no_grad():
        heads.fine.conv2.weight.normal_()
        heads.log_inv_temperature.add_(0.3)
    path = save_heads(heads, tmp_path / 'h.safetensors', {'steps': 1})
    back = load_heads(path)
    for (k, a), (_, b) in zip(heads.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    (tmp_path / 'bad.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(MapFormatError, match='cannot read xfeat-ms-nre weights'):
        load_heads(tmp_path / 'bad.safetensors')
    with pytest.raises(BackendUnavailable, match='nre-ros train'):
        load_heads(tmp_path / 'missing.safetensors')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_one_process_gloo_smoke(tmp_path):
    """torchrun-style environment, world size 1, gloo: DDP wraps the loss and steps."""
    script = textwrap.dedent(f'''
        import sys, torch, torch.distributed as dist
        sys.path.insert(0, {str(ROOT / 'test')!r})
        from test_training_loop import fake_cache_and_pairs, small_cfg
        from nre_training.train import distributed, make_state, train_steps
        rank, world = distributed()
        assert dist.is_initialized() and dist.get_backend() == 'gloo' and world == 1
        cache, pairs = fake_cache_and_pairs()
        cfg = small_cfg()
        st = make_state(cfg)
        train_steps(st, pairs, cache, cfg, 3, rank, world)
        assert st.step == 3 and all(torch.isfinite(torch.tensor(r['loss'])) for r in st.history)
        dist.destroy_process_group()
        print('DDP-OK')
    ''')
    env = dict(os.environ, RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'DDP-OK' in out.stdout


@pytest.mark.slow
def test_short_real_training_run_loss_decreases_and_reloads(tmp_path):
    """<= 3 min on CPU: real fr1 pairs (coarse) + synthetic plane pairs (coarse + fine)."""
    from nre_training.data import FR1, fr1_training_names, mine_pairs, sample_points, tum_views
    from nre_training.sets import PairSet, _crop_view
    from nre_training.data import synthetic_pair
    from nre_training.train import to_train_pairs
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    views = tum_views(FR1, fr1_training_names()[:60:6], prefix='fr1')
    by_key = {v.key: v for v in views}
    pairs = [sample_points(p, by_key[p.src], by_key[p.tgt], 128, rng)
             for p in mine_pairs(views, max_pairs=24)]
    fine_keys = set()
    for i, tex in enumerate(_crop_view(v, 160, 128) for v in views[:2]):
        by_key[tex.key] = tex
        fine_keys.add(tex.key)
        for k in range(2):
            _, tgt, pair = synthetic_pair(tex, rng, 128, key=f's{i}{k}')
            pair.src = tex.key
            by_key[tgt.key] = tgt
            fine_keys.add(tgt.key)
            pairs.append(pair)
    ps = PairSet(pairs, by_key, fine_keys)
    cache = FeatureCache()
    for key, image, fine in ps.images():
        cache.add_images([(key, image)], fine=fine, progress=False)
    tp = to_train_pairs(ps)
    cfg = TrainConfig(steps=40, batch=6, points=64, lr=3e-3, progress=False, validate=False)
    st = make_state(cfg)
    train_steps(st, tp, cache, cfg, 40)
    losses = np.array([r['loss'] for r in st.history])
    assert losses[-10:].mean() < losses[:10].mean(), losses
    path = save_checkpoint(tmp_path / 'c.safetensors', st.heads, st.opt, st.step, cfg)
    again = make_state(cfg)
    assert load_checkpoint(path, again.heads, again.opt) == 40
    assert all(torch.equal(a, b) for a, b in zip(st.heads.state_dict().values(),
                                                 again.heads.state_dict().values()))
