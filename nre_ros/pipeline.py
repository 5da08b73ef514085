"""The relocalizer: retrieval -> coarse NRE (MSAC + GNC) -> fine NRE -> verdict.

``Relocalizer(map, model, config).localize(image, camera, prior=None, depth=None)`` is the one
call the CLI, the evaluation tools and the ROS node make. It returns a ``Result`` only when the
verdict trusts the pose, otherwise a ``Failure`` with a reason; it never raises on bad input
(that is a ``Failure('bad_input')``).

Frames: the map's world frame is ``world`` (= the map frame, up to ``map_T_model``); poses are
``T_cam_world`` of the caller's camera (optical frame of the image as given, before the
undistortion, resizing and quarter-turn rotations the pipeline applies internally).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from nre_ros import compiled
from nre_ros.camera import Camera
from nre_ros.config import load_config, read_yaml
from nre_ros.errors import (BackendUnavailable, ConfigError, InputError, MapFormatError,
                            ShapeError)
from nre_ros.geometry import Sim3, is_rigid, pose_error, se3_log
from nre_ros.lossmaps import LossMaps, coarse_loss_maps, fine_loss_maps
from nre_ros.maps import Map, RetrievalIndex, global_descriptor, load_map
from nre_ros.maps.retrieval import nearest_keyframes, spread_over_image
from nre_ros.models import TRACKING_MODELS, FeatureModel, joint_features, load_model
from nre_ros.preprocess import (PreparedImage, check_prepared_size, check_prior_pose,
                                denoise, match_brightness, match_focal, prepare, rotated)
from nre_ros.results import Failure, Outcome, Prior
from nre_ros.models.base import DenseFeatures, ModelSpec
from nre_ros.solver import (FineLevel, MsacResult, SolverConfig, VerdictConfig, msac,
                           refine_level, solve_coarse, verdict)
from nre_ros.solver import se3
from nre_ros.solver import intrinsics_check
from nre_ros.solver.intrinsics_check import IntrinsicsCheckConfig
from nre_ros.solver.intrinsics_stream import FrameIntrinsics, IntrinsicsEvidence
from nre_ros.solver.depth_init import DepthInitConfig, depth_msac
from nre_ros.threads import apply_threads, check_threads, resolve_threads
from nre_ros.precision import check_precision, resolve_precision
from nre_ros.precision import describe as describe_precision

logger = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 32     # smallest image side (after resizing) the feature networks accept
MAX_CAMERAS = 8         # cameras whose intrinsics evidence is kept (least recently seen dropped)


@dataclass(frozen=True)
class RetrievalConfig:
    # 5 / 2500: the one setting tried that beat 3 / 1500 on both real sets (docs/decisions.md)
    top_k: int = 5                 # keyframes whose points form the query's point set
    max_points: int = 2500         # cap on the point set (points of better keyframes first)
    # global-descriptor search over all keyframes: exact inner product either way (same
    # top-k); auto = faiss (IndexFlatIP, optional faiss-cpu) when importable, else numpy
    backend: Literal['auto', 'numpy', 'faiss'] = 'auto'


@dataclass(frozen=True)
class RotationConfig:
    """In-plane rotation search (descriptors such as XFeat's are not rotation invariant)."""

    quarter_turns: tuple[int, ...] = (0, 1, 2, 3)   # rotations whose retrieval score is computed
    candidates: int = 2            # best-retrieved rotations that also get MSAC
    # The first listed rotation is tried alone first; the others are only computed when its
    # MSAC support (supported / candidate maps) is below this fraction (1.0 = always search);
    # between the support of right and of rolled orientations (docs/decisions.md).
    early_exit_support: float = 0.6
    # An MSAC pose rolled more than this (deg) from its nearest keyframes (by position and
    # optical axis) matched the map across a large in-plane rotation: it does not take the early
    # exit (docs/decisions.md).
    upright_roll_deg: float = 60.0


@dataclass(frozen=True)
class ScaleConfig:
    """Bring queries to the map's pixel scale (XFeat descriptors are not scale invariant):
    resample when the query's focal length differs from the map keyframes' median focal length
    by more than ``tolerance`` (relative), upsampling at most ``max_upscale`` times."""

    enabled: bool = True
    tolerance: float = 0.15
    max_upscale: float = 2.5


@dataclass(frozen=True)
class DenoiseConfig:
    """Smooth noisy queries before the networks (``preprocess.denoise``): a Gaussian of
    ``sigma`` px when the estimated noise sigma of the image's grey is over ``noise_threshold``
    grey levels (docs/decisions.md)."""

    enabled: bool = True
    noise_threshold: float = 3.0
    sigma: float = 1.0


@dataclass(frozen=True)
class BrightnessConfig:
    """Bring washed-out queries back to the map's light (``preprocess.match_brightness``): a
    gamma that brings the query's grey mean to the median of the map's keyframes
    (``kf_brightness``), applied when that gamma is over ``min_gamma``; maps without
    ``kf_brightness`` (built before it existed) leave queries as they are (docs/decisions.md)."""

    enabled: bool = True
    min_gamma: float = 1.5


@dataclass(frozen=True)
class FineConfig:
    enabled: bool = True
    window: int = 16               # fine cells per window side
    divisor: float = 1.0           # window mass divisor (1 = mass preserving)


TRACKING_FINE_LEVELS = ('auto', 'model')


@dataclass(frozen=True)
class TrackingConfig:
    keyframes: int = 3             # nearest keyframes (by pose) used around a prior
    max_translation_m: float = 0.5  # result farther than this from the prior -> global search
    max_rotation_deg: float = 20.0
    fine: bool = True              # False: coarse level only when tracking (much faster on CPU)
    # fine level of tracking: 'auto' = the map's tracking level when it has one (a fine level
    # from the coarse pass: one network pass; MODELS.md), else the model's; 'model' = always
    # the model's fine level
    fine_level: str = 'auto'
    # cap on the point set around a prior, spread over the image (``spread_over_image``;
    # 0 = retrieval.max_points): most of tracking's solver time is per point (docs/decisions.md)
    max_points: int = 500
    # with a prior covariance: also reject results whose squared Mahalanobis distance to the
    # prior (prior + result covariance) exceeds this (chi-square, 6 dof, p = 0.999)
    max_mahalanobis_sq: float = 22.46

    def __post_init__(self) -> None:
        if self.fine_level not in TRACKING_FINE_LEVELS:
            raise ConfigError(f'pipeline.tracking.fine_level must be one of '
                              f'{list(TRACKING_FINE_LEVELS)}, got {self.fine_level!r}')
        if self.max_points < 0:
            raise ConfigError('pipeline.tracking.max_points must be >= 0 (0 = no cap), got '
                              f'{self.max_points}')


@dataclass(frozen=True)
class PipelineConfig:
    model: str = 'auto'            # 'auto' = the model the map was built with
    # auto = onnxruntime on CPU (faster fine level than torch; the ONNX export runs once into
    # ~/.cache/nre_ros), torch on CUDA; or torch | onnxruntime | tensorrt.
    backend: str = 'auto'
    device: str = 'cpu'            # cpu | cuda (tensorrt implies cuda)
    # number format of the networks: auto = bf16 on a CPU with bf16 units (AMX-BF16 /
    # AVX512-BF16; torch backend), else fp32 (CUDA keeps fp32 / TensorRT fp16); or fp32 | bf16
    precision: str = 'auto'
    # CPU threads of the networks and torch ops: 'auto' = the CPUs this process may use
    # (affinity, cgroup quota; nre_ros.threads), or a count
    num_threads: int | str = 'auto'
    max_image_side: int = 640
    retrieval: RetrievalConfig = RetrievalConfig()
    rotation: RotationConfig = RotationConfig()
    fine: FineConfig = FineConfig()
    tracking: TrackingConfig = TrackingConfig()
    depth: DepthInitConfig = DepthInitConfig()   # RGB-D queries: Kabsch initialization
    intrinsics: IntrinsicsCheckConfig = IntrinsicsCheckConfig()   # refuse poses K cannot explain
    scale: ScaleConfig = ScaleConfig()           # resample queries to the map's focal length
    denoise: DenoiseConfig = DenoiseConfig()     # smooth noisy queries
    brightness: BrightnessConfig = BrightnessConfig()   # darken washed-out queries
    # Verdict thresholds between in-map and out-of-map queries of real maps; covariance_scale
    # k^2: the points' errors are far from independent, so the Laplace covariance is too
    # small (docs/decisions.md). The solver's own defaults stay generic.
    solver: SolverConfig = SolverConfig(
        verdict=VerdictConfig(min_supported_fraction=0.3, max_mean_cost=7.0,
                              covariance_scale=1000.0))

    def __post_init__(self) -> None:
        check_threads(self.num_threads, 'pipeline.num_threads')
        check_precision(self.precision, 'pipeline.precision')

    @classmethod
    def from_yaml(cls, path: str | Path) -> 'PipelineConfig':
        data = read_yaml(path)
        return load_config(cls, data.get('pipeline', data), 'pipeline')

    @classmethod
    def from_dict(cls, data: dict | None) -> 'PipelineConfig':
        return load_config(cls, data, 'pipeline')


def prior_mahalanobis_sq(T_cam_world: np.ndarray, covariance: np.ndarray, prior: 'Prior'
                         ) -> float | None:
    """Squared Mahalanobis distance of a result to a prior, both ``T_cam_world`` with
    covariances of a left increment (Result's convention); None without a usable covariance."""
    if prior.covariance is None:
        return None
    S = np.asarray(prior.covariance, np.float64) + np.asarray(covariance, np.float64)
    if S.shape != (6, 6) or not np.all(np.isfinite(S)):
        return None
    xi = se3_log(T_cam_world @ np.linalg.inv(np.asarray(prior.T_cam_world, np.float64)))
    try:
        return float(xi @ np.linalg.solve(S, xi))
    except np.linalg.LinAlgError:
        return None


def resolve_backend(backend: str, device: str, precision: str = 'fp32') -> str:
    """'auto' -> torch on CUDA, torch for bf16 on CPU (ONNX Runtime has no bf16 path here;
    docs/decisions.md), onnxruntime for fp32 on CPU (torch when onnxruntime is missing)."""
    if backend != 'auto':
        return backend
    if device.startswith('cuda') or precision == 'bf16':
        return 'torch'
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning('onnxruntime is not installed: running the networks with torch (slower)')
        return 'torch'
    return 'onnxruntime'


def resolve_runtime(config: 'PipelineConfig', flags=None) -> tuple[str, str]:
    """(backend, precision) the networks of ``config`` run with, e.g. ('torch', 'bf16') on a
    CPU with bf16 units (``flags``: the CPU's, nre_ros.precision.cpu_flags, for tests)."""
    precision = resolve_precision(config.precision, config.device, config.backend, flags)
    return resolve_backend(config.backend, config.device, precision), precision


def coarse_matmul_dtype(model: FeatureModel) -> torch.dtype:
    """The coarse loss maps' matmul dtype: bf16 where the model's networks run in bf16 on a
    CPU (a 'torch-cpu-bf16' backend: its descriptors carry bf16 rounding already; docs/
    decisions.md), float32 otherwise."""
    return torch.bfloat16 if getattr(model, 'backend', '') == 'torch-cpu-bf16' else torch.float32


def load_configured_model(name: str, config: 'PipelineConfig'):
    """Model ``name`` on ``config``'s backend, device and precision (what
    ``Relocalizer.from_config`` runs; benchmarks use it so their rows time the product's
    default path)."""
    backend, precision = resolve_runtime(config)
    logger.info(describe_precision(precision))
    if backend == 'torch' and precision == 'fp32':
        return load_model(name, config.device)
    if backend == 'tensorrt':
        logger.info('building/loading the TensorRT engine (minutes on first use)')
    elif backend == 'onnxruntime':
        logger.info('loading ONNX Runtime networks (exported once into the cache; the first '
                    'time takes longer)')
    from nre_ros.backends import BackendConfig, load_backend
    return load_backend(BackendConfig(model=name, backend=backend, device=config.device,
                                      precision=precision,
                                      threads=resolve_threads(config.num_threads)))


class Init(str, Enum):
    """Minimal solver of a global search's initial pose."""

    P3P = 'p3p'
    DEPTH = 'depth'                # Kabsch on depth-lifted loss-map minima


@dataclass(frozen=True)
class _Candidate:
    """One query orientation: its coarse features, then (after retrieval) its keyframes and
    point set, then (after initialization) its coarse maps and MSAC outcome."""

    prep: PreparedImage
    features: DenseFeatures
    keyframes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    point_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    coarse_maps: LossMaps | None = None
    msac: MsacResult | None = None
    init: Init = Init.P3P
    tracking_level: bool = False   # features from the tracking model: fine level 'fine_tracking'


class Relocalizer:
    """Localizes images against one map with one feature model."""

    def __init__(self, map_: Map, model: FeatureModel, config: PipelineConfig = PipelineConfig(),
                 tracking_model: FeatureModel | str | None = 'auto'):
        """``tracking_model``: the model of the map's tracking level ('auto': loaded with
        ``load_configured_model`` when the map has a tracking level and
        ``config.tracking.fine_level`` is 'auto'; None: tracking runs the model's fine level)."""
        mismatch = map_.spec.mismatch(model.spec)
        if mismatch:
            raise MapFormatError(f'map was built with model {map_.spec.name!r}, the relocalizer runs '
                                 f'{model.spec.name!r} ({mismatch}); rebuild the map or change model')
        self.map = map_
        self.model = model
        self.config = config
        self.tracking_model = self._tracking_model(tracking_model)
        self.device = torch.device(config.device)
        self._matmul_dtype = coarse_matmul_dtype(model)
        self.index = RetrievalIndex(map_.global_descriptors, config.retrieval.backend)
        logger.debug('retrieval over %d keyframes with %s', len(self.index), self.index.backend)
        self.points_world = torch.as_tensor(np.array(map_.points_world), dtype=torch.float64,
                                            device=self.device)
        self._kf_T_cam_world = np.asarray(map_.kf_T_cam_world, np.float64)
        self._map_T_model = map_.metadata.map_T_model or Sim3.identity()
        self._map_checked_at, self._map_change = time.monotonic(), None
        K = np.asarray(map_.kf_K, np.float64)
        self._map_focal = float(np.median(np.sqrt(K[:, 0, 0] * K[:, 1, 1])))
        size = np.asarray(map_.kf_image_size, np.float64)
        self._map_view = float(np.median(size[:, 0] / K[:, 0, 0] * size[:, 1] / K[:, 1, 1]))
        self._map_brightness = None
        if map_.kf_brightness is not None:
            self._map_brightness = float(np.clip(np.median(map_.kf_brightness), 0.02, 0.98))
        elif config.brightness.enabled:
            logger.info('map has no keyframe brightness (kf_brightness, recorded by builds since '
                        '2026-12-03): washed-out queries are not matched to its light; rebuild '
                        'the map to add it')
        # intrinsics evidence per camera (size, K, distortion), least recently seen first
        self._evidence: OrderedDict[tuple, IntrinsicsEvidence] = OrderedDict()

    def _tracking_model(self, model: FeatureModel | str | None) -> FeatureModel | None:
        """The model tracking queries run (one pass for both levels), or None: no tracking level
        in the map, ``fine_level: model``, or a model that does not match the map's level."""
        spec, cfg = self.map.tracking_spec, self.config
        if cfg.tracking.fine_level != 'auto' or not cfg.fine.enabled or not cfg.tracking.fine \
                or model is None:
            return None
        if spec is None:
            if self.map.spec.name in TRACKING_MODELS:
                logger.info('map has no tracking level (built before it existed or with '
                            '--no-tracking-level): tracking runs the fine network of %s; '
                            'rebuild the map to track with one network pass', self.map.spec.name)
            return None
        if isinstance(model, str):          # 'auto': the map's tracking model, configured
            try:
                model = load_configured_model(spec.name, cfg)
            except (ConfigError, BackendUnavailable, OSError) as exc:
                logger.warning('cannot load %s for the map\'s tracking level (%s): tracking runs '
                               'the fine network of %s', spec.name, exc, self.map.spec.name)
                return None
        diff = spec.mismatch(model.spec)
        if diff:
            logger.warning('the map\'s tracking level was built with other %s weights (%s): '
                           'tracking runs the fine network of %s; rebuild the map to track with '
                           'one network pass', spec.name, diff, self.map.spec.name)
            return None
        logger.info('tracking runs %s: both levels from one network pass (the map\'s tracking '
                    'level)', spec.name)
        return model

    def check_map_file(self, every_s: float = 10.0) -> str | None:
        """How the map's files changed on disk since loading (None if not), checked at most
        every ``every_s`` seconds; a change is logged once. The running map never changes: it
        was read into memory; reload it (node service / restart) to use the new files."""
        now = time.monotonic()
        if now - self._map_checked_at >= every_s:
            self._map_checked_at = now
            change = self.map.changed_on_disk()
            if change and change != self._map_change:
                logger.warning('map file changed on disk: %s; still using the map loaded at '
                               'start-up (reload the map to use the new files)', change)
            self._map_change = change
        return self._map_change

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, map_path: str | Path, config: PipelineConfig = PipelineConfig()
                    ) -> 'Relocalizer':
        """Load the map and the model (``config.model``, or the map's own with 'auto')."""
        threads = apply_threads(config.num_threads)
        t0 = time.perf_counter()
        map_ = load_map(map_path)
        name = map_.spec.name if config.model == 'auto' else config.model
        model = load_configured_model(name, config)
        logger.info('loaded model %s (%s, %d threads) and map %s (%d keyframes, %d points) in '
                    '%.0f ms', model.spec.name, getattr(model, 'backend', 'torch'),
                    threads, map_path, map_.num_keyframes, map_.num_points,
                    1e3 * (time.perf_counter() - t0))
        return cls(map_, model, config)

    @property
    def map_frame_id(self) -> str:
        return self.map.metadata.map_frame

    @property
    def map_T_model(self) -> Sim3:
        """The map frame from the model frame the solver works in (identity when the map
        has no similarity)."""
        return self._map_T_model

    def warmup(self) -> None:
        """One inference on a blank image, and the compiled CPU kernels loaded (numba compiles
        them, or reads its disk cache), so the first real query is not slow."""
        blank = np.zeros((480, 640, 3), np.uint8)
        self.model.extract(blank)
        if self._shares_pass():
            joint_features(self.model, blank)
        if self.tracking_model is not None:
            joint_features(self.tracking_model, blank)
        if self.device.type == 'cpu':
            compiled.warmup()

    # ------------------------------------------------------------------ public API
    def localize(self, image: np.ndarray, camera: Camera, prior: Prior | None = None,
                 depth: np.ndarray | None = None) -> Outcome:
        """Estimate ``T_cam_world`` of ``image``; a Result only when the verdict trusts it.

        ``timings_ms`` holds disjoint stages that add up to 'total' (up to bookkeeping):
        'prepare' (undistort, resize, rotations), 'tracking_failed' (a tracking attempt that
        fell back to global search), then the stages of the attempt returned."""
        t0 = time.perf_counter()
        self.check_map_file()
        timings: dict[str, float] = {}
        try:
            if not isinstance(camera, Camera):
                raise InputError(f'camera must be a Camera, got {type(camera).__name__}')
            if prior is not None:
                prior = Prior(*check_prior_pose(prior.T_cam_world, prior.covariance))
            prep0 = prepare(image, camera, self.config.max_image_side, 0, depth)
            check_prepared_size(prep0, MIN_IMAGE_SIDE)
            dn, br = self.config.denoise, self.config.brightness
            prep_info: dict = {}          # what denoise / match_brightness measured and did
            if dn.enabled:
                img, info = denoise(prep0.image, dn.noise_threshold, dn.sigma)
                prep0, prep_info = replace(prep0, image=img), {**prep_info, **info}
            if br.enabled and self._map_brightness is not None:
                img, info = match_brightness(prep0.image, self._map_brightness, br.min_gamma)
                prep0, prep_info = replace(prep0, image=img), {**prep_info, **info}
            sc = self.config.scale
            if sc.enabled:
                prep0 = match_focal(prep0, self._map_focal, sc.tolerance, sc.max_upscale)
            timings['prepare'] = _ms_since(t0)
            out, mode = self._localize(prep0, prior, timings)
        except (InputError, ShapeError) as exc:
            return Failure('bad_input', str(exc), {'total': _ms_since(t0)})
        if 'focal_ratio' in out.info:
            info = dict(out.info)
            info['estimated_focal_px'] = [info['focal_ratio'] * camera.fx,
                                          info['focal_ratio'] * camera.fy]
            rel = info.pop('principal_offset_rel', [0.0, 0.0])
            info['principal_offset_px'] = [rel[0] * camera.fx, rel[1] * camera.fy]
            info['estimated_principal_point_px'] = [camera.cx + rel[0] * camera.fx,
                                                    camera.cy + rel[1] * camera.fy]
            out = replace(out, info=info)
        if out.ok and not is_rigid(out.T_cam_world, atol=1e-6):
            out = Failure('diverged', 'the solver returned a non-rigid pose', out.timings_ms,
                          out.info)
        out = self._camera_verdict(out, camera)
        if prep_info:
            out = replace(out, info={**out.info, **prep_info})
        return self._finish(out, t0, mode, timings)

    def camera_evidence(self, camera: Camera) -> IntrinsicsEvidence:
        """The intrinsics evidence gathered for ``camera`` (same size, K and distortion = same
        camera); a camera not seen before (or dropped, ``MAX_CAMERAS``) starts with none."""
        key = (camera.width, camera.height, camera.fisheye, camera.K.tobytes(),
               camera.dist.tobytes())
        ev = self._evidence.pop(key, None)
        if ev is None:
            ev = IntrinsicsEvidence(self.config.intrinsics.stream)
        self._evidence[key] = ev
        while len(self._evidence) > MAX_CAMERAS:
            self._evidence.popitem(last=False)
        return ev

    def _camera_verdict(self, out: Outcome, camera: Camera) -> Outcome:
        """Add this frame's intrinsics estimate to its camera's evidence
        (``nre_ros.solver.intrinsics_stream``); once the combined estimate contradicts the
        camera's K, every pose of that camera is refused (``intrinsics_inconsistent``) while it
        does. The combined estimate goes to ``info['camera_intrinsics']``; the verdict's changes
        are logged once."""
        info = dict(out.info)
        frame = info.pop('_intrinsics_frame', None)
        cfg = self.config.intrinsics
        if not (cfg.enabled and cfg.stream.enabled):
            return replace(out, info=info)
        ev = self.camera_evidence(camera)
        if frame is not None:
            ev.add(frame)
        was = ev.inconsistent
        problem, est = ev.verdict()
        if est is None:
            return replace(out, info=info)
        s, (rx, ry) = est.focal_scale, est.principal_offset_rel
        focal = [s * camera.fx, s * camera.fy]
        pp = [camera.cx + rx * camera.fx, camera.cy + ry * camera.fy]
        info['camera_intrinsics'] = {'consistent': problem is None, 'frames': est.frames,
                                     'views': est.views, 'focal_ratio': s,
                                     'estimated_focal_px': focal,
                                     'estimated_principal_point_px': pp}
        if problem and not was:
            logger.warning('camera K looks wrong: over %d frames (%d views) its images fit '
                           'focal length %.1f, %.1f px and principal point %.1f, %.1f px (given '
                           '%.1f, %.1f and %.1f, %.1f): %s; refusing poses until the '
                           'CameraInfo changes', est.frames, est.views, *focal, *pp,
                           camera.fx, camera.fy, camera.cx, camera.cy, problem)
        elif was and not problem:
            logger.warning('camera K consistent again over %d frames (%d views): publishing '
                           'poses again', est.frames, est.views)
        if problem and out.ok:
            return Failure('intrinsics_inconsistent', f'the camera\'s intrinsics cannot explain '
                           f'its images ({est.frames} frames, {est.views} views): {problem}',
                           out.timings_ms, info)
        return replace(out, info=info)

    def _localize(self, prep0: PreparedImage, prior: Prior | None, timings: dict
                  ) -> tuple[Outcome, str]:
        """Tracking from ``prior`` when given, global search otherwise or when that fails."""
        if prior is not None:
            t = time.perf_counter()
            out = self._track(prep0, prior)
            if out.ok:
                return out, 'tracking'
            logger.debug('tracking failed (%s), falling back to global search', out.reason)
            timings['tracking_failed'] = _ms_since(t)
        return self._global(prep0, timings), 'global'

    # ------------------------------------------------------------------ stages
    def _finish(self, out: Outcome, t0: float, mode: str, timings: dict) -> Outcome:
        timings = {**timings, **out.timings_ms, 'total': _ms_since(t0)}
        return replace(out, timings_ms=timings, info={**out.info, 'mode': mode})

    def _candidate(self, prep: PreparedImage, timings: dict, fine: bool = False,
                   tracking_level: bool = False) -> _Candidate:
        """Coarse features of ``prep`` (timed 'features'); with ``fine`` and a model whose fine
        level comes out of the coarse pass (``shares_pass``), its fine level too, from the
        same pass; with ``tracking_level``, both levels from the tracking model's one pass."""
        t = time.perf_counter()
        if tracking_level:
            feats = joint_features(self.tracking_model, prep.image)
        elif fine and self._shares_pass():
            feats = joint_features(self.model, prep.image)
        else:
            feats = self.model.extract(prep.image, fine=False)
        _add(timings, 'features', t)
        return _Candidate(prep, feats, tracking_level=tracking_level)

    def _fine_spec(self, c: _Candidate) -> tuple[ModelSpec, str]:
        """The spec of ``c``'s fine level and the map's descriptors of it."""
        if c.tracking_level:
            return self.tracking_model.spec, 'fine_tracking'
        return self.model.spec, 'fine'

    def _shares_pass(self) -> bool:
        """Whether the model computes its fine level in the coarse pass, at a fraction of a
        second pass (then the first candidate of a query computes both at once)."""
        return bool(getattr(self.model, 'shares_pass', False)) and self.config.fine.enabled \
            and self.model.spec.fine_stride > 0

    def _retrieve(self, cands: list[_Candidate], timings: dict) -> list[_Candidate]:
        """Score each orientation by retrieval; keep the best ``candidates`` of them."""
        t = time.perf_counter()
        k = self.config.retrieval.top_k
        descs = np.stack([global_descriptor(c.features) for c in cands])
        idx, scores = self.index.query(descs, k)
        order = np.argsort(-scores[:, 0], kind='stable')[:self.config.rotation.candidates]
        kept = [replace(cands[i], keyframes=idx[i], point_idx=self._points_of(idx[i]))
                for i in order]
        _add(timings, 'retrieval', t)
        return kept

    def _points_of(self, keyframes: np.ndarray) -> np.ndarray:
        """Unique point indices seen by ``keyframes``, capped at ``retrieval.max_points``.

        Taken round-robin over the keyframes (each one's strongest keypoints first, the
        better-ranked keyframe first within a round), so the cap keeps every keyframe's view
        however dense the map: filled by the first keyframes alone, the point set of a query
        came from a narrow set of views and left sideways translation + yaw loosely held
        (docs/decisions.md)."""
        lists = [self.map.observations(int(i)).point_idx for i in keyframes]
        pts = np.concatenate(lists)
        within = np.concatenate([np.arange(len(p)) for p in lists])
        rank = np.concatenate([np.full(len(p), r) for r, p in enumerate(lists)])
        pts = pts[np.lexsort((rank, within))]
        _, first = np.unique(pts, return_index=True)
        return pts[np.sort(first)][:self.config.retrieval.max_points].astype(np.int64)

    def _points_near(self, keyframes: np.ndarray, T_cam_world: np.ndarray, camera: Camera
                     ) -> np.ndarray:
        """Points of ``keyframes`` (``_points_of``) for a query near ``T_cam_world`` (4, 4),
        capped at ``tracking.max_points`` by ``spread_over_image`` of their projections."""
        pts = self._points_of(keyframes)
        cap = self.config.tracking.max_points
        if not cap or len(pts) <= cap:
            return pts
        points = np.asarray(self.map.points_world[pts], np.float64)
        p_cam = points @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        uv, valid = camera.project(p_cam)
        return pts[spread_over_image(uv, valid, (camera.width, camera.height), cap)]

    def _descriptors(self, point_idx: np.ndarray, keyframes: np.ndarray, level: str
                     ) -> torch.Tensor:
        """(N, C) descriptors of ``point_idx``, taken from the best-ranked keyframe seeing each."""
        obs = [self.map.observations(int(i)) for i in keyframes]
        obs_kf = np.concatenate([np.full(len(o.point_idx), r) for r, o in enumerate(obs)])
        obs_pt = np.concatenate([o.point_idx for o in obs])
        desc = np.concatenate([getattr(o, level) for o in obs])
        order = np.lexsort((obs_kf, obs_pt))            # by point, then keyframe rank
        pts_sorted = obs_pt[order]
        first = order[np.searchsorted(pts_sorted, point_idx)]
        return torch.as_tensor(np.asarray(desc[first], np.float32), device=self.device)

    def _coarse_maps(self, c: _Candidate, timings: dict) -> _Candidate:
        t = time.perf_counter()
        desc = self._descriptors(c.point_idx, c.keyframes, 'coarse')
        maps = coarse_loss_maps(c.features.coarse, desc, self.model.spec.inv_temperature,
                                matmul_dtype=self._matmul_dtype)
        _add(timings, 'lossmaps', t)
        return replace(c, coarse_maps=maps)

    def _K_grid(self, prep: PreparedImage, stride: int) -> torch.Tensor:
        return torch.as_tensor(prep.camera.feature_grid(stride).K, dtype=torch.float64,
                               device=self.device)

    def _fine_level(self, c: _Candidate, T: torch.Tensor, timings: dict) -> FineLevel | None:
        """Fine descriptors of the query (the fine network, timed 'fine_features') and the
        fine windows around the reprojections under the coarse pose T ('fine_maps');
        None when the model has no fine level or no point projects into the grid."""
        spec, level_name = self._fine_spec(c)
        t = time.perf_counter()
        fine = c.features.fine                       # computed with the coarse level
        if fine is None and hasattr(self.model, 'extract_fine'):      # fine network only
            fine = self.model.extract_fine(c.prep.image)
        elif fine is None:
            fine = self.model.extract(c.prep.image, fine=True).fine
        _add(timings, 'fine_features', t)
        t = time.perf_counter()
        K_fine = self._K_grid(c.prep, spec.fine_stride)
        uv, index = se3.project_in_grid(self.points_world[c.point_idx], T, K_fine,
                                        (fine.shape[2], fine.shape[1]))
        level = None
        if index.numel() > 0:
            desc = self._descriptors(c.point_idx[index.cpu().numpy()], c.keyframes, level_name)
            maps = fine_loss_maps(fine, desc, uv[index].float(), c.coarse_maps,
                                  spec.coarse_stride / spec.fine_stride,
                                  spec.fine_inv_temperature, self.config.fine.window,
                                  self.config.fine.divisor, coarse_index=index)
            level = FineLevel(maps, K_fine, index)
        _add(timings, 'fine_maps', t)
        return level

    def _solve(self, c: _Candidate, T_init: np.ndarray | torch.Tensor, prealign_init: bool,
               fine: bool, timings: dict) -> Outcome:
        """Coarse GNC from T_init (after the tracking pre-alignment when ``prealign_init``),
        the fine network and fine GNC when ``fine``, the verdict; in the caller's frame."""
        cfg = self._solver_config(c.prep)
        sol = solve_coarse(self.points_world[c.point_idx], c.coarse_maps,
                           self._K_grid(c.prep, self.model.spec.coarse_stride), cfg,
                           T_init=T_init, prealign_init=prealign_init)
        if not isinstance(sol, Failure) and fine and self.config.fine.enabled \
                and self.model.spec.fine_stride > 0:
            level = self._fine_level(c, sol.T_cam_world, timings)
            if level is not None:
                sol = refine_level(sol, level, cfg)
        out = sol if isinstance(sol, Failure) else verdict(sol, cfg.verdict)
        if out.ok and self.config.intrinsics.enabled:
            out = self._check_intrinsics(out, sol, c.prep, self._fine_spec(c)[0].fine_stride)
        return self._to_caller_frame(out, c, timings)

    def _view_ratio(self, prep: PreparedImage) -> float:
        """The query's view area over the map keyframes' (``(W / fx) (H / fy)``), at most 1."""
        cam = prep.camera
        return min(1.0, cam.width / cam.fx * cam.height / cam.fy / self._map_view)

    def _solver_config(self, prep: PreparedImage) -> SolverConfig:
        """The solver settings for one query: a query seeing less than the map's keyframes
        (a crop, a longer focal length) can see at most that share of the retrieved points, so
        the verdict's minimum supported fraction is scaled by the ratio of the view areas."""
        cfg = self.config.solver
        ratio = self._view_ratio(prep)
        if ratio >= 1.0:
            return cfg
        v = cfg.verdict
        return replace(cfg, verdict=replace(v, min_supported_fraction=v.min_supported_fraction
                                            * ratio))

    def _check_intrinsics(self, out: Outcome, sol, prep: PreparedImage, fine_stride: int
                          ) -> Outcome:
        """Refuse a pose whose maps fit other intrinsics than the given ones
        (``nre_ros.solver.intrinsics_check``): the gross-error guard on the coarse level, then
        focal scale and principal point on the fine level (tolerances of both widened for a
        view narrower than the map keyframes'). The estimate (fine level when there is one)
        goes to ``info`` either way; the principal-point offset as ``principal_offset_rel``
        (caller's camera frame, in units of the focal length)."""
        t = time.perf_counter()
        cfg, spec = self.config.intrinsics, self.model.spec
        c = sol.coarse
        view_scale = float(np.sqrt(self._view_ratio(prep)))
        problem, est = intrinsics_check.check_gross(c.points_world, c.maps, c.K, sol.T_cam_world,
                                                    cfg, spec.coarse_stride, view_scale)
        lvl = c
        if problem is None and sol.level.name == 'fine':
            f = sol.level
            fine_problem, fine_est = intrinsics_check.check(
                f.points_world, f.maps, f.K, sol.T_cam_world, cfg, fine_stride,
                view_scale=view_scale)
            if fine_est is not None:
                problem, est, lvl = fine_problem, fine_est, f
        timings = {**out.timings_ms, 'intrinsics_check': _ms_since(t)}
        if est is None:
            return replace(out, timings_ms=timings)
        K = lvl.K.cpu().numpy()
        d = np.array([est.principal_offset[0] / K[0, 0], est.principal_offset[1] / K[1, 1], 0.0])
        info = {**out.info, 'focal_ratio': est.focal_scale,
                'focal_ratio_log_sigma': est.focal_scale_sigma,
                'intrinsics_check_level': lvl.name,
                'principal_offset_rel': (prep.R_img_cam.T @ d)[:2].tolist()}
        if est.fit_principal_point:
            info['_intrinsics_frame'] = self._frame_intrinsics(est, lvl, prep)
        if problem:
            return Failure('intrinsics_inconsistent', f'the given camera intrinsics cannot '
                           f'explain the image: {problem}', timings, info)
        return replace(out, timings_ms=timings, info=info)

    def _frame_intrinsics(self, est: intrinsics_check.IntrinsicsEstimate, lvl,
                          prep: PreparedImage) -> FrameIntrinsics:
        """A fine-level estimate as the camera's evidence wants it: theta and its block-
        jackknife covariance in units of the focal length and the caller's camera frame, the
        fitted camera's centre, optical axis and the median depth of the level's points."""
        K = lvl.K.cpu().numpy()
        J = np.diag([1.0, 1.0 / K[0, 0], 1.0 / K[1, 1]])
        J[1:, 1:] = prep.R_img_cam.T[:2, :2] @ J[1:, 1:]
        T = est.T_cam_world
        pc = lvl.points_world.cpu().numpy() @ T[:3, :3].T + T[:3, 3]
        return FrameIntrinsics(J @ est.theta, J @ est.jackknife_cov @ J.T,
                               -T[:3, :3].T @ T[:3, 3], T[2, :3].copy(),
                               float(np.median(pc[:, 2])), float(np.sqrt(self._view_ratio(prep))))

    def _metres_per_unit(self) -> float | None:
        """Size of one map unit in metres (None when the map is not metric)."""
        sim = self.map.metadata.map_T_model
        if sim is not None:
            return float(sim.scale) if self.map.metadata.units == 'm' else None
        return 1.0 if self.map.metadata.units == 'm' else None

    def _initialize(self, c: _Candidate, timings: dict) -> _Candidate:
        """Coarse maps and the initial pose of one orientation: Kabsch on depth when the query
        has depth and the map is metric, P3P MSAC otherwise or when that finds nothing."""
        c = self._coarse_maps(c, timings)
        t = time.perf_counter()
        K = self._K_grid(c.prep, self.model.spec.coarse_stride)
        pts = self.points_world[c.point_idx]
        cfg = self.config
        metres = self._metres_per_unit()
        if c.prep.depth is not None and cfg.depth.enabled and metres is not None:
            K_img = torch.as_tensor(c.prep.camera.K, dtype=torch.float64, device=self.device)
            m = depth_msac(pts, c.coarse_maps, K, torch.from_numpy(c.prep.depth), K_img,
                           metres, cfg.depth, cfg.solver.msac)
            if m.T_cam_world is not None:
                _add(timings, 'msac', t)
                return replace(c, msac=m, init=Init.DEPTH)
        m = msac(pts, c.coarse_maps, K, cfg.solver.msac)
        _add(timings, 'msac', t)
        return replace(c, msac=m, init=Init.P3P)

    def _support_fraction(self, c: _Candidate) -> float:
        if c.msac is None or c.msac.T_cam_world is None or c.msac.num_candidates == 0:
            return 0.0
        return c.msac.support / c.msac.num_candidates

    def _upright(self, c: _Candidate) -> bool:
        """Whether the MSAC pose of ``c`` (its turned image's T_img_world) is rolled at most
        ``rotation.upright_roll_deg`` from the best-aligned of its nearest keyframes."""
        T = c.msac.T_cam_world
        roll = roll_deg(self._kf_T_cam_world[self._nearest_by_view(T)], T)
        return abs(roll) <= self.config.rotation.upright_roll_deg

    def _nearest_by_view(self, T_cam_world: np.ndarray) -> np.ndarray:
        """Indices of the ``tracking.keyframes`` keyframes nearest to ``T_cam_world`` (4, 4) by
        position and optical axis, whatever their roll."""
        n_kf = min(self.config.tracking.keyframes, self.map.num_keyframes)
        return nearest_keyframes(self._kf_T_cam_world, T_cam_world, with_roll=False)[:n_kf]

    def _global(self, prep0: PreparedImage, timings: dict) -> Outcome:
        """Retrieval, rotation search and MSAC, then ``_solve``; stage times go to
        ``timings`` (mutated)."""
        rot = self.config.rotation
        turns = list(rot.quarter_turns) or [0]
        min_points = self.config.solver.min_points

        def candidate(k: int, fine: bool = False) -> _Candidate:
            t = time.perf_counter()
            prep = rotated(prep0, k)
            _add(timings, 'prepare', t)
            return self._candidate(prep, timings, fine)

        # 1) the first rotation alone: most robot cameras are upright (its fine level now
        # when the model gets it from the same pass)
        first = self._retrieve([candidate(turns[0], fine=True)], timings)
        tried = [self._initialize(c, timings) for c in first if len(c.point_idx) >= min_points]
        searched = 1
        # 2) the other rotations only when that was not convincing
        if len(turns) > 1 and (not tried or self._support_fraction(tried[0])
                               < rot.early_exit_support or not self._upright(tried[0])):
            searched = len(turns)
            done = {c.prep.quarter_turns for c in tried}
            cands = first + [candidate(k) for k in turns[1:]]
            tried += [self._initialize(c, timings) for c in self._retrieve(cands, timings)
                      if c.prep.quarter_turns not in done and len(c.point_idx) >= min_points]
        timings.setdefault('msac', 0.0)
        ok = [c for c in tried if c.msac.T_cam_world is not None]
        if not ok:
            reasons = [c.msac.reason for c in tried] or ['no_keyframes']
            return Failure(reasons[0], 'no orientation gave a pose hypothesis', timings)
        best = max(ok, key=lambda c: c.msac.support)
        # the start is this MSAC's pose: no tracking pre-alignment
        out = self._solve(best, best.msac.T_cam_world, False, True, timings)
        return replace(out, info={**out.info, 'init': best.init.value,
                                  'orientations_searched': searched})

    def _track(self, prep: PreparedImage, prior: Prior) -> Outcome:
        """Refine from a prior (no MSAC) against the keyframes nearest to it."""
        timings: dict[str, float] = {}
        T_prior = np.asarray(prior.T_cam_world, dtype=np.float64)
        n_kf = min(self.config.tracking.keyframes, self.map.num_keyframes)
        # nearest keyframes by view: 1 degree of relative rotation ~ 1 cm between centres
        # the roll is known from the prior: descriptors are not rotation invariant, so turn the
        # image by quarter turns to the roll of the best-aligned of the keyframes nearest by
        # position and optical axis (none for moderate rolls), then take the nearest keyframes
        # of the turned camera
        kf = self._kf_T_cam_world
        prep = rotated(prep, quarter_turns_to(kf[self._nearest_by_view(T_prior)], T_prior))
        T_init = np.eye(4)
        T_init[:3, :3] = prep.R_img_cam
        T_init = T_init @ T_prior
        nearest = nearest_keyframes(kf, T_init)[:n_kf]
        c = replace(self._candidate(prep, timings, fine=self.config.tracking.fine,
                                    tracking_level=self.tracking_model is not None),
                    keyframes=nearest, point_idx=self._points_near(nearest, T_init, prep.camera))
        if len(c.point_idx) < self.config.solver.min_points:
            return Failure('too_few_points', 'no map points near the prior', timings)
        c = self._coarse_maps(c, timings)
        out = self._solve(c, T_init, True, self.config.tracking.fine, timings)
        if out.ok:
            dt, dr = pose_error(out.T_cam_world, T_prior)
            cfg = self.config.tracking
            if dt > cfg.max_translation_m or dr > cfg.max_rotation_deg:
                return Failure('disagrees_with_prior', f'{dt:.2f} m / {dr:.1f} deg from the prior',
                               out.timings_ms, out.info)
            d2 = prior_mahalanobis_sq(out.T_cam_world, out.covariance, prior)
            if d2 is not None:
                out = replace(out, info={**out.info, 'prior_mahalanobis_sq': d2})
                if d2 > cfg.max_mahalanobis_sq:
                    return Failure('disagrees_with_prior', f'Mahalanobis distance^2 {d2:.1f} to '
                                   f'the prior > {cfg.max_mahalanobis_sq}', out.timings_ms,
                                   out.info)
        return out

    def _to_caller_frame(self, out: Outcome, c: _Candidate, timings: dict) -> Outcome:
        """Undo the quarter-turn rotation: T_cam_world = R_img_cam^T T_img_world."""
        timings = {**timings, **out.timings_ms}
        info = {**out.info, 'quarter_turns': c.prep.quarter_turns,
                'keyframes': [self.map.keyframe_names[int(i)] for i in c.keyframes],
                'points': int(len(c.point_idx))}
        if not out.ok:
            return replace(out, timings_ms=timings, info=info)
        R = np.eye(4)
        R[:3, :3] = c.prep.R_img_cam.T
        T = R @ out.T_cam_world
        # the covariance of a left increment rotates with the frame: Ad(R^T) cov Ad(R^T)^T
        A = np.zeros((6, 6))
        A[:3, :3] = A[3:, 3:] = c.prep.R_img_cam.T
        cov = A @ out.covariance @ A.T
        support = None if out.support is None else replace(out.support, point_idx=c.point_idx)
        return replace(out, T_cam_world=T, covariance=cov, timings_ms=timings, info=info,
                       support=support)


def quarter_turns_to(T_kf_world: np.ndarray, T_cam_world: np.ndarray,
                     upright_deg: float = 100.0) -> int:
    """Counter-clockwise quarter turns of a camera's image (``preprocess.rotated``) that align
    its roll with the best-aligned of keyframes ``T_kf_world`` (K, 4, 4): from the in-plane
    angle of R_kf_cam = R_kf_world R_cam_world^T (one quarter turn maps camera (x, y) to
    (y, -x), i.e. -90 deg about z). 0 while the best-aligned roll is within ``upright_deg``:
    the upright image matches rolled views better than a turned one (docs/decisions.md)."""
    best = roll_deg(T_kf_world, T_cam_world)
    return 0 if abs(best) < upright_deg else int(round(-best / 90.0)) % 4


def roll_deg(T_kf_world: np.ndarray, T_cam_world: np.ndarray) -> float:
    """Signed in-plane angle (deg) of R_kf_cam = R_kf_world R_cam_world^T for the best-aligned
    (smallest angle) of keyframes ``T_kf_world`` (K, 4, 4)."""
    R = np.asarray(T_kf_world).reshape(-1, 4, 4)[:, :3, :3] @ np.asarray(T_cam_world)[:3, :3].T
    angle = np.degrees(np.arctan2(R[:, 1, 0], R[:, 0, 0]))
    return float(angle[np.argmin(np.abs(angle))])


def _ms_since(t0: float) -> float:
    return 1e3 * (time.perf_counter() - t0)


def _add(timings: dict, stage: str, t0: float) -> None:
    """Add the time since t0 (ms) to ``timings[stage]``."""
    timings[stage] = timings.get(stage, 0.0) + _ms_since(t0)
