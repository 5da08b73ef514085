"""Declared ROS parameters of nre_relocalization -> a frozen ``NodeConfig``.

``NodeConfig`` is the stream policy (``nre_ros.stream.StreamConfig``, shared with the offline
evaluation) plus the ROS plumbing below; each field states its default, range and description
once. ``PARAMETERS`` is derived from the fields; ``config/nre_ros.yaml`` and
docs/parameters.md are generated from it (``scripts/write_node_params.py``; a test checks they are
current). Parameters are read at ``on_configure``; changing one later takes effect at the next
configure. Importing this module needs no ROS (the descriptors import rcl_interfaces lazily).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nre_ros.errors import ConfigError
from nre_ros.precision import PRECISIONS
from nre_ros.threads import check_threads
from nre_ros.stream.config import Param, StreamConfig, check_removed, coerce, params_of, setting

IMAGE_QOS = ('SENSOR_DATA', 'RELIABLE')
IMAGE_TRANSPORTS = ('raw', 'compressed')


@dataclass(frozen=True)
class NodeConfig(StreamConfig):
    """All parameters of the node: StreamConfig's and these."""

    autostart: bool = setting(False, 'configure + activate at start-up (no lifecycle manager)')
    map_path: str = setting('', 'map file to load at configure (required)')
    pipeline_config: str = setting('', 'PipelineConfig YAML ("" = built-in defaults); holds the '
                                   'quality thresholds (solver.verdict)')
    num_threads: int | str = setting(
        'auto', 'CPU threads of the networks: "auto" = the CPUs this process may use (affinity, '
        "cgroup quota), N, or 0 = the pipeline config's num_threads", range=(0, 256),
        kinds=(str, int))
    precision: str = setting(
        '', 'number format of the networks: auto = bf16 on a CPU with bf16 units (AMX-BF16 / '
        'AVX512-BF16), else fp32; fp32; bf16; "" = the pipeline config\'s precision',
        choices=('',) + PRECISIONS)
    map_frame: str = setting('map', 'global frame of the map (REP 105)')
    odom_frame: str = setting('odom', 'odometry frame (REP 105)')
    base_frame: str = setting('base_link', 'robot base frame; the pose is of this frame')
    camera_frame: str = setting('', 'camera optical frame ("" = camera_info.header.frame_id)')
    transform_tolerance: float = setting(0.2, 'TF stamps are future-dated by this (s)',
                                         range=(0.0, 10.0))
    transform_publish_period: float = setting(0.05, 'TF republish period (s); 0 = only on a '
                                              'fix', range=(0.0, 10.0))
    tf_lookup_timeout: float = setting(0.1, 'wait for odom->base / base->camera at t_img (s)',
                                       range=(0.0, 10.0))
    image_qos: str = setting('SENSOR_DATA', 'image / camera_info QoS: SENSOR_DATA | RELIABLE',
                             choices=IMAGE_QOS)
    queue_size: int = setting(1, 'image / camera_info subscription depth', range=(1, 100))
    image_transport: str = setting('raw', 'raw: sensor_msgs/Image on `image`; compressed: '
                                   'CompressedImage (jpeg/png) on `image`/compressed, decoded '
                                   'in the node', choices=IMAGE_TRANSPORTS)
    publish_identity_until_localized: bool = setting(False, 'identity map->odom before the 1st '
                                                     'fix')
    publish_debug_image: bool = setting(False, 'publish ~/debug_image: the query with the '
                                        'supported map points drawn by NRE cost')
    diagnostic_period: float = setting(1.0, 'diagnostics period (s)', range=(0.05, 60.0),
                                       ros_name='diagnostic_updater.period')

    def validate(self) -> 'NodeConfig':
        super().validate()
        if self.num_threads != 0:
            check_threads(self.num_threads, 'parameter num_threads')
        frames = [self.map_frame, self.odom_frame, self.base_frame]
        if any(not f for f in frames) or len(set(frames)) != 3:
            raise ConfigError(f'map_frame, odom_frame and base_frame must be distinct and '
                              f'non-empty, got {frames}')
        if not self.map_path:
            raise ConfigError('parameter map_path is empty: set it to a map file '
                              '(built with `nre-ros build-map`)')
        return self

    @property
    def stream(self) -> StreamConfig:
        """The stream policy part (a plain StreamConfig)."""
        return StreamConfig(**{f.name: getattr(self, f.name)
                               for f in dataclasses.fields(StreamConfig)})


def _ordered() -> tuple[Param, ...]:
    """Node plumbing first, then the stream policy (the order of config/nre_ros.yaml)."""
    stream = {p.name for p in params_of(StreamConfig)}
    every = params_of(NodeConfig)
    return tuple(p for p in every if p.name not in stream) + \
        tuple(p for p in every if p.name in stream)


PARAMETERS: tuple[Param, ...] = _ordered()


def _descriptor(p: Param):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    desc = p.description + (f' (one of {", ".join(p.choices)})' if p.choices else '')
    d = ParameterDescriptor(description=desc, dynamic_typing=len(p.kinds or ()) > 1)
    if p.range is not None and isinstance(p.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]),
                                                     to_value=float(p.range[1]), step=0.0)]
    elif p.range is not None and type(p.default) is int:
        d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]),
                                        step=1)]
    return d


def declare_parameters(node) -> None:
    """Declare every parameter of PARAMETERS on ``node`` (with descriptors and ranges)."""
    for p in PARAMETERS:
        if not node.has_parameter(p.name):
            node.declare_parameter(p.name, p.default, _descriptor(p))


def read_config(node) -> NodeConfig:
    """Current parameter values -> validated NodeConfig (ConfigError names the bad one, and
    a removed parameter given on the command line or in a parameter file)."""
    check_removed(getattr(node, '_parameter_overrides', {}) or {})
    values = {p.field: coerce(p, node.get_parameter(p.name).value) for p in PARAMETERS}
    return NodeConfig(**values).validate()


def defaults() -> dict[str, Any]:
    """ROS name -> default (what config/nre_ros.yaml states)."""
    return {p.name: p.default for p in PARAMETERS}
