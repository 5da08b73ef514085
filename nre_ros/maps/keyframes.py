"""Keyframe selection from a posed image stream: by motion since the last keyframe and sharpness.

A frame becomes a keyframe when the camera moved at least ``min_translation_m`` or turned at
least ``min_rotation_deg`` since the last keyframe (the first posed frame always qualifies), and
it is not blurred: its sharpness (variance of the Laplacian of the grey image at <= 640 px) is at
least ``min_sharpness_ratio`` times the median sharpness of the last ``SHARPNESS_WINDOW``
frames that were measured. A blurred candidate is skipped; the next sharp frame takes its place.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from nre_ros.errors import ConfigError
from nre_ros.geometry import invert, so3_log

SHARPNESS_WINDOW = 15


@dataclass(frozen=True)
class KeyframePolicy:
    """Thresholds of keyframe selection (0 disables a criterion)."""

    min_translation_m: float = 0.10
    min_rotation_deg: float = 5.0
    min_sharpness_ratio: float = 0.5

    def __post_init__(self) -> None:
        if min(self.min_translation_m, self.min_rotation_deg, self.min_sharpness_ratio) < 0:
            raise ConfigError(f'keyframe thresholds must be >= 0, got {self}')


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image, downscaled to <= 640 px on the long side."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 640.0 / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def motion(T_world_a: np.ndarray, T_world_b: np.ndarray) -> tuple[float, float]:
    """(metres, degrees) between two camera poses."""
    D = invert(T_world_a) @ T_world_b
    return float(np.linalg.norm(D[:3, 3])), float(np.degrees(np.linalg.norm(so3_log(D[:3, :3]))))


class KeyframeSelector:
    """Streaming selection: ``moved_enough(T)`` first (cheap), then ``accept(T, rgb)``."""

    def __init__(self, policy: KeyframePolicy = KeyframePolicy()) -> None:
        self.policy = policy
        self.last: np.ndarray | None = None
        self._recent: deque[float] = deque(maxlen=SHARPNESS_WINDOW)
        self.blurred = 0

    def moved_enough(self, T_world_cam: np.ndarray) -> bool:
        """True when far enough from the last keyframe (or there is none)."""
        if self.last is None:
            return True
        t, r = motion(self.last, T_world_cam)
        p = self.policy
        return t >= p.min_translation_m or r >= p.min_rotation_deg or \
            (p.min_translation_m == 0 and p.min_rotation_deg == 0)

    def accept(self, T_world_cam: np.ndarray, rgb: np.ndarray) -> bool:
        """Sharpness check of a frame that moved enough; records it as the keyframe if kept."""
        s = sharpness(rgb)
        ref = float(np.median(self._recent)) if self._recent else 0.0
        self._recent.append(s)
        if s < self.policy.min_sharpness_ratio * ref:
            self.blurred += 1
            return False
        self.last = np.array(T_world_cam)
        return True
