"""Timed pose sequences and their interpolation (slerp on rotation, linear on translation).

One rule everywhere a pose is needed at a time that was not measured (TUM folders, bag pose
topics, TF edges, ground truth for evaluation): a stamp is served when its nearest measured pose
is at most ``tolerance_s`` away; between two measurements it is interpolated, outside the
measured span the end pose is held. Stamps are integer nanoseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from nre_ros.errors import InputError
from nre_ros.geometry import make_transform

DEFAULT_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class Trajectory:
    """Poses ``T_a_b`` (N, 4, 4) measured at increasing ``stamps_ns`` (N,) int64."""

    stamps_ns: np.ndarray
    T: np.ndarray

    def __post_init__(self) -> None:
        stamps = np.asarray(self.stamps_ns, dtype=np.int64).reshape(-1)
        T = np.asarray(self.T, dtype=np.float64).reshape(-1, 4, 4)
        if len(stamps) != len(T):
            raise InputError(f'trajectory has {len(stamps)} stamps but {len(T)} poses')
        order = np.argsort(stamps, kind='stable')
        stamps, T = stamps[order], T[order]
        keep = np.ones(len(stamps), bool)
        keep[1:] = np.diff(stamps) > 0              # duplicate stamps: keep the first
        if not np.all(np.isfinite(T[keep])):
            raise InputError('trajectory has non-finite poses')
        object.__setattr__(self, 'stamps_ns', stamps[keep])
        object.__setattr__(self, 'T', T[keep])

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @classmethod
    def from_seconds(cls, stamps_s: np.ndarray, T: np.ndarray) -> 'Trajectory':
        """From float seconds (TUM files), rounded to whole nanoseconds."""
        return cls(np.round(np.asarray(stamps_s, np.float64) * 1e9).astype(np.int64), T)

    def span_s(self) -> tuple[float, float]:
        """(first, last) stamp in seconds; (nan, nan) when empty."""
        if not len(self):
            return float('nan'), float('nan')
        return self.stamps_ns[0] * 1e-9, self.stamps_ns[-1] * 1e-9

    def nearest_gap_s(self, stamps_ns: np.ndarray) -> np.ndarray:
        """(M,) seconds from each stamp to its nearest measured pose (inf when empty)."""
        q = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        if not len(self):
            return np.full(len(q), np.inf)
        i = np.clip(np.searchsorted(self.stamps_ns, q), 1, max(1, len(self) - 1))
        lo = self.stamps_ns[i - 1]
        hi = self.stamps_ns[np.minimum(i, len(self) - 1)]
        return np.minimum(np.abs(q - lo), np.abs(hi - q)) * 1e-9

    def interpolate(self, stamps_ns: np.ndarray, tolerance_s: float = DEFAULT_TOLERANCE_S
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Poses at ``stamps_ns`` (M,).

        Returns:
            T: (M, 4, 4) interpolated poses (identity where not served).
            ok: (M,) bool, the nearest measured pose is within ``tolerance_s``.
        """
        q = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        T = np.tile(np.eye(4), (len(q), 1, 1))
        ok = self.nearest_gap_s(q) <= tolerance_s
        if not np.any(ok):
            return T, ok
        if len(self) == 1:
            T[ok] = self.T[0]
            return T, ok
        t = np.clip(q[ok], self.stamps_ns[0], self.stamps_ns[-1])
        i = np.clip(np.searchsorted(self.stamps_ns, t, side='right'), 1, len(self) - 1)
        t0, t1 = self.stamps_ns[i - 1], self.stamps_ns[i]
        w = ((t - t0) / (t1 - t0).astype(np.float64))[:, None]
        trans = (1 - w) * self.T[i - 1, :3, 3] + w * self.T[i, :3, 3]
        base = self.stamps_ns[0]
        slerp = Slerp((self.stamps_ns - base) * 1e-9, Rotation.from_matrix(self.T[:, :3, :3]))
        R = slerp((t - base) * 1e-9).as_matrix()
        T[ok] = make_transform(R, trans)
        return T, ok
