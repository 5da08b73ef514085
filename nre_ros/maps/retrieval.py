"""What a query is matched against: top-k image retrieval over keyframe global descriptors
(numpy; FAISS optional, same API), the keyframes nearest to a pose, and a point set spread
over the image."""
from __future__ import annotations

import logging

import numpy as np

from nre_ros.errors import BackendUnavailable, ShapeError
from nre_ros.geometry import rotation_angle_deg

logger = logging.getLogger(__name__)

BACKENDS = ('auto', 'numpy', 'faiss')
# Up to this many queries the numpy backend scores with einsum instead of BLAS: a threaded
# BLAS product waits for its worker threads, milliseconds on a busy CPU (docs/decisions.md)
SMALL_BATCH = 16
SPREAD_GRID = (8, 6)     # image cells (columns, rows) that ``spread_over_image`` spreads over


class RetrievalIndex:
    """Inner-product (cosine) top-k search over (K, G) unit global descriptors.

    Args:
        descriptors: (K, G) float32 L2-normalized keyframe descriptors.
        backend: 'numpy' (exact matmul + argpartition), 'faiss' (IndexFlatIP, exact) or
            'auto' (faiss when importable, else numpy).
    """

    def __init__(self, descriptors: np.ndarray, backend: str = 'numpy') -> None:
        db = np.ascontiguousarray(descriptors, dtype=np.float32)
        if db.ndim != 2 or db.shape[0] == 0:
            raise ShapeError(f'retrieval descriptors must be (K>0, G), got {db.shape}')
        if backend not in BACKENDS:
            raise ShapeError(f'retrieval backend must be one of {BACKENDS}, got {backend!r}')
        self.db = db
        self._faiss = None
        if backend in ('auto', 'faiss'):
            try:
                import faiss
            except ImportError as exc:
                if backend == 'faiss':
                    raise BackendUnavailable('faiss is not installed (pip install faiss-cpu); '
                                             'use backend="numpy"') from exc
            else:
                self._faiss = faiss.IndexFlatIP(db.shape[1])
                self._faiss.add(db)
        self.backend = 'faiss' if self._faiss is not None else 'numpy'

    def __len__(self) -> int:
        return self.db.shape[0]

    @property
    def dim(self) -> int:
        return self.db.shape[1]

    def query(self, global_desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` keyframes for one (G,) or a batch (B, G) of query descriptors.

        Returns:
            indices: (k,) or (B, k) int64 keyframe indices, best first (k clipped to K).
            scores: same shape, float32 cosine similarities, descending.
        """
        q = np.asarray(global_desc, dtype=np.float32)
        single = q.ndim == 1
        q = np.ascontiguousarray(q[None] if single else q)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ShapeError(f'query descriptor must be ({self.dim},) or (B, {self.dim}), '
                             f'got {np.shape(global_desc)}')
        k = max(1, min(int(k), len(self)))
        if self._faiss is not None:
            scores, idx = self._faiss.search(q, k)
            idx = idx.astype(np.int64)
        else:
            if len(q) <= SMALL_BATCH:       # einsum's own loop: one thread, no BLAS wake-up
                sim = np.einsum('bg,kg->bk', q, self.db)              # (B, K)
            else:
                sim = q @ self.db.T
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            ps = np.take_along_axis(sim, part, axis=1)
            order = np.argsort(-ps, axis=1, kind='stable')
            idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
            scores = np.take_along_axis(ps, order, axis=1)
        return (idx[0], scores[0]) if single else (idx, scores)


def nearest_keyframes(kf_T_cam_world: np.ndarray, T_cam_world: np.ndarray,
                      metres_per_degree: float = 0.01, with_roll: bool = True) -> np.ndarray:
    """(K,) keyframe indices sorted by view distance to a pose ``T_cam_world`` (4, 4).

    Distance = full relative rotation angle (deg, roll included: the descriptors are not
    rotation invariant; with ``with_roll=False`` the angle between the optical axes) + distance
    between camera centres / metres_per_degree.
    """
    kf = np.asarray(kf_T_cam_world, np.float64)
    T = np.asarray(T_cam_world, np.float64)
    if with_roll:
        angle = rotation_angle_deg(kf[:, :3, :3], T[:3, :3])
    else:
        angle = np.degrees(np.arccos(np.clip(kf[:, 2, :3] @ T[2, :3], -1.0, 1.0)))
    centres = -np.einsum('kji,kj->ki', kf[:, :3, :3], kf[:, :3, 3])
    centre = -T[:3, :3].T @ T[:3, 3]
    dist = angle + np.linalg.norm(centres - centre, axis=1) / metres_per_degree
    return np.argsort(dist, kind='stable')


def spread_over_image(uv: np.ndarray, valid: np.ndarray, size: tuple[int, int], cap: int,
                      grid: tuple[int, int] = SPREAD_GRID) -> np.ndarray:
    """Indices (sorted, at most ``cap``) of points at pixels ``uv`` (N, 2) in an image of
    ``size`` (W, H), taken round-robin over the cells of a ``grid`` (columns, rows): every
    cell's first point (in the given order) before any cell's second; points not ``valid``
    (N,) bool (off the image or behind the camera) after all the others."""
    n = len(uv)
    gx, gy = grid
    col = np.clip(uv[:, 0] * gx / size[0], 0, gx - 1).astype(np.int64)
    row = np.clip(uv[:, 1] * gy / size[1], 0, gy - 1).astype(np.int64)
    cell = np.where(valid, row * gx + col, gx * gy)
    order = np.argsort(cell, kind='stable')
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.searchsorted(cell[order], cell[order])
    rank = np.where(valid, rank, n)
    return np.sort(np.argsort(rank, kind='stable')[:cap])
