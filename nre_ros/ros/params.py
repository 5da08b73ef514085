"""Declared ROS parameters of nre_relocalization -> a frozen ``NodeConfig``.

``PARAMETERS`` is the single table of names, defaults, ranges and descriptions
(docs/ros.md); ``config/nre_ros.yaml`` repeats the defaults for users (a test checks
that they agree). Parameters are read at ``on_configure``; changing one later takes effect at
the next configure (declared ``read_only`` where a change could never be honoured).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from nre_ros.errors import ConfigError

TF_MODES = ('map_to_odom', 'map_to_base', 'none')
IMAGE_QOS = ('SENSOR_DATA', 'RELIABLE')
IMAGE_TRANSPORTS = ('raw', 'compressed')


@dataclass(frozen=True)
class Param:
    name: str            # ROS name (may contain dots)
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None

    @property
    def field(self) -> str:
        return self.name.replace('.', '_').replace('diagnostic_updater_', 'diagnostic_')


PARAMETERS: tuple[Param, ...] = (
    Param('autostart', False, 'configure + activate at start-up (no lifecycle manager)'),
    Param('map_path', '', 'map file to load at configure (required)'),
    Param('pipeline_config', '', 'PipelineConfig YAML ("" = built-in defaults)'),
    Param('engine_cache_dir', '', 'cache for built inference engines ("" = default)'),
    Param('num_threads', 0, 'CPU threads of the networks (0 = the pipeline config\'s)', (0, 256)),
    Param('map_frame', 'map', 'global frame of the map (REP 105)'),
    Param('odom_frame', 'odom', 'odometry frame (REP 105)'),
    Param('base_frame', 'base_link', 'robot base frame; the pose is of this frame'),
    Param('camera_frame', '', 'camera optical frame ("" = camera_info.header.frame_id)'),
    Param('publish_tf', True, 'broadcast TF according to tf_mode'),
    Param('tf_mode', 'map_to_odom', 'map_to_odom | map_to_base | none: which TF we own',
          choices=TF_MODES),
    Param('transform_tolerance', 0.2, 'TF stamps are future-dated by this (s)', (0.0, 10.0)),
    Param('transform_publish_period', 0.05, 'TF republish period (s); 0 = only on a fix',
          (0.0, 10.0)),
    Param('tf_lookup_timeout', 0.1, 'wait for odom->base / base->camera at t_img (s)',
          (0.0, 10.0)),
    Param('localize_on_startup', True, 'localize as soon as frames arrive after activation'),
    Param('set_initial_pose', False, 'use initial_pose.* as a prior for the first frame'),
    Param('initial_pose.x', 0.0, 'initial base x in map (m)', (-1e6, 1e6)),
    Param('initial_pose.y', 0.0, 'initial base y in map (m)', (-1e6, 1e6)),
    Param('initial_pose.z', 0.0, 'initial base z in map (m)', (-1e6, 1e6)),
    Param('initial_pose.yaw', 0.0, 'initial base yaw in map (rad)', (-7.0, 7.0)),
    Param('use_initial_guess', False, 'use the last fix (carried by odometry) as the prior'),
    Param('prior_search_radius', 5.0, 'position std of initial_pose priors (m)', (0.0, 1e4)),
    Param('continuous', True, 'localize every frame (up to max_rate); false = on request'),
    Param('max_rate', 5.0, 'maximum localization rate (Hz); 0 = as fast as possible',
          (0.0, 1000.0)),
    Param('image_qos', 'SENSOR_DATA', 'image / camera_info QoS: SENSOR_DATA | RELIABLE',
          choices=IMAGE_QOS),
    Param('queue_size', 1, 'image / camera_info subscription depth', (1, 100)),
    Param('image_transport', 'raw', 'raw: sensor_msgs/Image on `image`; compressed: '
          'CompressedImage (jpeg/png) on `image`/compressed, decoded in the node',
          choices=IMAGE_TRANSPORTS),
    Param('use_depth', False, 'subscribe to `depth` (16UC1 mm / 32FC1 m, registered to the '
          'image) and pass it to the relocalizer, paired by stamp'),
    Param('depth_timeout', 0.1, 'wait this long for the depth of an image (s); then localize '
          'without depth', (0.0, 10.0)),
    Param('min_points', 0, 'reject fixes with fewer points (0 = off)', (0, 1000000)),
    Param('min_inlier_ratio', 0.0, 'reject fixes with supported/points below this',
          (0.0, 1.0)),
    Param('max_cost', 0.0, 'reject fixes with mean NRE cost above this (0 = off)', (0.0, 1e6)),
    Param('min_consistent_fixes', 2, 'consistent fixes needed first / after a jump', (1, 100)),
    Param('consistency_translation', 0.5, 'fixes agree if map->odom differs less (m)',
          (0.0, 1e4)),
    Param('consistency_rotation', 0.2, 'fixes agree if map->odom differs less (rad)',
          (0.0, 3.1416)),
    Param('max_jump_translation', 0.0, 'larger jumps need re-confirmation (m; 0 = off)',
          (0.0, 1e4)),
    Param('max_jump_rotation', 0.0, 'larger jumps need re-confirmation (rad; 0 = off)',
          (0.0, 3.1416)),
    Param('position_covariance_scale', 1.0, 'factor on position variances', (0.0, 1e6)),
    Param('rotation_covariance_scale', 1.0, 'factor on rotation variances', (0.0, 1e6)),
    Param('min_position_std', 0.02, 'floor of each position std (m)', (0.0, 100.0)),
    Param('min_rotation_std', 0.005, 'floor of each rotation std (rad)', (0.0, 3.1416)),
    Param('covariance_inflation_points', 0,
          'inflate covariance by N/num_supported when fewer points support a fix (0 = off)',
          (0, 1000000)),
    Param('publish_pose_only_when_localized', True, 'publish only fixes that passed gating'),
    Param('publish_identity_until_localized', False, 'identity map->odom before the 1st fix'),
    Param('publish_debug_image', False, 'publish ~/debug_image (not implemented yet)'),
    Param('lost_after_failures', 5, 'consecutive failures that mean "localization lost"',
          (1, 100000)),
    Param('diagnostic_updater.period', 1.0, 'diagnostics period (s)', (0.05, 60.0)),
)


@dataclass(frozen=True)
class NodeConfig:
    autostart: bool = False
    map_path: str = ''
    pipeline_config: str = ''
    engine_cache_dir: str = ''
    num_threads: int = 0
    map_frame: str = 'map'
    odom_frame: str = 'odom'
    base_frame: str = 'base_link'
    camera_frame: str = ''
    publish_tf: bool = True
    tf_mode: str = 'map_to_odom'
    transform_tolerance: float = 0.2
    transform_publish_period: float = 0.05
    tf_lookup_timeout: float = 0.1
    localize_on_startup: bool = True
    set_initial_pose: bool = False
    initial_pose_x: float = 0.0
    initial_pose_y: float = 0.0
    initial_pose_z: float = 0.0
    initial_pose_yaw: float = 0.0
    use_initial_guess: bool = False
    prior_search_radius: float = 5.0
    continuous: bool = True
    max_rate: float = 5.0
    image_qos: str = 'SENSOR_DATA'
    queue_size: int = 1
    image_transport: str = 'raw'
    use_depth: bool = False
    depth_timeout: float = 0.1
    min_points: int = 0
    min_inlier_ratio: float = 0.0
    max_cost: float = 0.0
    min_consistent_fixes: int = 2
    consistency_translation: float = 0.5
    consistency_rotation: float = 0.2
    max_jump_translation: float = 0.0
    max_jump_rotation: float = 0.0
    position_covariance_scale: float = 1.0
    rotation_covariance_scale: float = 1.0
    min_position_std: float = 0.02
    min_rotation_std: float = 0.005
    covariance_inflation_points: int = 0
    publish_pose_only_when_localized: bool = True
    publish_identity_until_localized: bool = False
    publish_debug_image: bool = False
    lost_after_failures: int = 5
    diagnostic_period: float = 1.0

    @property
    def tf_owner(self) -> str:
        """Which TF this node broadcasts: 'map_to_odom', 'map_to_base' or 'none'."""
        return self.tf_mode if self.publish_tf else 'none'

    def validate(self) -> 'NodeConfig':
        for p in PARAMETERS:
            value = getattr(self, p.field)
            if p.choices is not None and value not in p.choices:
                raise ConfigError(f'parameter {p.name}={value!r}: expected one of '
                                  f'{list(p.choices)}')
            if p.range is not None and not p.range[0] <= value <= p.range[1]:
                raise ConfigError(f'parameter {p.name}={value!r} outside [{p.range[0]}, '
                                  f'{p.range[1]}]')
        frames = [self.map_frame, self.odom_frame, self.base_frame]
        if any(not f for f in frames) or len(set(frames)) != 3:
            raise ConfigError(f'map_frame, odom_frame and base_frame must be distinct and '
                              f'non-empty, got {frames}')
        if not self.map_path:
            raise ConfigError('parameter map_path is empty: set it to a map file '
                              '(built with `nre-ros build-map`)')
        return self


def _descriptor(p: Param) -> ParameterDescriptor:
    desc = p.description + (f' (one of {", ".join(p.choices)})' if p.choices else '')
    d = ParameterDescriptor(description=desc)
    if p.range is not None and isinstance(p.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]),
                                                     to_value=float(p.range[1]), step=0.0)]
    elif p.range is not None and isinstance(p.default, int) and not isinstance(p.default, bool):
        d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]),
                                        step=1)]
    return d


def declare_parameters(node) -> None:
    """Declare every parameter of PARAMETERS on ``node`` (with descriptors and ranges)."""
    for p in PARAMETERS:
        if not node.has_parameter(p.name):
            node.declare_parameter(p.name, p.default, _descriptor(p))


def read_config(node) -> NodeConfig:
    """Current parameter values -> validated NodeConfig (ConfigError names the bad one)."""
    values = {p.field: node.get_parameter(p.name).value for p in PARAMETERS}
    for p in PARAMETERS:  # ints given where floats are declared arrive as ints from YAML
        if isinstance(p.default, float) and isinstance(values[p.field], int):
            values[p.field] = float(values[p.field])
    return NodeConfig(**values).validate()


def defaults() -> dict[str, Any]:
    """ROS name -> default (what config/nre_ros.yaml should repeat)."""
    return {p.name: p.default for p in PARAMETERS}

