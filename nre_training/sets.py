"""The concrete training, validation and held-out evaluation sets.

- train: fr1_rpy frames in no query split (``hard_map`` minus ``query``/``hard_query``), first 85%
  in time: mined RGB-D pairs, **coarse supervision only**: TUM's ground truth has per-pair
  systematic offsets of 1-8 px (MODELS.md: mocap sync, rolling shutter), below a coarse cell
  (8 px) but 0.5-4 fine cells, so it cannot supervise the stride-2 level; Sacre-Coeur COLMAP
  pairs (images other tools hold out excluded; 0.33 px SfM reprojection error) and synthetic
  textured-plane pairs at 320x240 (exact geometry) from a few of those images: coarse + fine.
- val: the last 15% of those fr1 frames (undistorted), disjoint from train: pose accuracy.
- test (never trained on): fr3 cabinet keyframe pairs (co-visibility >= 0.5, 12 per
  easy/medium/hard tercile of viewpoint change) and the NRE MegaDepth pair.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from nre_ros.camera import Camera
from nre_ros.datasets import load_rgb
from nre_ros.preprocess import undistort
from nre_training.data import (CABINET, FR1, MEGADEPTH, SACRE_COEUR, Pair, View,
                               colmap_views_and_pairs, fr1_training_names, lift_depth,
                               mine_pairs, sample_points, synthetic_pair, tum_views,
                               visible_in)


@dataclass
class PairSet:
    """Pairs and the views they reference; ``fine_keys`` = views whose fine features exist."""

    pairs: list[Pair]
    views: dict[str, View]
    fine_keys: set[str] = field(default_factory=set)

    def images(self) -> list[tuple[str, np.ndarray, bool]]:
        keys = sorted({p.src for p in self.pairs} | {p.tgt for p in self.pairs})
        return [(k, self.views[k].image, k in self.fine_keys) for k in keys]


def undistort_view(view: View) -> View:
    """Same view resampled to zero distortion with the same K (image linear, depth nearest)."""
    cam = view.camera
    if not cam.has_distortion:
        return view
    image, pinhole = undistort(view.image, cam)
    depth = None if view.depth is None else undistort(view.depth, cam, nearest=True)[0]
    return View(view.key, image, pinhole, view.T_cam_world, depth)


def fr1_train_val_names(val_fraction: float = 0.15) -> tuple[list[str], list[str]]:
    names = fr1_training_names()
    k = int(round(len(names) * (1 - val_fraction)))
    return names[:k], names[k:]


def training_set(seed: int = 0, max_pairs: int = 600, synthetic: int = 40,
                 colmap: bool = True, points: int = 256, textures: int = 10,
                 synthetic_size: tuple[int, int] = (320, 240),
                 synthetic_fine: int | None = None) -> PairSet:
    """Training pairs with up to ``points`` co-visible points each (see module docstring)."""
    rng = np.random.default_rng(seed)
    train_names, _ = fr1_train_val_names()
    views = tum_views(FR1, train_names, prefix='fr1')
    by_key = {v.key: v for v in views}
    pairs = mine_pairs(views, min_covis=0.3, max_pairs=max_pairs, seed=seed)
    pairs = [sample_points(p, by_key[p.src], by_key[p.tgt], points, rng) for p in pairs]
    fine_keys: set[str] = set()
    sources = list(views)
    if colmap:
        cviews, cpairs = colmap_views_and_pairs(SACRE_COEUR / 'reference_sfm_pycolmap',
                                                SACRE_COEUR / 'images')
        by_key.update({v.key: v for v in cviews})
        fine_keys |= {v.key for v in cviews}
        pairs += [p for p in cpairs if len(p.uv_src) >= 20]
        sources += cviews
    w, h = synthetic_size
    chosen = rng.choice(len(sources), min(textures, len(sources)), replace=False)
    texs = [_crop_view(sources[int(i)], w, h) for i in chosen]
    n_fine = synthetic if synthetic_fine is None else synthetic_fine
    for t in texs:
        by_key[t.key] = t
    for i in range(synthetic):
        tex = texs[int(rng.integers(len(texs)))]
        _, tgt, pair = synthetic_pair(tex, rng, points, key=f'synth{i:03d}')
        pair.src = tex.key
        by_key[tgt.key] = tgt
        if i < n_fine:
            fine_keys |= {tgt.key, tex.key}
        pair.split = 'synthetic'
        pairs.append(pair)
    pairs = [p for p in pairs if len(p.uv_src) >= 8]
    return PairSet(pairs, by_key, fine_keys)


def keypoint_points(ps: PairSet, cache, n: int = 256, seed: int = 0,
                    max_keypoints: int = 1024, margin: float = 8.0) -> PairSet:
    """Re-sample the points of RGB-D and synthetic pairs at XFeat keypoints of the source (the
    points a map holds at inference) instead of random pixels; COLMAP pairs keep their SfM
    points (SIFT keypoints). In place; returns ``ps``."""
    from nre_ros.maps.features import select_keypoints
    rng = np.random.default_rng(seed)
    for p in ps.pairs:
        src, tgt = ps.views[p.src], ps.views[p.tgt]
        if p.split == 'synthetic':
            uv, _ = select_keypoints(cache[p.src]['scores'], max_keypoints)
            h = p.meta['H'] @ np.c_[uv, np.ones(len(uv))].T
            uv_t = (h[:2] / h[2]).T
            ok = (h[2] > 0) & tgt.camera.in_image(uv_t, margin)
        elif src.depth is not None and tgt.depth is not None:
            uv, _ = select_keypoints(cache[p.src]['scores'], max_keypoints, src.depth > 0)
            X, ok = lift_depth(src, uv)
            uv_t, vis = visible_in(tgt, X, margin=margin)
            ok &= vis
        else:
            continue
        ok &= src.camera.in_image(uv, margin)
        keep = np.nonzero(ok)[0]
        keep = np.sort(rng.permutation(keep)[:n])
        p.uv_src, p.uv_tgt = uv[keep], uv_t[keep]
    ps.pairs = [p for p in ps.pairs if len(p.uv_src) >= 8]
    return ps


def _crop_view(view: View, w: int, h: int) -> View:
    """Centre crop to the aspect ratio w:h, then resize to w x h (texture for synthetic
    pairs; only its image and K matter)."""
    H, W = view.image.shape[:2]
    s = min(W / w, H / h)
    cw, ch = int(round(w * s)), int(round(h * s))
    x0, y0 = (W - cw) // 2, (H - ch) // 2
    image = cv2.resize(view.image[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
    cam = view.camera.cropped(x0, y0, cw, ch).resized(w, h)
    return View(f'{view.key}#tex{w}', np.ascontiguousarray(image), cam, view.T_cam_world)


def validation_set(per_split: int = 4, seed: int = 0) -> PairSet:
    """Held-out fr1 frames (after the training frames in time), undistorted."""
    _, val_names = fr1_train_val_names()
    views = [undistort_view(v) for v in tum_views(FR1, val_names, prefix='fr1')]
    pairs = mine_pairs(views, min_covis=0.5, max_pairs=3 * per_split, seed=seed)
    return PairSet(pairs, {v.key: v for v in views}, {k for p in pairs for k in (p.src, p.tgt)})


def cabinet_set(per_split: int = 12, seed: int = 0) -> PairSet:
    """Test pairs of fr3 cabinet keyframes (no fr3 frame is ever trained on)."""
    views = tum_views(CABINET, prefix='cabinet')
    pairs = mine_pairs(views, min_covis=0.5, max_pairs=3 * per_split, seed=seed)
    return PairSet(pairs, {v.key: v for v in views}, {k for p in pairs for k in (p.src, p.tgt)})


def megadepth_set(max_side: int = 640) -> tuple[PairSet, np.ndarray]:
    """The NRE MegaDepth pair (source = map image + its 707 SfM points); returns the set and
    the (N, 3) points. Translation units are SfM units, not metres."""
    data = np.load(Path(MEGADEPTH) / 'sample.npz', allow_pickle=False)
    views = {}
    for which in ('source', 'target'):
        image = load_rgb(Path(MEGADEPTH) / f'{which}_image.jpg')
        cam = Camera(image.shape[1], image.shape[0], data[f'{which}_K'].astype(np.float64))
        cam2 = cam.resized_max_side(max_side)
        image = cv2.resize(image, (cam2.width, cam2.height), interpolation=cv2.INTER_AREA)
        views[which] = View(f'megadepth:{which}', image, cam2,
                            data[f'{which}_P'].astype(np.float64))
    pts = data['p3D'].astype(np.float64)
    pair = Pair(views['source'].key, views['target'].key, np.zeros((0, 2)), np.zeros((0, 2)),
                8.19, 0.85, split='megadepth')
    keys = {v.key for v in views.values()}
    return PairSet([pair], {v.key: v for v in views.values()}, keys), pts
