"""The published covariance: one model from the solver's covariance to ROS and back.

Chain (docs/ros.md "Covariance"): the relocalizer returns Σ_ξ, the covariance of a left increment
ξ = (ρ, φ) on its T_cam_model, already calibrated (Σ_ξ = k² H⁻¹ with k² =
``PipelineConfig.solver.verdict.covariance_scale``, from NEES; the pipeline needs calibrated
covariances for its tracking prior test, so k² stays there). ``CovarianceModel.to_map`` is
then the only place that reshapes it for publishing: frame change to (x, y, z, rx, ry, rz) of
base in map, per-block scales, inflation when few points support the fix, std floors.
``prior_from_map`` is the inverse used for priors (/initialpose, the last fix).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nre_ros.errors import InputError
from nre_ros.geometry import adjoint


@dataclass(frozen=True)
class CovarianceModel:
    """Publishing shape of the covariance (docs/ros.md "Covariance")."""

    position_scale: float = 1.0       # factor on position variances
    rotation_scale: float = 1.0       # factor on rotation variances
    min_position_std: float = 0.02    # m
    min_rotation_std: float = 0.005   # rad
    inflation_points: int = 0         # variances x N / num_supported below N points (0 = off)

    @classmethod
    def of(cls, cfg) -> 'CovarianceModel':
        """The covariance fields of a StreamConfig."""
        return cls(cfg.position_covariance_scale, cfg.rotation_covariance_scale,
                   cfg.min_position_std, cfg.min_rotation_std, cfg.covariance_inflation_points)

    def inflation(self, num_supported: int) -> float:
        """Variance factor for a fix supported by ``num_supported`` points (>= 1)."""
        if not self.inflation_points or num_supported <= 0:
            return 1.0
        return max(1.0, self.inflation_points / num_supported)

    def to_map(self, cov_xi: np.ndarray, T_map_base: np.ndarray, T_base_cam: np.ndarray,
               scale: float = 1.0, num_supported: int = 0) -> np.ndarray:
        """Solver covariance (6, 6) -> symmetric PD (6, 6) covariance of base in map (ROS
        order); ``scale`` = metres per model unit (map_T_model).

        Raises:
            InputError: not a finite (6, 6) array.
        """
        cov_xi = np.asarray(cov_xi, dtype=np.float64)
        if cov_xi.shape != (6, 6) or not np.all(np.isfinite(cov_xi)):
            raise InputError(f'solver covariance must be a finite (6, 6) array, got '
                             f'{cov_xi.shape}')
        A = covariance_jacobian(T_map_base, T_base_cam, scale)
        d = np.sqrt(np.array([self.position_scale] * 3 + [self.rotation_scale] * 3)
                    * self.inflation(num_supported))
        cov = A @ cov_xi @ A.T
        cov = 0.5 * (cov + cov.T) * d[:, None] * d[None, :]
        return _floor(cov, self.min_position_std, self.min_rotation_std)

    def prior_from_map(self, cov_map: np.ndarray, T_map_base: np.ndarray,
                       T_base_cam: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Inverse of the frame change of ``to_map`` (for priors; scales and inflation are not
        undone); zero variances are raised to the floors first.

        RViz's "2D Pose Estimate" fills only x, y and yaw: z / roll / pitch come as 0 and are
        read as "as certain as the floors".
        """
        cov = np.asarray(cov_map, dtype=np.float64).reshape(6, 6)
        cov = _floor(0.5 * (cov + cov.T), self.min_position_std, self.min_rotation_std)
        A_inv = np.linalg.inv(covariance_jacobian(T_map_base, T_base_cam, scale))
        cov_xi = A_inv @ cov @ A_inv.T
        return 0.5 * (cov_xi + cov_xi.T)


def covariance_jacobian(T_map_base: np.ndarray, T_base_cam: np.ndarray,
                        scale: float = 1.0) -> np.ndarray:
    """(6, 6) A with Σ_ros = A Σ_ξ Aᵀ (docs/ros.md "Covariance").

    ξ = (ρ, φ) is a left increment on the solver's T_cam_model (ρ in model units, ``scale``
    metres per model unit); the result is (x, y, z, rx, ry, rz) of base in map, rotations
    about the fixed map axes. A = −diag(R_map_base, R_map_base) · Ad(T_base_cam) · diag(s, 1).
    """
    R = T_map_base[:3, :3]
    D = np.zeros((6, 6))
    D[:3, :3] = D[3:, 3:] = R
    S = np.diag([scale] * 3 + [1.0] * 3)
    return -D @ adjoint(T_base_cam) @ S


def _floor(cov: np.ndarray, min_position_std: float, min_rotation_std: float) -> np.ndarray:
    """Clip negative eigenvalues (numerical noise), raise the diagonal to the std floors; the
    result is symmetric PD."""
    # Adding a non-negative diagonal to a PSD matrix keeps it PSD, and floors > 0 make it PD.
    w, V = np.linalg.eigh(cov)
    cov = (V * np.clip(w, 0.0, None)) @ V.T
    floors = np.array([min_position_std ** 2] * 3 + [min_rotation_std ** 2] * 3)
    floors = np.maximum(floors, 1e-12)
    cov = cov + np.diag(np.maximum(floors - np.diag(cov), 0.0))
    w_min = np.linalg.eigvalsh(cov).min()
    if w_min < 1e-12:  # floors on the diagonal cannot fix a rank-deficient off-diagonal block
        cov = cov + np.eye(6) * (1e-12 - w_min + floors.min() * 1e-3)
    return 0.5 * (cov + cov.T)
