"""Settings of a localization stream, declared once with their defaults, ranges and descriptions.

``StreamConfig`` is the per-stream policy (dropping, priors, the consistency gate, the published
covariance, lost state). The ROS node's parameters are ``StreamConfig`` plus the ROS plumbing of
``nre_ros.ros.params.NodeConfig`` (a subclass); ``PARAMETERS`` tables, ``config/nre_ros.yaml``
and docs are generated from these fields (``scripts/write_node_params.py``). Offline evaluation
reads the same parameter YAML with ``load_params_file`` so it applies the node's policy.

Quality thresholds are not here: they are the relocalizer's verdict
(``PipelineConfig.solver.verdict``: supported points, supported fraction, mean NRE, condition),
applied inside the pipeline so that a tracking result failing them falls back to global search.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nre_ros.errors import ConfigError

TF_MODES = ('map_to_odom', 'map_to_base', 'none')

# Parameters that existed once; a YAML or override naming them is an error that says where the
# setting lives now (never silently ignored: a dropped quality threshold would weaken gating).
REMOVED_PARAMETERS = {
    'min_points': 'the relocalizer verdict: pipeline_config solver.verdict.min_supported',
    'min_inlier_ratio': 'the relocalizer verdict: pipeline_config '
                        'solver.verdict.min_supported_fraction',
    'max_cost': 'the relocalizer verdict: pipeline_config solver.verdict.max_mean_cost',
    'engine_cache_dir': 'nowhere (it had no effect): remove it',
}


def setting(default: Any, description: str, *, range: tuple[float, float] | None = None,
            choices: tuple[str, ...] | None = None, ros_name: str | None = None,
            kinds: tuple[type, ...] | None = None) -> Any:
    """A dataclass field that is also a declared parameter (``ros_name`` defaults to the
    field name; ``kinds``: the value types accepted, default the default's type; more than one
    makes the ROS parameter dynamically typed, e.g. 'auto' or an int)."""
    return field(default=default, metadata={'description': description, 'range': range,
                                            'choices': choices, 'ros_name': ros_name,
                                            'kinds': kinds})


@dataclass(frozen=True)
class Param:
    """One declared parameter: ROS name, dataclass field, default, description, limits."""

    name: str
    field: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    kinds: tuple[type, ...] | None = None


def params_of(cls) -> tuple[Param, ...]:
    """The declared parameters of a settings dataclass, in field order."""
    return tuple(Param(f.metadata.get('ros_name') or f.name, f.name, f.default,
                       f.metadata['description'], f.metadata.get('range'),
                       f.metadata.get('choices'), f.metadata.get('kinds'))
                 for f in dataclasses.fields(cls) if 'description' in f.metadata)


@dataclass(frozen=True)
class StreamConfig:
    """Per-stream policy of ``LocalizationStream`` (see the module docstring)."""

    publish_tf: bool = setting(True, 'broadcast TF according to tf_mode')
    tf_mode: str = setting('map_to_odom', 'map_to_odom | map_to_base | none: which TF we own; '
                           'fixes are compared as map->odom in map_to_odom, else map->base',
                           choices=TF_MODES)
    localize_on_startup: bool = setting(True, 'localize as soon as frames arrive after '
                                        'activation')
    continuous: bool = setting(True, 'localize every frame (up to max_rate); false = on request')
    max_rate: float = setting(5.0, 'maximum localization rate (Hz, by image stamp); 0 = as fast '
                              'as possible', range=(0.0, 1000.0))
    use_depth: bool = setting(False, 'subscribe to `depth` (16UC1 mm / 32FC1 m, registered to '
                              'the image) and pass it to the relocalizer, paired by stamp')
    depth_timeout: float = setting(0.1, 'wait this long for the depth of an image (s); then '
                                   'localize without depth', range=(0.0, 10.0))
    set_initial_pose: bool = setting(False, 'use initial_pose.* as a prior for the first frame')
    initial_pose_x: float = setting(0.0, 'initial base x in map (m)', range=(-1e6, 1e6),
                                    ros_name='initial_pose.x')
    initial_pose_y: float = setting(0.0, 'initial base y in map (m)', range=(-1e6, 1e6),
                                    ros_name='initial_pose.y')
    initial_pose_z: float = setting(0.0, 'initial base z in map (m)', range=(-1e6, 1e6),
                                    ros_name='initial_pose.z')
    initial_pose_yaw: float = setting(0.0, 'initial base yaw in map (rad)', range=(-7.0, 7.0),
                                      ros_name='initial_pose.yaw')
    use_initial_guess: bool = setting(False, 'use the last fix (carried by odometry) as the '
                                      'prior')
    prior_search_radius: float = setting(5.0, 'position std of initial_pose / load_map hint '
                                         'priors (m)', range=(0.0, 1e4))
    min_consistent_fixes: int = setting(2, 'consistent fixes needed first / after a jump',
                                        range=(1, 100))
    consistency_translation: float = setting(0.5, 'fixes agree if map->odom differs less (m)',
                                             range=(0.0, 1e4))
    consistency_rotation: float = setting(0.2, 'fixes agree if map->odom differs less (rad)',
                                          range=(0.0, 3.1416))
    max_jump_translation: float = setting(0.0, 'larger jumps need re-confirmation (m; 0 = off)',
                                          range=(0.0, 1e4))
    max_jump_rotation: float = setting(0.0, 'larger jumps need re-confirmation (rad; 0 = off)',
                                       range=(0.0, 3.1416))
    position_covariance_scale: float = setting(1.0, 'factor on published position variances',
                                               range=(0.0, 1e6))
    rotation_covariance_scale: float = setting(1.0, 'factor on published rotation variances',
                                               range=(0.0, 1e6))
    min_position_std: float = setting(0.02, 'floor of each published position std (m)',
                                      range=(0.0, 100.0))
    min_rotation_std: float = setting(0.005, 'floor of each published rotation std (rad)',
                                      range=(0.0, 3.1416))
    covariance_inflation_points: int = setting(
        0, 'inflate the covariance by N/num_supported when fewer points support a fix (0 = off)',
        range=(0, 1000000))
    publish_pose_only_when_localized: bool = setting(True, 'publish only fixes that passed the '
                                                     'consistency gate')
    lost_after_failures: int = setting(5, 'consecutive failures that mean "localization lost"',
                                       range=(1, 100000))

    @property
    def tf_owner(self) -> str:
        """Which TF is broadcast: 'map_to_odom', 'map_to_base' or 'none'."""
        return self.tf_mode if self.publish_tf else 'none'

    @property
    def gate_on_odom(self) -> bool:
        """Fixes are compared (and use_initial_guess carries them) as map->odom."""
        return self.tf_owner == 'map_to_odom'

    @property
    def needs_odometry(self) -> bool:
        """odom->base at the image stamp is required (else the frame is rejected 'tf_missing')."""
        return self.gate_on_odom or self.use_initial_guess

    def validate(self):
        """Check choices and ranges of every declared field; returns self."""
        for p in params_of(type(self)):
            value = getattr(self, p.field)
            if p.choices is not None and value not in p.choices:
                raise ConfigError(f'parameter {p.name}={value!r}: expected one of '
                                  f'{list(p.choices)}')
            if p.range is not None and isinstance(value, (int, float)) and \
                    not p.range[0] <= value <= p.range[1]:
                raise ConfigError(f'parameter {p.name}={value!r} outside [{p.range[0]}, '
                                  f'{p.range[1]}]')
        return self

    @classmethod
    def from_params(cls, values: dict[str, Any]):
        """Flat ROS-named values (e.g. ``initial_pose.x``) -> validated config; names of other
        parameters (the node's plumbing, ``use_sim_time``) are ignored, removed ones rejected."""
        check_removed(values)
        fields = {}
        for p in params_of(cls):
            if p.name in values:
                fields[p.field] = coerce(p, values[p.name])
        return cls(**fields).validate()


def coerce(p: Param, value: Any) -> Any:
    """A parameter value with the declared type (ints are accepted for floats, as ROS does with
    YAML); ConfigError for another type."""
    kinds = p.kinds or (type(p.default),)
    if float in kinds and int not in kinds and isinstance(value, int) and \
            not isinstance(value, bool):
        return float(value)
    if type(value) not in kinds:
        raise ConfigError(f'parameter {p.name}={value!r}: expected a '
                          f'{" or ".join(k.__name__ for k in kinds)}')
    return value


def check_removed(names) -> None:
    """ConfigError if any of ``names`` is a removed parameter (says where it went)."""
    for name in names:
        if name in REMOVED_PARAMETERS:
            raise ConfigError(f'parameter {name} no longer exists; the setting is in '
                              f'{REMOVED_PARAMETERS[name]}')


def flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
    """Nested YAML mapping -> {'a.b': value} as ROS names parameters."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def load_params_file(path: str | Path, node_name: str = 'nre_relocalization') -> dict[str, Any]:
    """A ROS 2 parameter YAML -> flat {name: value} for ``node_name`` (entries for ``/**``, the
    bare name and ``/name`` are merged in that order)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f'cannot read parameter file {path}: {exc}') from exc
    if not isinstance(data, dict):
        raise ConfigError(f'parameter file {path}: expected a mapping of node names')
    out: dict[str, Any] = {}
    for key in ('/**', node_name, f'/{node_name}'):
        entry = data.get(key)
        if isinstance(entry, dict) and isinstance(entry.get('ros__parameters'), dict):
            out.update(flatten(entry['ros__parameters']))
    return out
