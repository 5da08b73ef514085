"""Lifecycle node ``nre_relocalization``: a ROS 2 adapter over ``nre_ros.stream``.

Interface (lifecycle, topics, QoS, frames, TF, covariance, parameters, services, diagnostics):
docs/ros.md. The per-stream policy (stamp pairing, dropping,
priors, the consistency gate, the covariance, lost state, map generation) is
``nre_ros.stream.LocalizationStream``; this node subscribes, feeds it from the executor, runs
its frames on one worker thread (decoding, TF lookups at the image stamp, localization) and
publishes the decisions. A thread of its own republishes the latest map->odom. ``main`` spins
one SingleThreadedExecutor (see docs/ros.md "Threads"); the callback groups keep the node
correct in a MultiThreadedExecutor too. Entry point: ``ros2 run nre_ros nre_relocalization``.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import gc
import signal
import sys
import threading
import time
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

from nre_ros import compiled
from nre_ros import messages as msgs
from nre_ros.errors import InputError
from nre_ros.maps.align import units_warning
from nre_ros.ros import conversions as conv
from nre_ros.ros.diagnostics import to_status
from nre_ros.ros.params import NodeConfig, declare_parameters, read_config
from nre_ros.ros.tf import TfBroadcaster, TfLookupError, make_buffer_and_listener, \
    make_transform_stamped
from nre_ros.ros.visualization import VisualizationPublisher
from nre_ros.stream import (BAD_INPUT, TF_MISSING, Decision, Frame, FrameInputs,
                            LocalizationStream, StreamStats)
from nre_ros.stream.stream import check_inputs

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
WORKER_JOIN_TIMEOUT_S = 8.0   # a frame in flight at shutdown gets this long to finish
SHUTDOWN_WATCHDOG_S = 15.0    # below NodeProcess.stop's 20 s, so a stuck exit leaves stacks


def pipeline_relocalizer(map_path: str, cfg: NodeConfig):
    """Default factory: ``Relocalizer.from_config`` of nre_ros.pipeline (imported lazily)."""
    from nre_ros.pipeline import PipelineConfig, Relocalizer
    pcfg = PipelineConfig.from_yaml(cfg.pipeline_config) if cfg.pipeline_config \
        else PipelineConfig()
    if cfg.num_threads:
        pcfg = dataclasses.replace(pcfg, num_threads=cfg.num_threads)
    if cfg.precision:
        pcfg = dataclasses.replace(pcfg, precision=cfg.precision)
    return Relocalizer.from_config(map_path, pcfg)


class RelocalizationNode(LifecycleNode):
    """See module docstring. ``relocalizer_factory(map_path, cfg)`` replaces the pipeline."""

    def __init__(self, *, relocalizer_factory: RelocalizerFactory | None = None,
                 node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self)
        self._factory = relocalizer_factory or pipeline_relocalizer
        self.cfg: NodeConfig | None = None
        self.stream: LocalizationStream | None = None
        self.stats = StreamStats()
        self._tf_lock = threading.Lock()
        self._last_tf_ns = 0
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._load_group = MutuallyExclusiveCallbackGroup()    # long: not with the others
        self._load_lock = threading.Lock()
        self._active_entities: list = []
        self._pose_pub = self._tf_pub = None
        self._viz: VisualizationPublisher | None = None
        self._tf_buffer = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        period = float(self.get_parameter('diagnostic_updater.period').value)
        self._diag_timer = self.create_timer(period, self.publish_diagnostics,
                                             callback_group=self._timer_group)
        # The compiled CPU kernels (numba: ~80k objects) and everything loaded so far live as
        # long as the process: load them now and freeze them out of the full collections that
        # ~/load_map and cleanup run while the TF thread waits for the GIL (the next map's
        # objects stay collectable).
        compiled.warmup()
        gc.freeze()

    @property
    def reloc(self):
        """The relocalizer in use (None before configure)."""
        return None if self.stream is None else self.stream.relocalizer

    @property
    def busy(self) -> bool:
        """A frame is being processed."""
        return self.stream is not None and self.stream.busy

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
        self.cfg = cfg
        self.stream = LocalizationStream(cfg.stream, reloc, self.stats)
        map_frame = getattr(reloc, 'map_frame_id', cfg.map_frame)
        if map_frame and map_frame != cfg.map_frame:
            self.get_logger().warning(f'map file says frame {map_frame!r}, publishing in '
                                      f'map_frame={cfg.map_frame!r}')
        self._pose_pub = self.create_lifecycle_publisher(PoseWithCovarianceStamped, '~/pose',
                                                         POSE_QOS)
        if cfg.tf_owner != 'none':
            self._tf_pub = TfBroadcaster(self, lifecycle=True)
        self._viz = VisualizationPublisher(self, cfg.map_frame, cfg.publish_debug_image)
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name='nre_worker', daemon=True)
        self._worker.start()
        with self.stats.lock:
            self.stats.map_loaded, self.stats.map_id = True, cfg.map_path
            self.stats.state = 'inactive'
        self._note_units(reloc)
        self.get_logger().info(
            f'Configured: map {cfg.map_path} loaded in {t_load:.2f} s, warm-up '
            f'{time.perf_counter() - t0 - t_load:.2f} s; networks '
            f'{getattr(getattr(reloc, "model", None), "backend", "torch")}; '
            f'tf_mode={cfg.tf_owner}, '
            f'frames {cfg.map_frame}/{cfg.odom_frame}/{cfg.base_frame}')
        return TransitionCallbackReturn.SUCCESS

    def _note_units(self, reloc) -> None:
        """Warn (log and diagnostics) when the map does not serve poses in metres."""
        warning = units_warning(reloc.map) if hasattr(reloc, 'map') else None
        if warning:
            self.get_logger().warning(warning)
        with self.stats.lock:
            self.stats.map_units_warning = warning or ''

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
        self.stream.activate()
        with self.stats.lock:
            self.stats.state = 'active'
        self.get_logger().info(f'Activated: image {in_topic} ({in_type.__name__}), camera_info '
                               f'{info_topic}' + (f', depth {depth_topic}' if depth_topic else ''))
        result = super().on_activate(state)       # activates the lifecycle publishers
        self._viz.publish_map(self.reloc)         # latched: RViz gets it whenever it joins
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stream.deactivate()
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
        if self.stream is not None:
            self.stream.deactivate()
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
        if self.stream is not None:
            self.stream.close()
        if self._worker is not None:
            self._worker.join(timeout=WORKER_JOIN_TIMEOUT_S)
            self._worker = None
        if self._pose_pub is not None:
            self.destroy_lifecycle_publisher(self._pose_pub)
        if self._tf_pub is not None:
            self._tf_pub.destroy()
        if self._viz is not None:
            self._viz.destroy()
        self._pose_pub = self._tf_pub = self._viz = None
        self.stream, self.cfg = None, None
        self._last_tf_ns = 0
        gc.collect()
        torch = sys.modules.get('torch')
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.stats = StreamStats()

    def _camera_info_topic(self, image_topic: str) -> str:
        remapped = self.resolve_topic_name('camera_info')
        if remapped != self.resolve_topic_name('camera_info', only_expand=True):
            return remapped  # explicitly remapped
        return image_topic.rsplit('/', 1)[0] + '/camera_info'  # sibling of the image

    # ================================================================== inputs (executor)
    def _on_depth(self, msg: Image) -> None:
        self.stream.add_depth(msgs.stamp_to_ns(msg.header.stamp), msg)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stream.add_image(msgs.stamp_to_ns(msg.header.stamp), msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.stream.add_camera_info(msgs.stamp_to_ns(msg.header.stamp), msg)

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
        self.stream.set_prior(T, np.asarray(msg.pose.covariance, dtype=np.float64))
        self.get_logger().info(f'/initialpose: prior at {np.round(T[:3, 3], 3).tolist()} '
                               f'for the next frame')

    # ================================================================== services
    def _srv_relocalize(self, request: Trigger.Request, response: Trigger.Response):
        self.stream.request_global()
        response.success, response.message = True, 'next frame: global search without prior'
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response):
        self.stream.reset()
        response.success, response.message = True, 'fix and consistency history forgotten'
        return response

    def _srv_enable(self, request: SetBool.Request, response: SetBool.Response):
        self.stream.set_enabled(bool(request.data))
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
            self.cfg = cfg
            self.stream.replace_relocalizer(reloc, hint)
            self._viz.publish_map(reloc)
            with self.stats.lock:
                self.stats.map_id = path
            self._note_units(reloc)
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
        stream = self.stream
        while not self._stop.is_set():
            frame = stream.take_frame(timeout_s=0.5)
            if frame is None:
                continue
            try:
                self._publish(self._process(stream, frame), frame)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any frame
                self.get_logger().error(f'frame processing crashed: {type(exc).__name__}: {exc}')
                self.stats.problem('internal_error', f'{type(exc).__name__}: {exc}')
            finally:
                stream.finish_frame()

    def _process(self, stream: LocalizationStream, frame: Frame) -> Decision:
        """Decode the messages, look up TF at the image stamp, localize."""
        cfg, image, info = self.cfg, frame.image, frame.camera_info
        try:
            camera = msgs.camera_info_to_camera(info)
            rgb = msgs.compressed_to_rgb(image) if isinstance(image, CompressedImage) \
                else msgs.image_to_rgb(image)
            check_inputs(rgb, camera)      # before TF: a bad image is reported as such
            cam_frame = cfg.camera_frame or info.header.frame_id or image.header.frame_id
            if not cam_frame:
                raise InputError('no camera frame: camera_info.header.frame_id is empty '
                                 'and camera_frame is not set')
        except InputError as exc:
            return stream.reject(frame, BAD_INPUT, str(exc))
        deadline = time.monotonic() + cfg.tf_lookup_timeout
        try:
            T_base_cam = self._tf_buffer.wait_for(cfg.base_frame, cam_frame, frame.stamp_ns,
                                                  cfg.tf_lookup_timeout, self._stop)
            T_odom_base = None
            if cfg.needs_odometry:
                T_odom_base = self._tf_buffer.wait_for(
                    cfg.odom_frame, cfg.base_frame, frame.stamp_ns,
                    max(deadline - time.monotonic(), 0.0), self._stop)
        except TfLookupError as exc:
            return stream.reject(frame, TF_MISSING, str(exc))
        depth = None
        if cfg.use_depth:
            depth_msg = stream.take_depth(frame.stamp_ns, cfg.depth_timeout)
            if depth_msg is None:
                self.get_logger().warning('no depth image with the stamp of the image within '
                                          f'depth_timeout={cfg.depth_timeout} s: localizing '
                                          'without depth', throttle_duration_sec=5.0)
            else:
                try:
                    depth = msgs.depth_to_metres(depth_msg)
                except InputError as exc:
                    return stream.reject(frame, BAD_INPUT, f'depth: {exc}')
        decision = stream.localize(frame, FrameInputs(rgb, camera, depth, T_base_cam,
                                                      T_odom_base))
        viz = self._viz
        if viz is not None and decision.outcome is not None:
            viz.publish_debug(rgb, camera, decision.outcome, image.header, stream.relocalizer)
        return decision

    # ================================================================== outputs
    def _publish(self, decision: Decision, frame: Frame) -> None:
        if not decision.accepted and not decision.publish_pose:
            if decision.status != 'stale':
                self.get_logger().warning(f'no pose ({decision.reason}): '
                                          f'{decision.detail or decision.reason}',
                                          throttle_duration_sec=2.0)
            return
        if decision.accepted:
            self._publish_tf(decision.stamp_ns + int(self.cfg.transform_tolerance * 1e9))
        self._publish_pose(decision.T_map_base, decision.covariance, frame.image.header.stamp)

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
        cfg, stream = self.cfg, self.stream
        if cfg is None or stream is None or self._tf_pub is None or cfg.tf_owner == 'none':
            return
        fix = stream.fix
        child = cfg.odom_frame if cfg.tf_owner == 'map_to_odom' else cfg.base_frame
        if fix is not None:
            T = fix.T_map_odom if cfg.tf_owner == 'map_to_odom' else fix.T_map_base
        elif cfg.publish_identity_until_localized:
            T = np.eye(4)
        else:
            return
        with self._tf_lock:
            stamp_ns = max(int(stamp_ns), self._last_tf_ns + 1, 1)
            self._last_tf_ns = stamp_ns
            self._tf_pub.send([make_transform_stamped(T, cfg.map_frame, child, stamp_ns)])

    def _on_tf_timer(self) -> None:
        cfg, stream = self.cfg, self.stream
        if cfg is None or stream is None or not stream.active:
            return
        self._publish_tf(self.get_clock().now().nanoseconds
                         + int(cfg.transform_tolerance * 1e9))
        if stream.fix is None and not cfg.publish_identity_until_localized:
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
    except Exception as exc:  # noqa: BLE001 - re-raised unless the context was shut down
        if rclpy.ok():
            raise
        # a SIGINT that shuts the context down while a callback runs (a timer publishing)
        # surfaces as that callback's rclpy error: a normal stop, not a crash
        print(f'nre_relocalization: stopped while shutting down ({type(exc).__name__}: {exc})',
              file=sys.stderr)
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
