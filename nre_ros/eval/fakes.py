"""Stand-in localizers to check the evaluation harness itself (never a relocalization result).

``OracleLocalizer`` looks the image up in the bag's ground truth and returns it perturbed by a
known Gaussian left increment with the matching covariance (so NEES should be about 6), or a
``Failure`` for a chosen fraction of the frames.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np
from nre_ros.geometry import Sim3, invert, se3_exp
from nre_ros.results import Failure, Result


def image_key(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()


class OracleLocalizer:
    """Ground truth + seeded noise; Failure('oracle_dropout') with probability ``fail_rate``.

    Args:
        T_cam_world_by_key: ``image_key(rgb)`` -> (4, 4) true camera-from-map pose.
        sigma_t_m, sigma_r_deg: standard deviation per axis of the left increment.
        delay_s: simulated processing time (sleeps).
    """

    def __init__(self, T_cam_world_by_key: dict[str, np.ndarray], sigma_t_m: float = 0.05,
                 sigma_r_deg: float = 1.0, fail_rate: float = 0.0, delay_s: float = 0.0,
                 seed: int = 0) -> None:
        self.truth = T_cam_world_by_key
        sr = np.radians(sigma_r_deg)
        self.covariance = np.diag([sigma_t_m ** 2] * 3 + [sr ** 2] * 3)
        self.fail_rate, self.delay_s = fail_rate, delay_s
        self.rng = np.random.default_rng(seed)
        self.map_T_model = Sim3.identity()   # node interface: the map frame is the model frame
        self.map_frame_id = 'map'

    def warmup(self) -> None:
        """Nothing to warm up (the node calls this at configure)."""

    @classmethod
    def from_frames(cls, frames, **kwargs) -> 'OracleLocalizer':
        return cls({image_key(f.rgb): invert(f.T_world_cam) for f in frames
                    if f.T_world_cam is not None}, **kwargs)

    def localize(self, image, camera, prior=None, depth=None):
        t0 = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        T = self.truth.get(image_key(image))
        xi = self.rng.multivariate_normal(np.zeros(6), self.covariance)
        fail = self.rng.random() < self.fail_rate
        ms = {'oracle': 1e3 * (time.perf_counter() - t0)}
        if T is None:
            return Failure('no_keyframes', 'image not in the oracle ground truth', timings_ms=ms)
        if fail:
            return Failure('oracle_dropout', 'simulated failure', timings_ms=ms)
        return Result(T_cam_world=se3_exp(xi) @ T, covariance=self.covariance, cost=0.0,
                      mean_cost=0.0, num_points=0, num_supported=0, iterations=0, timings_ms=ms,
                      info={'oracle': True})
