"""Robustness to the camera and the light: recall per query variant, nre_ros vs its peers.

    PYTHONPATH=. python benchmarks/robustness.py            # shipped demo map, 6 fr1 queries
    PYTHONPATH=. python benchmarks/robustness.py --all      # all 48 held-out fr1 queries (slow)
    PYTHONPATH=. python benchmarks/robustness.py --dataset fr1_hard --all   # accuracy.py's maps

Variants of the held-out queries of ``benchmarks/accuracy.py`` with exact ground truth:
``half_res`` (image resized to half, K scaled by the pixel-centre rule), ``crop_offcentre``
(a 400 x 300 crop off the centre, principal point moved with it), ``rot90/180/270`` (undistorted
image turned counter-clockwise, K and the camera frame turned with it), ``dark`` (x 0.3),
``gamma_bright`` (gamma 0.5), ``blur`` (Gaussian sigma 2 px), ``noise`` (Gaussian sigma 15).
Recall at (0.25 m, 2 deg) per variant for nre_ros and the matcher peers of
``benchmarks/accuracy_peers.py`` (fix thresholds: accuracy.py's DEFAULT_THRESHOLDS). Then the
wrong-intrinsics sweep (nre_ros only): the right images with a wrong K (focal x0.67 to x2,
principal point moved 80 px), counting published poses and those off by more than
(0.25 m, 2 deg). Each wrong K is one stream, as from a camera driver publishing that
CameraInfo: the queries in their order, one after the other, all counted (also the first ones,
before the relocalizer's evidence about that camera suffices); the relocalizer keeps its
evidence per camera (size, K, distortion), so each wrong K starts with none, and the right-K
variants above are streams of their own cameras too. ``from query`` is the first query from
which the camera's combined evidence refused every pose (``info['camera_intrinsics']``).
Maps and peer databases are accuracy.py's (built into its cache when absent); ``--peers`` with
no names runs nre_ros alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import nre_ros  # noqa: F401  (before torch: passive OpenMP waiting, as the product)
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as acc  # noqa: E402
from accuracy_peers import PEERS, Extractors, Peers  # noqa: E402
from common import run_metadata  # noqa: E402

from nre_ros.camera import Camera  # noqa: E402
from nre_ros.geometry import pose_error  # noqa: E402
from nre_ros.maps import load_map  # noqa: E402
from nre_ros.models import DEFAULT_MODEL, load_model  # noqa: E402
from nre_ros.pipeline import PipelineConfig, Relocalizer, load_configured_model  # noqa: E402
from nre_ros.preprocess import rotate_quarter_turns, undistort  # noqa: E402
from nre_ros.threads import apply_threads  # noqa: E402

Variant = Callable[[np.ndarray, Camera, np.ndarray], tuple[np.ndarray, Camera, np.ndarray]]
THRESHOLD = (0.25, 2.0)       # metres, degrees
DEMO_MAP = 'maps/demo/fr1_rpy.nremap'


def _half(img, cam, T):
    c = cam.resized(cam.width // 2, cam.height // 2)
    return cv2.resize(img, (c.width, c.height), interpolation=cv2.INTER_AREA), c, T


def _crop(img, cam, T):
    x0, y0, w, h = 200, 150, 400, 300            # off-centre: the principal point moves
    return np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w]), cam.cropped(x0, y0, w, h), T


def _rot(k: int) -> Variant:
    def f(img, cam, T):
        img, cam = undistort(img, cam)           # rotate_quarter_turns needs a pinhole image
        img, cam, R = rotate_quarter_turns(img, cam, k)
        R4 = np.eye(4)
        R4[:3, :3] = R
        return img, cam, R4 @ T
    return f


def _photometric(fn) -> Variant:
    return lambda img, cam, T: (np.clip(fn(img.astype(np.float32)), 0, 255).astype(np.uint8),
                                cam, T)


_NOISE = np.random.default_rng(0)
VARIANTS: dict[str, Variant] = {
    'original': lambda img, cam, T: (img, cam, T),
    'half_res': _half,
    'crop_offcentre': _crop,
    'rot90': _rot(1), 'rot180': _rot(2), 'rot270': _rot(3),
    'dark': _photometric(lambda x: 0.3 * x),
    'gamma_bright': _photometric(lambda x: 255.0 * (x / 255.0) ** 0.5),
    'blur': lambda img, cam, T: (cv2.GaussianBlur(img, (0, 0), 2.0), cam, T),
    'noise': _photometric(lambda x: x + _NOISE.normal(0.0, 15.0, x.shape)),
}


def _wrong_k(fx_scale: float = 1.0, dcx: float = 0.0, dcy: float = 0.0):
    def f(cam: Camera) -> Camera:
        K = cam.K.copy()
        K[0, 0] *= fx_scale
        K[1, 1] *= fx_scale
        K[0, 2] += dcx
        K[1, 2] += dcy
        return Camera(cam.width, cam.height, K, cam.dist)
    return f


SWEEP = {'f x0.67': _wrong_k(0.67), 'f x1.25': _wrong_k(1.25), 'f x1.5': _wrong_k(1.5),
         'f x2': _wrong_k(2.0), 'cx +80 px': _wrong_k(dcx=80.0), 'cy +80 px': _wrong_k(dcy=80.0)}


def good(T_est, T_gt) -> bool:
    if T_est is None:
        return False
    dt, dr = pose_error(T_est, T_gt)
    return bool(dt <= THRESHOLD[0] and dr <= THRESHOLD[1])


def _dump_row(i: int, name: str, variant: str, o, T_gt: np.ndarray) -> dict:
    """One query's nre_ros outcome as a JSON-serializable dict."""
    keys = ('supported', 'points', 'quarter_turns', 'orientations_searched', 'focal_ratio',
            'coarse_mean_cost', 'chance_support', 'chance_support_bound', 'init')
    row = {'query': i, 'name': name, 'variant': variant, 'ok': bool(o.ok),
           'reason': None if o.ok else o.reason, 'detail': None if o.ok else o.detail,
           **{k: o.info[k] for k in keys if k in o.info},
           'keyframe': (o.info.get('keyframes') or [None])[0]}
    if o.ok:
        dt, dr = pose_error(o.T_cam_world, T_gt)
        row.update(error_m=float(dt), error_deg=float(dr), num_supported=o.num_supported,
                   num_points=o.num_points)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--dataset', default='demo',
                    choices=['demo', 'fr1_hard', 'fr1_easy', 'cabinet'])
    ap.add_argument('--every', type=int, default=8, help='every n-th held-out query')
    ap.add_argument('--all', action='store_true', help='every query (--every 1)')
    ap.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument('--peers', nargs='*', default=list(PEERS), choices=list(PEERS))
    ap.add_argument('--no-sweep', action='store_true', help='skip the wrong-intrinsics sweep')
    ap.add_argument('--dump', type=Path, help='write one JSON line per query and variant '
                    '(nre_ros outcome: reason, support, error of a published pose)')
    ap.add_argument('--cache', type=Path, default=acc.ROOT / 'out' / 'accuracy_cache')
    args = ap.parse_args(argv)
    apply_threads(PipelineConfig().num_threads)
    meta = run_metadata()
    t0 = time.perf_counter()
    if args.dataset == 'demo':
        from nre_ros.paths import shared_file
        map_path, map_name, query_set = shared_file(DEMO_MAP), 'demo', 'fr1_easy'
        acc.MAPS['demo'] = (acc.FR1, 'map')          # peer database from the same keyframes
    else:
        map_name, query_set = acc.DATASETS[args.dataset][2], args.dataset
        map_path = acc.get_map(map_name, args.cache, load_model(DEFAULT_MODEL, 'cpu'))
    map_ = load_map(map_path)
    reloc = Relocalizer(map_, load_configured_model(DEFAULT_MODEL, PipelineConfig()))
    reloc.warmup()
    peers = None
    if args.peers:
        ex = Extractors(with_lighterglue='xfeat_lighterglue_poselib' in args.peers)
        db = acc.get_peer_db(map_name, map_, args.cache, ex)
        peers = Peers(reloc, db, ex, args.peers)
    qs = acc.queries(query_set, 1 if args.all else args.every, None)
    methods = ['nre_ros'] + list(args.peers)
    hits = {v: {m: 0 for m in methods} for v in args.variants}
    camera_refused = {v: 0 for v in args.variants}     # right K, refused by the camera's evidence
    dump = args.dump.open('w') if args.dump else None
    for i, q in enumerate(qs):
        image0 = q.image()
        for v in args.variants:
            img, cam, T_gt = VARIANTS[v](image0, q.camera, q.T_gt)
            o = reloc.localize(img, cam)
            hits[v]['nre_ros'] += good(o.T_cam_world if o.ok else None, T_gt)
            camera_refused[v] += o.info.get('camera_intrinsics', {}).get('consistent') is False
            if dump is not None:
                dump.write(json.dumps(_dump_row(i, q.name, v, o, T_gt)) + '\n')
                dump.flush()
            if peers is not None:
                for m, (T, n, _) in peers.localize(img, cam).items():
                    hits[v][m] += good(T if n >= acc.DEFAULT_THRESHOLDS[m] else None, T_gt)
        acc.log(f'  {i + 1}/{len(qs)} ' + ' '.join(f'{v}={hits[v]["nre_ros"]}'
                                                 for v in args.variants))
    if dump is not None:
        dump.close()
    sweep = {}
    if not args.no_sweep:
        for name, wrong in SWEEP.items():
            published = wrong_count = 0
            since = None                  # first query of the camera's inconsistent verdict
            for i, q in enumerate(qs):
                o = reloc.localize(q.image(), wrong(q.camera))
                if o.ok:
                    published += 1
                    wrong_count += not good(o.T_cam_world, q.T_gt)
                refused = o.info.get('camera_intrinsics', {}).get('consistent') is False
                since = (i if since is None else since) if refused else None
            sweep[name] = (published, wrong_count, since)
            acc.log(f'  sweep {name}: {published} published, {wrong_count} wrong, camera '
                    f'refused from query {since}')
        if 'original' in hits:
            sweep['right K'] = (hits['original']['nre_ros'], None, None)
    wall = time.perf_counter() - t0
    n = len(qs)
    print(f'# benchmarks/robustness.py, {args.dataset} map, {n} {query_set} queries (every '
          f'{1 if args.all else args.every}), recall at ({THRESHOLD[0]} m, {THRESHOLD[1]} deg); '
          f'commit {meta.get("commit", "?")}, {wall:.0f} s')
    print('| variant | ' + ' | '.join(methods) + ' |')
    print('|---' * (len(methods) + 1) + '|')
    for v in args.variants:
        print(f'| {v} | ' + ' | '.join(f'{hits[v][m] / n:.2f}' for m in methods) + ' |')
    wrongly = {v: k for v, k in camera_refused.items() if k}
    print(f'\nright-K queries judged inconsistent by their camera\'s evidence: '
          + (', '.join(f'{v} {k}' for v, k in wrongly.items()) if wrongly else 'none'))
    if sweep:
        print(f'\nwrong intrinsics (nre_ros, {n} queries each): published / wrong among them '
              f'(error over ({THRESHOLD[0]} m, {THRESHOLD[1]} deg))')
        print('| intrinsics | published | wrong | from query |')
        print('|---|---|---|---|')
        total = wrong_total = 0
        for name, (p, w, since) in sweep.items():
            if w is None:
                print(f'| {name} (localized right, of {n}) | {p} | - | - |')
                continue
            total += n
            wrong_total += w
            print(f'| {name} | {p} | {w} | {"-" if since is None else since} |')
        print(f'| all wrong-K queries | | {wrong_total} of {total} '
              f'({100.0 * wrong_total / max(total, 1):.1f} %) | |')


if __name__ == '__main__':
    main()
