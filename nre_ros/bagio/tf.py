"""The TF recorded in a bag (``/tf_static`` and ``/tf``) as a tree of timed edges.

Each edge ``parent -> child`` holds ``T_parent_child``: one pose when static, a
``Trajectory`` when dynamic (interpolated at query stamps, see ``nre_ros.trajectory``).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from nre_ros import messages as msgs
from nre_ros.bagio.reader import TF_TOPICS, Bag
from nre_ros.errors import InputError
from nre_ros.geometry import invert
from nre_ros.trajectory import DEFAULT_TOLERANCE_S, Trajectory


class TfTree:
    """Static edges {(parent, child): (4, 4)} and dynamic edges {(parent, child): Trajectory}."""

    def __init__(self, static: dict[tuple[str, str], np.ndarray],
                 dynamic: dict[tuple[str, str], Trajectory]) -> None:
        self.static = dict(static)
        self.dynamic = dict(dynamic)
        self._adj: dict[str, list[tuple[str, tuple[str, str], bool]]] = {}
        for parent, child in list(self.static) + list(self.dynamic):
            self._adj.setdefault(parent, []).append((child, (parent, child), False))
            self._adj.setdefault(child, []).append((parent, (parent, child), True))

    @classmethod
    def from_bag(cls, bag: Bag) -> 'TfTree':
        """Read every transform on /tf_static and /tf (small topics, read whole)."""
        static: dict[tuple[str, str], np.ndarray] = {}
        samples: dict[tuple[str, str], tuple[list, list]] = {}
        for m in bag.messages(TF_TOPICS):
            for tf in m.msg.transforms:
                key = (_strip(tf.header.frame_id), _strip(tf.child_frame_id))
                T = msgs.transform_to_matrix(tf.transform)
                if m.topic == '/tf_static':
                    static[key] = T
                else:
                    stamps, poses = samples.setdefault(key, ([], []))
                    stamps.append(msgs.stamp_to_ns(tf.header.stamp))
                    poses.append(T)
        dynamic = {k: Trajectory(np.array(s, np.int64), np.stack(p))
                   for k, (s, p) in samples.items()}
        return cls(static, dynamic)

    @property
    def frames(self) -> list[str]:
        return sorted(self._adj)

    def path(self, target: str, source: str) -> list[tuple[tuple[str, str], bool]]:
        """Edges from ``target`` to ``source`` as (edge, inverted); InputError if unconnected."""
        target, source = _strip(target), _strip(source)
        if target == source:
            return []
        for f in (target, source):
            if f not in self._adj:
                raise InputError(f'frame {f!r} is not in the bag\'s TF (/tf, /tf_static); '
                                 f'frames: {self.frames}')
        prev: dict[str, tuple[str, tuple[str, str], bool]] = {target: None}
        queue = deque([target])
        while queue:
            f = queue.popleft()
            for nxt, edge, inv in self._adj[f]:
                if nxt not in prev:
                    prev[nxt] = (f, edge, inv)
                    queue.append(nxt)
        if source not in prev:
            raise InputError(f'no TF chain between {target!r} and {source!r} in the bag')
        out, f = [], source
        while f != target:
            parent, edge, inv = prev[f]
            out.append((edge, inv))
            f = parent
        return out[::-1]

    def lookup(self, target: str, source: str, stamps_ns: np.ndarray,
               tolerance_s: float = DEFAULT_TOLERANCE_S) -> tuple[np.ndarray, np.ndarray]:
        """``T_target_source`` at each stamp: (M, 4, 4) and (M,) ok (every dynamic edge
        within tolerance)."""
        stamps = np.asarray(stamps_ns, np.int64).reshape(-1)
        T = np.tile(np.eye(4), (len(stamps), 1, 1))
        ok = np.ones(len(stamps), bool)
        for edge, inv in self.path(target, source):      # T_target_a @ T_a_b ...
            if edge in self.static:
                E = np.broadcast_to(self.static[edge], T.shape)
            else:
                E, edge_ok = self.dynamic[edge].interpolate(stamps, tolerance_s)
                ok &= edge_ok
            T = T @ (invert(E) if inv else E)
        return T, ok


def _strip(frame: str) -> str:
    return frame[1:] if frame.startswith('/') else frame
