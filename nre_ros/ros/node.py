"""Lifecycle node ``nre_relocalization``: a thin ROS 2 adapter over ``nre_ros.pipeline``.

Interface (lifecycle, topics, QoS, frames, TF, covariance, parameters, services, diagnostics):
docs/ros.md. Images are paired with camera_info by exact
stamp on the executor; localization runs on one worker thread (frames arriving while it is
busy are dropped and counted); a thread of its own republishes the latest map->odom. ``main``
spins one SingleThreadedExecutor (see docs/ros.md "Threads"); the callback groups keep the
node correct in a MultiThreadedExecutor too. Entry point: ``ros2 run nre_ros
nre_relocalization`` (``main``).
"""
from __future__ import annotations

import collections
import dataclasses
import faulthandler
import gc
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool, Trigger

from nre_ros import messages as msgs
from nre_ros.errors import InputError
from nre_ros.geometry import invert, make_transform, so3_exp
from nre_ros.ros import conversions as conv
from nre_ros.ros.diagnostics import NodeStats, to_status
from nre_ros.ros.gating import FixGate, GateConfig, quality_reason
from nre_ros.ros.params import NodeConfig, declare_parameters, read_config
from nre_ros.ros.tf import TfBroadcaster, TfLookupError, make_buffer_and_listener, \
    make_transform_stamped

try:  # custom service: separate ament_cmake package (nre_ros_interfaces/build_wheel.sh)
    from nre_ros_interfaces.srv import LoadMap  # type: ignore[import-not-found]
except ImportError:
    LoadMap = None

NODE_NAME = 'nre_relocalization'
POSE_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
INITIALPOSE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
RelocalizerFactory = Callable[[str, NodeConfig], Any]


def pipeline_relocalizer(map_path: str, cfg: NodeConfig):
    """Default factory: ``Relocalizer.from_config`` of nre_ros.pipeline (imported lazily)."""
    import dataclasses

    from nre_ros.pipeline import PipelineConfig, Relocalizer
    pcfg = PipelineConfig.from_yaml(cfg.pipeline_config) if cfg.pipeline_config \
        else PipelineConfig()
    if cfg.num_threads:
        pcfg = dataclasses.replace(pcfg, num_threads=cfg.num_threads)
    if cfg.engine_cache_dir:
        names = {f.name for f in dataclasses.fields(pcfg)}
        if 'engine_cache_dir' in names:
            pcfg = dataclasses.replace(pcfg, engine_cache_dir=cfg.engine_cache_dir)
    return Relocalizer.from_config(map_path, pcfg)


PENDING_IMAGES = 3   # images kept waiting for their CameraInfo
WORKER_JOIN_TIMEOUT_S = 8.0   # a frame in flight at shutdown gets this long to finish
SHUTDOWN_WATCHDOG_S = 15.0    # below NodeProcess.stop's 20 s, so a stuck exit leaves stacks


@dataclass(frozen=True)
class _FallbackPrior:
    """Same fields as nre_ros.pipeline.Prior, for relocalizers that do not come from it."""

    T_cam_world: np.ndarray
    covariance: np.ndarray | None = None


def _prior_class():
    """nre_ros.pipeline.Prior when the pipeline is in use (never import torch just for it)."""
    pipeline = sys.modules.get('nre_ros.pipeline')
    return getattr(pipeline, 'Prior', _FallbackPrior)


@dataclass
class _Fix:
    T_map_base: np.ndarray
    T_map_odom: np.ndarray | None
    cov: np.ndarray
    stamp_ns: int


class RelocalizationNode(LifecycleNode):
    """See module docstring. ``relocalizer_factory(map_path, cfg)`` replaces the pipeline."""

    def __init__(self, *, relocalizer_factory: RelocalizerFactory | None = None,
                 node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self)
        self._factory = relocalizer_factory or pipeline_relocalizer
        self.cfg: NodeConfig | None = None
        self.reloc = None
        self.stats = NodeStats()
        self._lock = threading.Lock()          # frame slot, fix, flags
        self._wake = threading.Condition(self._lock)
        self._tf_lock = threading.Lock()
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._load_group = MutuallyExclusiveCallbackGroup()    # long: not with the others
        self._load_lock = threading.Lock()
        self._map_gen = 0          # bumped by ~/load_map: results of the old map are dropped
        self._reset_runtime_state()
        self._active_entities: list = []
        self._pose_pub = self._tf_pub = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        period = float(self.get_parameter('diagnostic_updater.period').value)
        self._diag_timer = self.create_timer(period, self.publish_diagnostics,
                                             callback_group=self._timer_group)

    # ================================================================== lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().info('Configuring...')
        t0 = time.perf_counter()
        try:
            cfg = read_config(self)
            reloc = self._factory(cfg.map_path, cfg)
            t_load = time.perf_counter() - t0
            reloc.warmup()
        except Exception as exc:  # noqa: BLE001 - any load error must fail the transition
            self.get_logger().error(f'Configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.cfg, self.reloc = cfg, reloc
        map_frame = getattr(reloc, 'map_frame_id', cfg.map_frame)
        if map_frame and map_frame != cfg.map_frame:
            self.get_logger().warning(f'map file says frame {map_frame!r}, publishing in '
                                      f'map_frame={cfg.map_frame!r}')
        self._gate = FixGate(GateConfig(
            cfg.min_points, cfg.min_inlier_ratio, cfg.max_cost, cfg.min_consistent_fixes,
            cfg.consistency_translation, cfg.consistency_rotation, cfg.max_jump_translation,
            cfg.max_jump_rotation))
        self._pose_pub = self.create_lifecycle_publisher(PoseWithCovarianceStamped, '~/pose',
                                                         POSE_QOS)
        if cfg.tf_owner != 'none':
            self._tf_pub = TfBroadcaster(self, lifecycle=True)
        if cfg.publish_debug_image:
            self.get_logger().warning('publish_debug_image is not implemented yet; ignored')
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name='nre_worker', daemon=True)
        self._worker.start()
        with self.stats.lock:
            self.stats.map_loaded, self.stats.map_id = True, cfg.map_path
            self.stats.state = 'inactive'
        self.get_logger().info(
            f'Configured: map {cfg.map_path} loaded in {t_load:.2f} s, warm-up '
            f'{time.perf_counter() - t0 - t_load:.2f} s; tf_mode={cfg.tf_owner}, '
            f'frames {cfg.map_frame}/{cfg.odom_frame}/{cfg.base_frame}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.cfg
        self._tf_buffer, listener = make_buffer_and_listener(self, 10.0, self._tf_group)
        image_topic = self.resolve_topic_name('image')
        info_topic = self._camera_info_topic(image_topic)
        if cfg.image_transport == 'compressed':
            in_type, in_topic = CompressedImage, image_topic + '/compressed'
        else:
            in_type, in_topic = Image, image_topic
        qos = qos_profile_sensor_data if cfg.image_qos == 'SENSOR_DATA' else \
            QoSProfile(depth=cfg.queue_size, reliability=ReliabilityPolicy.RELIABLE)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.queue_size,
                         reliability=qos.reliability, durability=qos.durability)
        sub = self.create_subscription
        srv = self.create_service
        self._active_entities = [
            ('listener', listener),
            ('sub', sub(in_type, in_topic, self._on_image, qos,
                        callback_group=self._sensor_group)),
            ('sub', sub(CameraInfo, info_topic, self._on_camera_info, qos,
                        callback_group=self._sensor_group)),
            ('sub', sub(PoseWithCovarianceStamped, '/initialpose', self._on_initialpose,
                        INITIALPOSE_QOS, callback_group=self._sensor_group)),
            ('srv', srv(Trigger, '~/relocalize', self._srv_relocalize,
                        callback_group=self._service_group)),
            ('srv', srv(Trigger, '~/reset', self._srv_reset, callback_group=self._service_group)),
            ('srv', srv(SetBool, '~/enable', self._srv_enable,
                        callback_group=self._service_group)),
        ]
        if LoadMap is not None:
            self._active_entities.append(('srv', srv(LoadMap, '~/load_map', self._srv_load_map,
                                                     callback_group=self._load_group)))
        else:
            self.get_logger().info('~/load_map unavailable: nre_ros_interfaces is not installed '
                                   '(build it with nre_ros_interfaces/build_wheel.sh); change '
                                   'map_path and cleanup + configure instead')
        depth_topic = ''
        if cfg.use_depth:
            depth_topic = self.resolve_topic_name('depth')
            self._active_entities.append(('sub', sub(
                Image, depth_topic, self._on_depth,
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(cfg.queue_size, 5),
                           reliability=qos.reliability, durability=qos.durability),
                callback_group=self._sensor_group)))
        if cfg.tf_owner != 'none' and cfg.transform_publish_period > 0:
            # its own thread, not an executor timer: TF keeps flowing while a callback holds
            # the executor for seconds (~/load_map, a lifecycle transition)
            self._active_entities.append(('thread', _Periodic(
                cfg.transform_publish_period, self._on_tf_timer, 'nre_tf_republish')))
        with self._lock:
            self._active, self._enabled = True, True
            self._requested = cfg.localize_on_startup
            if cfg.set_initial_pose:
                self._pending_prior = self._initial_pose_prior(cfg)
        with self.stats.lock:
            self.stats.state = 'active'
        self.get_logger().info(f'Activated: image {in_topic} ({in_type.__name__}), camera_info '
                               f'{info_topic}' + (f', depth {depth_topic}' if depth_topic else ''))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self._active, self._slot = False, None
        self._destroy_active_entities()
        with self.stats.lock:
            self.stats.state = 'inactive'
        self.get_logger().info('Deactivated (model kept loaded)')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info('Cleaned up (model and map released)')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self._active = False
        self._destroy_active_entities()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error('Error processing: releasing everything')
        return self.on_shutdown(state)

    def autostart(self) -> bool:
        """configure + activate (the ``autostart`` parameter); False if a step failed."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def _destroy_active_entities(self) -> None:
        for kind, entity in self._active_entities:
            if kind == 'listener':
                entity.destroy()
            elif kind == 'sub':
                self.destroy_subscription(entity)
            elif kind == 'srv':
                self.destroy_service(entity)
            elif kind == 'thread':
                entity.stop()
        self._active_entities = []

    def _release(self) -> None:
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=WORKER_JOIN_TIMEOUT_S)
            self._worker = None
        if self._pose_pub is not None:
            self.destroy_lifecycle_publisher(self._pose_pub)
        if self._tf_pub is not None:
            self._tf_pub.destroy()
        self._pose_pub = self._tf_pub = None
        self.reloc, self.cfg = None, None
        self._reset_runtime_state()
        gc.collect()
        torch = sys.modules.get('torch')
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.stats = NodeStats()

    def _reset_runtime_state(self) -> None:
        self._active = self._enabled = self._requested = self._busy = False
        self._force_global = False
        self._slot = None
        # images waiting for their CameraInfo, by stamp (a few: the two topics are delivered
        # independently, so image i+1 may arrive before CameraInfo i)
        self._pending_images: collections.OrderedDict[int, Image] = collections.OrderedDict()
        self._infos: collections.OrderedDict[int, CameraInfo] = collections.OrderedDict()
        self._depths: collections.OrderedDict[int, Image] = collections.OrderedDict()
        self._pending_prior = None
        self._fix: _Fix | None = None
        self._last_tf_ns = 0
        self._last_start_stamp_ns: int | None = None
        self._gate = FixGate(GateConfig())
        self._inflight_gen = -1

    def _camera_info_topic(self, image_topic: str) -> str:
        remapped = self.resolve_topic_name('camera_info')
        if remapped != self.resolve_topic_name('camera_info', only_expand=True):
            return remapped  # explicitly remapped
        return image_topic.rsplit('/', 1)[0] + '/camera_info'  # sibling of the image

    # ================================================================== inputs (executor)
    def _on_depth(self, msg: Image) -> None:
        """Keep the last few depth images by stamp; the worker takes the one of its image."""
        with self._lock:
            self._depths[msgs.stamp_to_ns(msg.header.stamp)] = msg
            while len(self._depths) > 10:
                self._depths.popitem(last=False)
            self._wake.notify_all()

    def _take_depth(self, stamp_ns: int, timeout_s: float) -> Image | None:
        """The depth image with exactly this stamp, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                msg = self._depths.pop(stamp_ns, None)
                remaining = deadline - time.monotonic()
                if msg is not None or remaining <= 0 or self._stop.is_set():
                    return msg
                self._wake.wait(min(remaining, 0.01))

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.count('frames_received')
        stamp = msgs.stamp_to_ns(msg.header.stamp)
        with self._lock:
            info = self._infos.get(stamp)
            if info is None:
                self._pending_images[stamp] = msg
                while len(self._pending_images) > PENDING_IMAGES:
                    self._pending_images.popitem(last=False)
                    self.stats.count('frames_unpaired')
                return
            self._drop_pending_up_to(stamp)
            self._submit(msg, info)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        stamp = msgs.stamp_to_ns(msg.header.stamp)
        with self._lock:
            self._infos[stamp] = msg
            while len(self._infos) > 10:
                self._infos.popitem(last=False)
            pending = self._pending_images.pop(stamp, None)
            if pending is not None:
                self._drop_pending_up_to(stamp)
                self._submit(pending, msg)

    def _drop_pending_up_to(self, stamp: int) -> None:
        """Forget waiting images not newer than ``stamp`` (a newer frame is being processed;
        called with self._lock held)."""
        for old in [s for s in self._pending_images if s <= stamp]:
            del self._pending_images[old]
            self.stats.count('frames_unpaired')

    def _submit(self, image: Image, info: CameraInfo) -> None:
        """Hand a paired frame to the worker (called with self._lock held)."""
        self.stats.count('frames_paired')
        cfg = self.cfg
        if not (self._active and self._enabled and (cfg.continuous or self._requested)):
            return
        stamp = msgs.stamp_to_ns(image.header.stamp)
        last = self._last_start_stamp_ns
        if cfg.continuous and cfg.max_rate > 0 and last is not None and \
                0 <= stamp - last < 1e9 / cfg.max_rate:
            self.stats.count('frames_skipped_rate')
            return
        if self._busy or self._slot is not None:
            self.stats.count('frames_dropped_busy')
            if self._busy:
                return
        self._slot = (image, info)
        self._last_start_stamp_ns = stamp
        self._wake.notify()

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        cfg = self.cfg
        if msg.header.frame_id.lstrip('/') != cfg.map_frame:
            self.get_logger().warning(f'/initialpose ignored: frame {msg.header.frame_id!r} is '
                                      f'not map_frame {cfg.map_frame!r}')
            return
        try:
            T = msgs.pose_to_matrix(msg.pose.pose)
        except InputError as exc:
            self.get_logger().warning(f'/initialpose ignored: {exc}')
            return
        cov = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        with self._lock:
            self._pending_prior, self._force_global, self._requested = (T, cov), False, True
        self.get_logger().info(f'/initialpose: prior at {np.round(T[:3, 3], 3).tolist()} '
                               f'for the next frame')

    @staticmethod
    def _initial_pose_prior(cfg: NodeConfig) -> tuple[np.ndarray, np.ndarray]:
        T = make_transform(so3_exp(np.array([0.0, 0.0, cfg.initial_pose_yaw])),
                           [cfg.initial_pose_x, cfg.initial_pose_y, cfg.initial_pose_z])
        r = max(cfg.prior_search_radius, cfg.min_position_std)
        return T, np.diag([r * r] * 3 + [0.5 ** 2] * 3)

    # ================================================================== services
    def _srv_relocalize(self, request: Trigger.Request, response: Trigger.Response):
        with self._lock:
            self._force_global, self._requested, self._pending_prior = True, True, None
        response.success, response.message = True, 'next frame: global search without prior'
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response):
        with self._lock:
            self._gate.reset()
            self._fix, self._pending_prior = None, None
        self.stats.reset_fix()
        response.success, response.message = True, 'fix and consistency history forgotten'
        return response

    def _srv_enable(self, request: SetBool.Request, response: SetBool.Response):
        with self._lock:
            self._enabled = bool(request.data)
        response.success = True
        response.message = 'processing enabled' if request.data else 'processing paused'
        return response

    def _srv_load_map(self, request, response):
        """Load another map (+ model) while active; the old one stays if loading fails."""
        if not self._load_lock.acquire(blocking=False):
            response.success, response.message = False, 'rejected: a load_map call is running'
            return response
        try:
            path = request.map_path.strip()
            old = self.cfg
            if old is None or not path:
                response.success = False
                response.message = 'map_path is empty' if old is not None else 'not configured'
                return response
            hint = None
            if request.use_hint:
                try:
                    hint = msgs.pose_to_matrix(request.hint)
                except InputError as exc:
                    response.success, response.message = False, f'bad hint: {exc}'
                    return response
            t0 = time.perf_counter()
            cfg = dataclasses.replace(old, map_path=path)
            try:
                reloc = self._factory(path, cfg)
                reloc.warmup()
            except Exception as exc:  # noqa: BLE001 - any load error is an answer, not a crash
                response.success = False
                response.message = (f'could not load {path}: {type(exc).__name__}: {exc}; '
                                    f'still using {old.map_path}')
                self.get_logger().error(f'~/load_map: {response.message}')
                return response
            with self._lock:
                self.reloc, self.cfg = reloc, cfg
                self._map_gen += 1
                self._gate.reset()
                self._fix, self._pending_prior, self._force_global = None, None, True
                if hint is not None:
                    r = max(cfg.prior_search_radius, cfg.min_position_std)
                    self._pending_prior = (hint, np.diag([r * r] * 3 + [0.5 ** 2] * 3))
                    self._force_global, self._requested = False, True
            self.stats.reset_fix()
            with self.stats.lock:
                self.stats.map_id = path
            gc.collect()
            response.success = True
            response.message = (f'loaded {path} in {time.perf_counter() - t0:.2f} s'
                                + (' (hint as prior for the next frame)' if hint is not None
                                   else ''))
            self.get_logger().info(f'~/load_map: {response.message}')
            return response
        finally:
            self._load_lock.release()

    # ================================================================== worker
    def _worker_loop(self) -> None:
        while True:
            with self._lock:
                while self._slot is None and not self._stop.is_set():
                    self._wake.wait(0.5)
                if self._stop.is_set():
                    return
                job, self._slot, self._busy = self._slot, None, True
                if not self.cfg.continuous:
                    self._requested = False
            try:
                self._process(*job)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any frame
                self.get_logger().error(f'frame processing crashed: {type(exc).__name__}: {exc}')
                self.stats.problem('internal_error', f'{type(exc).__name__}: {exc}')
            finally:
                with self._lock:
                    self._busy = False

    def _reject(self, code: str, detail: str, counter: str) -> None:
        self.stats.count(counter)
        with self.stats.lock:
            self.stats.consecutive_failures += 1
            self.stats.last_problem, self.stats.last_problem_detail = code, detail
        self.get_logger().warning(f'no pose ({code}): {detail}', throttle_duration_sec=2.0)

    def _process(self, image: Image | CompressedImage, info: CameraInfo) -> None:
        with self._lock:
            cfg, reloc, self._inflight_gen = self.cfg, self.reloc, self._map_gen
        stamp_ns = msgs.stamp_to_ns(image.header.stamp)
        self.stats.count('frames_processed')
        try:
            camera = msgs.camera_info_to_camera(info)
            rgb = msgs.compressed_to_rgb(image) if isinstance(image, CompressedImage) \
                else msgs.image_to_rgb(image)
            msgs.check_image_matches_camera(rgb.shape[:2], camera)
            cam_frame = cfg.camera_frame or info.header.frame_id or image.header.frame_id
            if not cam_frame:
                raise InputError('no camera frame: camera_info.header.frame_id is empty '
                                      'and camera_frame is not set')
        except InputError as exc:
            return self._reject('bad_input', str(exc), 'bad_inputs')
        deadline = time.monotonic() + cfg.tf_lookup_timeout
        need_odom = cfg.tf_owner == 'map_to_odom' or cfg.use_initial_guess
        try:
            T_base_cam = self._tf_buffer.wait_for(cfg.base_frame, cam_frame, stamp_ns,
                                                  cfg.tf_lookup_timeout, self._stop)
            T_odom_base = None
            if need_odom:
                T_odom_base = self._tf_buffer.wait_for(
                    cfg.odom_frame, cfg.base_frame, stamp_ns,
                    max(deadline - time.monotonic(), 0.0), self._stop)
        except TfLookupError as exc:
            return self._reject('tf_missing', str(exc), 'tf_failures')
        depth = None
        if cfg.use_depth:
            depth_msg = self._take_depth(stamp_ns, cfg.depth_timeout)
            if depth_msg is None:
                self.stats.count('frames_without_depth')
                self.get_logger().warning('no depth image with the stamp of the image within '
                                          f'depth_timeout={cfg.depth_timeout} s: localizing '
                                          'without depth', throttle_duration_sec=5.0)
            else:
                try:
                    depth = msgs.depth_to_metres(depth_msg)
                    if depth.shape != rgb.shape[:2]:
                        raise InputError(
                            f'depth image {depth.shape[1]}x{depth.shape[0]} does not match the '
                            f'image {rgb.shape[1]}x{rgb.shape[0]} (must be registered to it)')
                except InputError as exc:
                    return self._reject('bad_input', f'depth: {exc}', 'bad_inputs')
        s = reloc.map_T_model.scale
        prior = self._take_prior(T_base_cam, T_odom_base, s)
        outcome = reloc.localize(rgb, camera, prior=prior, depth=depth)
        with self.stats.lock:
            self.stats.last_timings_ms = dict(outcome.timings_ms)
        if not outcome.ok:
            return self._reject(outcome.reason, outcome.detail, 'failures')
        self._handle_result(outcome, image, T_base_cam, T_odom_base, s, reloc)

    def _take_prior(self, T_base_cam, T_odom_base, scale):
        cfg = self.cfg
        with self._lock:
            force, pending, fix = self._force_global, self._pending_prior, self._fix
            self._force_global, self._pending_prior = False, None
        if force:
            return None
        if pending is None and cfg.use_initial_guess and fix is not None:
            T_map_odom = fix.T_map_odom
            if T_map_odom is not None and T_odom_base is not None:
                pending = (T_map_odom @ T_odom_base, fix.cov)
        if pending is None:
            return None
        T_map_base, cov = pending
        T_cam_model = self.reloc.map_T_model.camera_pose_in_model(T_map_base @ T_base_cam)
        cov_xi = conv.covariance_from_ros(cov, T_map_base, T_base_cam, scale,
                                          cfg.min_position_std, cfg.min_rotation_std)
        return _prior_class()(T_cam_model, cov_xi)

    def _handle_result(self, result, image: Image, T_base_cam, T_odom_base, scale,
                       reloc) -> None:
        cfg = self.cfg
        stamp_ns = msgs.stamp_to_ns(image.header.stamp)
        T_map_cam = reloc.map_T_model.camera_pose_in_map(result.T_cam_world)
        T_map_base = T_map_cam @ invert(T_base_cam)
        T_map_odom = None if T_odom_base is None else T_map_base @ invert(T_odom_base)
        reason = quality_reason(result, self._gate.cfg)
        if reason is not None:
            return self._reject('rejected', reason, 'fixes_rejected')
        inflation = 1.0
        if cfg.covariance_inflation_points and result.num_supported > 0:
            inflation = max(1.0, cfg.covariance_inflation_points / result.num_supported)
        shaping = conv.CovarianceShaping(cfg.position_covariance_scale,
                                         cfg.rotation_covariance_scale, cfg.min_position_std,
                                         cfg.min_rotation_std, inflation)
        cov = conv.covariance_to_ros(result.covariance, T_map_base, T_base_cam, scale, shaping)
        with self._lock:
            if not self._active or self._inflight_gen != self._map_gen:
                return      # deactivated, or ~/load_map replaced the map meanwhile
            key = T_map_odom if cfg.tf_owner == 'map_to_odom' else T_map_base
            accepted, why = self._gate.offer(key)
            if accepted:
                self._fix = _Fix(T_map_base, T_map_odom, cov, stamp_ns)
        with self.stats.lock:
            self.stats.last_points, self.stats.last_cost = result.num_points, result.mean_cost
            if accepted:
                self.stats.localized = self.stats.ever_localized = True
                self.stats.consecutive_failures = 0
                self.stats.last_success_monotonic = time.monotonic()
                self.stats.last_problem = self.stats.last_problem_detail = ''
            else:
                self.stats.fixes_rejected += 1
                self.stats.last_problem, self.stats.last_problem_detail = 'gating', why
        if accepted:
            self._publish_tf(stamp_ns + int(cfg.transform_tolerance * 1e9))
        if accepted or not cfg.publish_pose_only_when_localized:
            self._publish_pose(T_map_base, cov, image.header.stamp)

    # ================================================================== outputs
    def _publish_pose(self, T_map_base: np.ndarray, cov: np.ndarray, stamp) -> None:
        msg = PoseWithCovarianceStamped()
        msg.header.stamp = stamp
        msg.header.frame_id = self.cfg.map_frame
        msg.pose.pose = conv.matrix_to_pose(T_map_base)
        msg.pose.covariance = [float(v) for v in cov.reshape(-1)]
        self._pose_pub.publish(msg)
        now_ns = self.get_clock().now().nanoseconds
        with self.stats.lock:
            self.stats.fixes_published += 1
            self.stats.latencies_ms.append((now_ns - msgs.stamp_to_ns(stamp)) * 1e-6)

    def _publish_tf(self, stamp_ns: int) -> None:
        cfg = self.cfg
        if cfg is None or self._tf_pub is None or cfg.tf_owner == 'none':
            return
        with self._lock:
            fix = self._fix
        if fix is not None:
            if cfg.tf_owner == 'map_to_odom':
                T, child = fix.T_map_odom, cfg.odom_frame
            else:
                T, child = fix.T_map_base, cfg.base_frame
        elif cfg.publish_identity_until_localized:
            T = np.eye(4)
            child = cfg.odom_frame if cfg.tf_owner == 'map_to_odom' else cfg.base_frame
        else:
            return
        with self._tf_lock:
            stamp_ns = max(int(stamp_ns), self._last_tf_ns + 1, 1)
            self._last_tf_ns = stamp_ns
            self._tf_pub.send([make_transform_stamped(T, cfg.map_frame, child, stamp_ns)])

    def _on_tf_timer(self) -> None:
        cfg = self.cfg
        if cfg is None or not self._active:
            return
        self._publish_tf(self.get_clock().now().nanoseconds
                         + int(cfg.transform_tolerance * 1e9))
        if self._fix is None and not cfg.publish_identity_until_localized:
            self.get_logger().warning('not localized yet: no map->odom TF',
                                      throttle_duration_sec=10.0)

    def publish_diagnostics(self) -> None:
        lost_after = self.cfg.lost_after_failures if self.cfg is not None else 5
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [to_status(self.stats, f'nre_ros/{self.get_name()}', lost_after)]
        self._diag_pub.publish(msg)


class _Periodic:
    """Calls ``fn`` every ``period_s`` seconds in a daemon thread until ``stop()``."""

    def __init__(self, period_s: float, fn: Callable[[], None], name: str):
        self._period, self._fn = float(period_s), fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._fn()
            except Exception as exc:  # noqa: BLE001 - keep republishing; say what failed
                print(f'nre_relocalization: {self._thread.name}: {exc!r}', file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)


def main(argv: list[str] | None = None,
         relocalizer_factory: RelocalizerFactory | None = None) -> int:
    """Run the node; ``-p autostart:=true`` configures and activates it without a manager."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    if hasattr(signal, 'SIGUSR1'):
        # `kill -USR1 PID` prints every thread's stack (how a stuck node is diagnosed)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    node = RelocalizationNode(relocalizer_factory=relocalizer_factory)
    # One executor thread: rclpy's MultiThreadedExecutor busy-polls its futures and took a
    # whole core of 2 on a 30 Hz 640x480 stream (the GT-oracle node: 29 s CPU per 30 s, 391 of
    # 900 frames reaching the callback; single-threaded: 5 s, 900 of 900). Callbacks only
    # hand work over (localization runs in the worker thread, TF republishing in its own).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter('autostart').value and not node.autostart():
            node.get_logger().error('autostart failed; waiting for lifecycle transitions')
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Watchdog, armed until the process exits (main is the process's entry point): a
        # cleanup or interpreter exit stuck for SHUTDOWN_WATCHDOG_S prints every thread's stack
        # and exits with status 1 rather than hanging the caller (launch, a test, a bag replay).
        faulthandler.dump_traceback_later(SHUTDOWN_WATCHDOG_S, exit=True)
        # stop callbacks first, then release
        executor.shutdown(timeout_sec=2.0)
        try:
            node.on_shutdown(None)
        except Exception as exc:  # noqa: BLE001 - best effort while shutting down
            print(f'nre_relocalization: shutdown cleanup failed: {exc}', file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
