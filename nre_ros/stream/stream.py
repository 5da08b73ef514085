"""``LocalizationStream``: the per-stream policy between sensor inputs and the published pose.

ROS-free; the node (nre_ros.ros.node) feeds it from its executor and processes frames in its
worker thread, the offline evaluation (nre_ros.eval.evaluate) feeds it a bag in stamp order.
What it owns:

- pairing images with CameraInfo (and depth) by exact header stamp (the topics arrive
  independently, so a few images wait for their CameraInfo);
- dropping: frames closer than ``1 / max_rate`` by stamp to the last started one, and frames
  arriving while a frame is processed (a queue of depth 1, latest only);
- the prior of the next frame: /initialpose, a load_map hint, ``set_initial_pose``, or the last
  fix carried by odometry (``use_initial_guess``); ``request_global`` forgets it;
- the consistency gate (``gate.FixGate``) and the published covariance
  (``covariance.CovarianceModel``); the quality of one fix is the relocalizer's verdict;
- lost / recovered state (``stats.StreamStats``) and the map generation: results computed on
  a map replaced meanwhile are dropped (``STALE``).

Poses: the relocalizer returns ``T_cam_model``; decisions carry ``T_map_base`` /
``T_map_odom`` (4, 4) and the (6, 6) ROS covariance of base in map.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.geometry import invert, make_transform, so3_exp
from nre_ros.results import Outcome, Prior
from nre_ros.stream.config import StreamConfig
from nre_ros.stream.covariance import CovarianceModel
from nre_ros.stream.gate import FixGate, GateConfig
from nre_ros.stream.stats import StreamStats

PENDING_IMAGES = 3      # images kept waiting for their CameraInfo
KEPT_INFOS = 10         # CameraInfos kept for images still to come
KEPT_DEPTHS = 10        # depth images kept for their image
HINT_ROTATION_STD = 0.5  # rad, of /initialpose-free priors (initial_pose.*, load_map hint)

# what happened to an image handed to add_image (or paired by add_camera_info)
QUEUED, PENDING, DROPPED_BUSY, DROPPED_RATE, IDLE = (
    'queued', 'pending_camera_info', 'dropped_busy', 'dropped_rate', 'idle')
# what localize / reject decided for a processed frame
ACCEPTED, REJECTED, FAILED, BAD_INPUT, TF_MISSING, STALE = (
    'accepted', 'rejected', 'failed', 'bad_input', 'tf_missing', 'stale')


class Relocalizer(Protocol):
    """What the stream needs of ``nre_ros.pipeline.Relocalizer`` (or a fake)."""

    map_T_model: Any      # nre_ros.geometry.Sim3

    def localize(self, image, camera, prior=None, depth=None) -> Outcome: ...


@dataclass(frozen=True)
class Frame:
    """A paired frame handed to the worker; ``image`` / ``camera_info`` as given (messages or
    decoded), ``generation`` = the map generation when it was taken."""

    stamp_ns: int
    image: Any
    camera_info: Any
    generation: int = 0


@dataclass(frozen=True)
class FrameInputs:
    """A frame decoded and placed: (H, W, 3) uint8 RGB, its camera, optional (H, W) float32
    depth in metres, and the transforms at the image stamp (None = not available)."""

    rgb: np.ndarray
    camera: Camera
    depth: np.ndarray | None = None
    T_base_cam: np.ndarray | None = None
    T_odom_base: np.ndarray | None = None


@dataclass(frozen=True)
class Fix:
    """The last accepted fix."""

    T_map_base: np.ndarray
    T_map_odom: np.ndarray | None
    covariance: np.ndarray        # (6, 6) ROS order, base in map
    stamp_ns: int


@dataclass(frozen=True)
class Decision:
    """What to publish for a processed frame. ``status``: ACCEPTED (pose + TF), REJECTED (a
    fix the consistency gate held back), FAILED (the relocalizer's Failure), BAD_INPUT,
    TF_MISSING, STALE (the map changed meanwhile: publish nothing)."""

    stamp_ns: int
    status: str
    reason: str = ''
    detail: str = ''
    outcome: Outcome | None = None
    T_map_base: np.ndarray | None = None
    T_map_odom: np.ndarray | None = None
    covariance: np.ndarray | None = None
    publish_pose: bool = False

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


def check_inputs(rgb: np.ndarray, camera: Camera, depth: np.ndarray | None = None) -> None:
    """Raise InputError unless the image has the camera's size and the depth the image's."""
    h, w = rgb.shape[:2]
    if (w, h) != (camera.width, camera.height):
        raise InputError(f'image is {w}x{h} but camera_info describes {camera.width}x'
                         f'{camera.height}')
    if depth is not None and depth.shape != (h, w):
        raise InputError(f'depth: depth image {depth.shape[1]}x{depth.shape[0]} does not match '
                         f'the image {w}x{h} (must be registered to it)')


class LocalizationStream:
    """See the module docstring. Thread-safe: inputs and controls from one thread, ``take_frame``
    / ``localize`` / ``finish_frame`` from another."""

    def __init__(self, config: StreamConfig, relocalizer: Relocalizer,
                 stats: StreamStats | None = None) -> None:
        self.cfg = config
        self.covariance = CovarianceModel.of(config)
        self.stats = stats if stats is not None else StreamStats()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._reloc = relocalizer
        self._generation = 0
        self._gate = FixGate(GateConfig.of(config))
        self._active = self._enabled = self._requested = self._busy = self._closed = False
        self._force_global = False
        self._pending_prior: tuple[np.ndarray, np.ndarray] | None = None
        self._fix: Fix | None = None
        self._slot: Frame | None = None
        self._last_start_ns: int | None = None
        # images waiting for their CameraInfo, CameraInfos and depths by stamp
        self._images: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._infos: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._depths: collections.OrderedDict[int, Any] = collections.OrderedDict()

    # ------------------------------------------------------------------ state
    @property
    def relocalizer(self) -> Relocalizer:
        return self._reloc

    @property
    def fix(self) -> Fix | None:
        with self._lock:
            return self._fix

    @property
    def active(self) -> bool:
        return self._active

    @property
    def busy(self) -> bool:
        """A frame was taken and not finished yet."""
        return self._busy

    @property
    def pending_prior(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(T_map_base, ROS covariance) waiting for the next frame, or None."""
        with self._lock:
            return self._pending_prior

    def activate(self) -> None:
        """Start accepting frames (lifecycle activate): enabled, a first request if
        ``localize_on_startup``, the ``initial_pose.*`` prior if ``set_initial_pose``."""
        cfg = self.cfg
        with self._lock:
            self._active = self._enabled = True
            self._requested = cfg.localize_on_startup
            if cfg.set_initial_pose:
                T = make_transform(so3_exp(np.array([0.0, 0.0, cfg.initial_pose_yaw])),
                                   [cfg.initial_pose_x, cfg.initial_pose_y, cfg.initial_pose_z])
                self._pending_prior = (T, self._hint_covariance())

    def deactivate(self) -> None:
        """Stop accepting frames; a queued frame is forgotten, results in flight are STALE."""
        with self._lock:
            self._active, self._slot = False, None

    def close(self) -> None:
        """Wake and release every waiter (shutdown)."""
        with self._lock:
            self._closed, self._active, self._slot = True, False, None
            self._wake.notify_all()

    def set_enabled(self, enabled: bool) -> None:
        with self._lock:
            self._enabled = bool(enabled)

    def request_global(self) -> None:
        """Next frame: global search without any prior."""
        with self._lock:
            self._force_global, self._requested, self._pending_prior = True, True, None

    def set_prior(self, T_map_base: np.ndarray, covariance: np.ndarray) -> None:
        """A prior (pose of base in map, (6, 6) ROS covariance) for the next frame."""
        with self._lock:
            self._pending_prior = (np.asarray(T_map_base, np.float64),
                                   np.asarray(covariance, np.float64).reshape(6, 6))
            self._force_global, self._requested = False, True

    def reset(self) -> None:
        """Forget the fix, the consistency history and any prior."""
        with self._lock:
            self._gate.reset()
            self._fix, self._pending_prior = None, None
        self.stats.reset_fix()

    def replace_relocalizer(self, relocalizer: Relocalizer,
                            hint_T_map_base: np.ndarray | None = None) -> None:
        """A new map: bump the generation, forget the fix; the next frame searches globally, or
        starts from ``hint_T_map_base`` (std ``prior_search_radius``)."""
        with self._lock:
            self._reloc = relocalizer
            self._generation += 1
            self._gate.reset()
            self._fix, self._pending_prior, self._force_global = None, None, True
            if hint_T_map_base is not None:
                self._pending_prior = (np.asarray(hint_T_map_base, np.float64),
                                       self._hint_covariance())
                self._force_global, self._requested = False, True
        self.stats.reset_fix()

    def _hint_covariance(self) -> np.ndarray:
        r = max(self.cfg.prior_search_radius, self.cfg.min_position_std)
        return np.diag([r * r] * 3 + [HINT_ROTATION_STD ** 2] * 3)

    # ------------------------------------------------------------------ inputs
    def add_image(self, stamp_ns: int, image: Any) -> str:
        """An image arrived: QUEUED for the worker, PENDING (its CameraInfo has not), or
        dropped (DROPPED_RATE, DROPPED_BUSY, IDLE = not active / enabled / requested)."""
        self.stats.count('frames_received')
        with self._lock:
            info = self._infos.get(stamp_ns)
            if info is None:
                self._images[stamp_ns] = image
                while len(self._images) > PENDING_IMAGES:
                    self._images.popitem(last=False)
                    self.stats.count('frames_unpaired')
                return PENDING
            self._drop_pending_up_to(stamp_ns)
            return self._submit(stamp_ns, image, info)

    def add_camera_info(self, stamp_ns: int, info: Any) -> str | None:
        """A CameraInfo arrived; returns the admission of the waiting image it pairs, if any."""
        with self._lock:
            self._infos[stamp_ns] = info
            while len(self._infos) > KEPT_INFOS:
                self._infos.popitem(last=False)
            image = self._images.pop(stamp_ns, None)
            if image is None:
                return None
            self._drop_pending_up_to(stamp_ns)
            return self._submit(stamp_ns, image, info)

    def add_depth(self, stamp_ns: int, depth: Any) -> None:
        """A depth image arrived; the worker takes the one with its image's stamp."""
        with self._lock:
            self._depths[stamp_ns] = depth
            while len(self._depths) > KEPT_DEPTHS:
                self._depths.popitem(last=False)
            self._wake.notify_all()

    def take_depth(self, stamp_ns: int, timeout_s: float) -> Any | None:
        """The depth image with exactly this stamp, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                depth = self._depths.pop(stamp_ns, None)
                remaining = deadline - time.monotonic()
                if depth is not None or remaining <= 0 or self._closed:
                    return depth
                self._wake.wait(min(remaining, 0.01))

    def _drop_pending_up_to(self, stamp_ns: int) -> None:
        """Forget waiting images not newer than ``stamp_ns`` (a newer frame goes ahead)."""
        for old in [s for s in self._images if s <= stamp_ns]:
            del self._images[old]
            self.stats.count('frames_unpaired')

    def _submit(self, stamp_ns: int, image: Any, info: Any) -> str:
        """Queue a paired frame for the worker (lock held)."""
        self.stats.count('frames_paired')
        cfg = self.cfg
        if not (self._active and self._enabled and (cfg.continuous or self._requested)):
            return IDLE
        last = self._last_start_ns
        if cfg.continuous and cfg.max_rate > 0 and last is not None and \
                0 <= stamp_ns - last < 1e9 / cfg.max_rate:
            self.stats.count('frames_skipped_rate')
            return DROPPED_RATE
        if self._busy or self._slot is not None:
            self.stats.count('frames_dropped_busy')     # the incoming one, or the queued one
            if self._busy:
                return DROPPED_BUSY
        self._slot = Frame(stamp_ns, image, info, self._generation)
        self._last_start_ns = stamp_ns
        self._wake.notify_all()
        return QUEUED

    # ------------------------------------------------------------------ worker
    def take_frame(self, timeout_s: float = 0.0) -> Frame | None:
        """The queued frame (waiting up to ``timeout_s``), or None; the stream is busy until
        ``finish_frame``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._slot is None and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._wake.wait(remaining)
            frame, self._slot = self._slot, None
            if frame is None:
                return None
            self._busy = True
            if not self.cfg.continuous:
                self._requested = False
            frame = Frame(frame.stamp_ns, frame.image, frame.camera_info, self._generation)
        self.stats.count('frames_processed')
        return frame

    def finish_frame(self) -> None:
        """The worker is free again (after ``localize`` / ``reject`` and publishing)."""
        with self._lock:
            self._busy = False

    def reject(self, frame: Frame, status: str, detail: str) -> Decision:
        """A frame that could not be localized before the relocalizer ran: BAD_INPUT (message
        could not be decoded) or TF_MISSING."""
        counter = {BAD_INPUT: 'bad_inputs', TF_MISSING: 'tf_failures'}[status]
        return self._reject(frame.stamp_ns, status, status, detail, counter)

    def _reject(self, stamp_ns: int, status: str, reason: str, detail: str, counter: str,
                outcome: Outcome | None = None) -> Decision:
        self.stats.count(counter)
        with self.stats.lock:
            self.stats.consecutive_failures += 1
            self.stats.last_problem, self.stats.last_problem_detail = reason, detail
        return Decision(stamp_ns, status, reason, detail, outcome)

    def localize(self, frame: Frame, inputs: FrameInputs) -> Decision:
        """Localize a taken frame and decide what to publish (see Decision)."""
        cfg, stamp = self.cfg, frame.stamp_ns
        with self._lock:
            reloc, stale = self._reloc, frame.generation != self._generation
        if stale:      # taken before the map was replaced: not localized on either map
            return Decision(stamp, STALE, 'stale', 'the map was replaced')
        rgb, camera, depth = inputs.rgb, inputs.camera, inputs.depth
        try:
            check_inputs(rgb, camera, depth)
        except InputError as exc:
            return self._reject(stamp, BAD_INPUT, BAD_INPUT, str(exc), 'bad_inputs')
        if cfg.use_depth and depth is None:
            self.stats.count('frames_without_depth')
        T_base_cam, T_odom_base = inputs.T_base_cam, inputs.T_odom_base
        if T_base_cam is None:
            return self._reject(stamp, TF_MISSING, TF_MISSING,
                                'no base -> camera transform', 'tf_failures')
        if cfg.needs_odometry and T_odom_base is None:
            return self._reject(stamp, TF_MISSING, TF_MISSING,
                                'no odom -> base transform at the image stamp', 'tf_failures')
        prior = self._take_prior(reloc, T_base_cam, T_odom_base)
        outcome = reloc.localize(rgb, camera, prior=prior, depth=depth)
        with self.stats.lock:
            self.stats.last_timings_ms = dict(outcome.timings_ms)
        if not outcome.ok:
            return self._reject(stamp, FAILED, outcome.reason, outcome.detail, 'failures',
                                outcome)
        S = reloc.map_T_model
        T_map_base = S.camera_pose_in_map(outcome.T_cam_world) @ invert(T_base_cam)
        T_map_odom = None if T_odom_base is None else T_map_base @ invert(T_odom_base)
        cov = self.covariance.to_map(outcome.covariance, T_map_base, T_base_cam, S.scale,
                                     outcome.num_supported)
        with self._lock:
            if not self._active or frame.generation != self._generation:
                return Decision(stamp, STALE, 'stale', 'deactivated or the map was replaced '
                                'while the frame was processed', outcome)
            accepted, why = self._gate.offer(T_map_odom if cfg.gate_on_odom else T_map_base)
            if accepted:
                self._fix = Fix(T_map_base, T_map_odom, cov, stamp)
        with self.stats.lock:
            s = self.stats
            s.last_points, s.last_cost = outcome.num_points, outcome.mean_cost
            if accepted:
                s.localized = s.ever_localized = True
                s.consecutive_failures = 0
                s.last_success_monotonic = time.monotonic()
                s.last_problem = s.last_problem_detail = ''
            else:
                s.fixes_rejected += 1
                s.last_problem, s.last_problem_detail = 'gating', why
        return Decision(stamp, ACCEPTED if accepted else REJECTED, why, '', outcome, T_map_base,
                        T_map_odom, cov,
                        publish_pose=accepted or not cfg.publish_pose_only_when_localized)

    def _take_prior(self, reloc: Relocalizer, T_base_cam: np.ndarray,
                    T_odom_base: np.ndarray | None) -> Prior | None:
        """The prior of this frame in the relocalizer's convention (consumed)."""
        with self._lock:
            force, pending, fix = self._force_global, self._pending_prior, self._fix
            self._force_global, self._pending_prior = False, None
        if force:
            return None
        if pending is None and self.cfg.use_initial_guess and fix is not None \
                and fix.T_map_odom is not None and T_odom_base is not None:
            pending = (fix.T_map_odom @ T_odom_base, fix.covariance)
        if pending is None:
            return None
        T_map_base, cov = pending
        S = reloc.map_T_model
        T_cam_model = S.camera_pose_in_model(T_map_base @ T_base_cam)
        return Prior(T_cam_model, self.covariance.prior_from_map(cov, T_map_base, T_base_cam,
                                                                 S.scale))
