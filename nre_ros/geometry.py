"""Rigid-body geometry on numpy arrays (float64).

Conventions (used everywhere in nre_ros):
- ``T_a_b`` is a (4, 4) homogeneous transform that maps a point from frame b to frame a:
  ``p_a = T_a_b @ p_b``. Compose by cancelling inner letters: ``T_a_c = T_a_b @ T_b_c``.
- Camera frames are optical frames (REP 103 / OpenCV): x right, y down, z forward.
- Quaternions are Hamilton, scalar last ``(qx, qy, qz, qw)`` as in ROS and TUM files.
- Rotation vectors (axis * angle, radians) are used for small increments and errors.

The solver has torch twins of the few functions it needs on batches (``nre_ros.solver``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from nre_ros.errors import ShapeError


def _check_transform(T: np.ndarray, name: str = 'T') -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ShapeError(f'{name} must have shape (..., 4, 4), got {T.shape}')
    return T


def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Build (..., 4, 4) transforms from rotations (..., 3, 3) and translations (..., 3)."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert(T_a_b: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4): returns ``T_b_a``."""
    T_a_b = _check_transform(T_a_b, 'T_a_b')
    R = T_a_b[..., :3, :3]
    t = T_a_b[..., :3, 3]
    R_inv = np.swapaxes(R, -1, -2)
    return make_transform(R_inv, -np.einsum('...ij,...j->...i', R_inv, t))


def transform_points(T_a_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Map (N, 3) points from frame b to frame a with a (4, 4) transform."""
    T_a_b = _check_transform(T_a_b, 'T_a_b')
    points_b = np.asarray(points_b, dtype=np.float64)
    if points_b.shape[-1] != 3:
        raise ShapeError(f'points must have shape (N, 3), got {points_b.shape}')
    return points_b @ T_a_b[:3, :3].T + T_a_b[:3, 3]


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) scalar last -> rotation matrices (..., 3, 3). Normalizes q."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ShapeError(f'quaternion must have shape (..., 4), got {q.shape}')
    norm = np.linalg.norm(q, axis=-1)
    if not np.all(np.isfinite(norm)) or np.any(norm < 1e-9):
        raise ShapeError('quaternion has zero or non-finite norm')
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), scalar last, qw >= 0."""
    R = np.asarray(R, dtype=np.float64)
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat()
    q = np.where(q[:, 3:4] < 0, -q, q)
    return q.reshape(R.shape[:-2] + (4,))


def pose_to_tum(T_world_cam: np.ndarray) -> np.ndarray:
    """(..., 4, 4) transforms -> (..., 7) rows ``tx ty tz qx qy qz qw``."""
    T = _check_transform(T_world_cam, 'T_world_cam')
    return np.concatenate([T[..., :3, 3], matrix_to_quat(T[..., :3, :3])], axis=-1)


def tum_to_pose(rows: np.ndarray) -> np.ndarray:
    """(..., 7) rows ``tx ty tz qx qy qz qw`` -> (..., 4, 4) transforms."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape[-1] != 7:
        raise ShapeError(f'TUM pose rows must have 7 values, got {rows.shape}')
    return make_transform(quat_to_matrix(rows[..., 3:]), rows[..., :3])


def so3_exp(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) -> rotation matrices (..., 3, 3)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    return Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(rotvec.shape + (3,))


def se3_exp(xi: np.ndarray) -> np.ndarray:
    """Twists (rho, phi) (..., 6) -> (..., 4, 4) ``expm(hat(xi))`` in closed form (inverse of
    ``se3_log``); a left increment on ``T_cam_world`` is ``se3_exp(xi) @ T``."""
    xi = np.asarray(xi, dtype=np.float64)
    if xi.shape[-1] != 6:
        raise ShapeError(f'twists must have shape (..., 6), got {xi.shape}')
    if xi.ndim == 1:
        return _se3_exp_one(*xi.tolist())
    rho, phi = xi[..., :3], xi[..., 3:]
    th2 = np.sum(phi * phi, axis=-1)[..., None, None]
    th = np.sqrt(th2)
    small = th2 < 1e-12
    safe = np.where(small, 1.0, th)
    # Taylor series below 1e-6 rad (the closed forms lose all digits there)
    a = np.where(small, 1 - th2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - th2 / 24, (1 - np.cos(safe)) / safe ** 2)
    c = np.where(small, 1.0 / 6 - th2 / 120, (safe - np.sin(safe)) / safe ** 3)
    W = skew(phi)
    W2 = W @ W
    eye = np.eye(3)
    R = eye + a * W + b * W2
    V = eye + b * W + c * W2
    return make_transform(R, np.einsum('...ij,...j->...i', V, rho))


def _se3_exp_one(r0: float, r1: float, r2: float, p0: float, p1: float, p2: float
                 ) -> np.ndarray:
    """``se3_exp`` of one twist in scalar arithmetic (the solvers' per-step case, where
    numpy's per-call overhead would dominate); the same series and closed forms."""
    th2 = p0 * p0 + p1 * p1 + p2 * p2
    if th2 < 1e-12:
        a, b, c = 1 - th2 / 6, 0.5 - th2 / 24, 1.0 / 6 - th2 / 120
    else:
        th = math.sqrt(th2)
        sin, cos = math.sin(th), math.cos(th)
        a, b, c = sin / th, (1 - cos) / th2, (th - sin) / (th2 * th)
    # W = [phi]x, W2 = W @ W = phi phi^T - th2 I
    w00, w11, w22 = p0 * p0 - th2, p1 * p1 - th2, p2 * p2 - th2
    w01, w02, w12 = p0 * p1, p0 * p2, p1 * p2
    R = ((1 + b * w00, -a * p2 + b * w01, a * p1 + b * w02),
         (a * p2 + b * w01, 1 + b * w11, -a * p0 + b * w12),
         (-a * p1 + b * w02, a * p0 + b * w12, 1 + b * w22))
    V = ((1 + c * w00, -b * p2 + c * w01, b * p1 + c * w02),
         (b * p2 + c * w01, 1 + c * w11, -b * p0 + c * w12),
         (-b * p1 + c * w02, b * p0 + c * w12, 1 + c * w22))
    t = [v[0] * r0 + v[1] * r1 + v[2] * r2 for v in V]
    return np.array([[*R[0], t[0]], [*R[1], t[1]], [*R[2], t[2]], [0.0, 0.0, 0.0, 1.0]])


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Angle (deg) of ``R_a R_b^T`` for rotations (..., 3, 3) (broadcast), e.g. the rotation
    error between two ``R_cam_world``."""
    tr = np.sum(np.asarray(R_a, np.float64) * np.asarray(R_b, np.float64), axis=(-1, -2))
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3)."""
    R = np.asarray(R, dtype=np.float64)
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(R.shape[:-2] + (3,))


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) vectors -> (..., 3, 3) cross-product matrices ``[v]x``."""
    v = np.asarray(v, dtype=np.float64)
    S = np.zeros(v.shape + (3,))
    S[..., 0, 1], S[..., 0, 2] = -v[..., 2], v[..., 1]
    S[..., 1, 0], S[..., 1, 2] = v[..., 2], -v[..., 0]
    S[..., 2, 0], S[..., 2, 1] = -v[..., 1], v[..., 0]
    return S


def adjoint(T_a_b: np.ndarray) -> np.ndarray:
    """(6, 6) adjoint of a transform for twists ordered (translation, rotation).

    ``Ad(T) = [[R, [t]x R], [0, R]]``: maps a left increment in frame b to frame a.
    """
    T_a_b = _check_transform(T_a_b, 'T_a_b')
    R, t = T_a_b[:3, :3], T_a_b[:3, 3]
    A = np.zeros((6, 6))
    A[:3, :3] = R
    A[:3, 3:] = skew(t) @ R
    A[3:, 3:] = R
    return A


def pose_error(T_est: np.ndarray, T_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) errors between camera poses ``T_cam_world``.

    The translation error compares camera centres, so it does not depend on which direction
    the transforms map. Works on (4, 4) or batched (N, 4, 4) arrays.
    """
    T_est = _check_transform(T_est, 'T_est')
    T_gt = _check_transform(T_gt, 'T_gt')
    c_est = invert(T_est)[..., :3, 3]
    c_gt = invert(T_gt)[..., :3, 3]
    dt = np.linalg.norm(c_est - c_gt, axis=-1)
    return dt, rotation_angle_deg(T_est[..., :3, :3], T_gt[..., :3, :3])


def is_rigid(T: np.ndarray, atol: float = 1e-5) -> bool:
    """True if T is a finite (4, 4) rigid transform (orthonormal R, det +1, last row 0 0 0 1)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return (np.allclose(R @ R.T, np.eye(3), atol=atol) and abs(np.linalg.det(R) - 1.0) < atol
            and np.allclose(T[3], [0, 0, 0, 1], atol=atol))


def se3_log(T: np.ndarray) -> np.ndarray:
    """(4, 4) rigid transform -> twist (rho, phi) (6,) with ``T = expm(hat(rho, phi))``."""
    T = _check_transform(T, 'T')
    phi = so3_log(T[:3, :3])
    theta = np.linalg.norm(phi)
    W = skew(phi)
    if theta < 1e-8:
        V_inv = np.eye(3) - 0.5 * W
    else:
        coef = (1.0 - theta * np.sin(theta) / (2.0 * (1.0 - np.cos(theta)))) / theta**2
        V_inv = np.eye(3) - 0.5 * W + coef * (W @ W)
    return np.concatenate([V_inv @ T[:3, 3], phi])


@dataclass(frozen=True)
class Sim3:
    """Similarity ``p_map = scale * R @ p_model + t`` (a map's ``map_T_model``): the metric,
    ROS-facing map frame from the frame the map was built in."""

    rotation: np.ndarray     # (3, 3)
    translation: np.ndarray  # (3,)
    scale: float = 1.0

    @staticmethod
    def identity() -> 'Sim3':
        return Sim3(np.eye(3), np.zeros(3), 1.0)

    @staticmethod
    def from_matrix(S: np.ndarray) -> 'Sim3':
        """(4, 4) ``[s R | t]`` -> Sim3 (the scale is the cube root of det(s R))."""
        S = _check_transform(S, 'S')
        s = float(np.cbrt(np.linalg.det(S[:3, :3])))
        if not math.isfinite(s) or s <= 0:
            raise ShapeError(f'similarity has a non-positive scale: {S.tolist()}')
        return Sim3(S[:3, :3] / s, S[:3, 3].copy(), s)

    def matrix(self) -> np.ndarray:
        """(4, 4) ``[s R | t]``."""
        return make_transform(self.scale * np.asarray(self.rotation), self.translation)

    def to_dict(self) -> dict:
        return {'rotation': np.asarray(self.rotation).tolist(),
                'translation': np.asarray(self.translation).tolist(), 'scale': float(self.scale)}

    def camera_pose_in_map(self, T_cam_model: np.ndarray) -> np.ndarray:
        """Solver pose ``T_cam_model`` (model units) -> rigid ``T_map_cam`` (map units)."""
        T_model_cam = invert(T_cam_model)
        R = self.rotation @ T_model_cam[..., :3, :3]
        t = self.scale * np.einsum('ij,...j->...i', self.rotation, T_model_cam[..., :3, 3]) \
            + self.translation
        return make_transform(R, t)

    def camera_pose_in_model(self, T_map_cam: np.ndarray) -> np.ndarray:
        """Inverse of ``camera_pose_in_map``: rigid ``T_map_cam`` -> ``T_cam_model``."""
        T_map_cam = _check_transform(T_map_cam, 'T_map_cam')
        R_t = np.asarray(self.rotation).T
        R = R_t @ T_map_cam[..., :3, :3]
        t = np.einsum('ij,...j->...i', R_t, T_map_cam[..., :3, 3] - self.translation) / self.scale
        return invert(make_transform(R, t))
