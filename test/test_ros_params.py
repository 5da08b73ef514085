"""Parameters (nre_ros.ros.params), config/nre_ros.yaml and fix gating (nre_ros.ros.gating)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

from nre_ros.errors import ConfigError  # noqa: E402
from nre_ros.geometry import make_transform, so3_exp  # noqa: E402
from nre_ros.results import Result  # noqa: E402
from nre_ros.ros.gating import FixGate, GateConfig, quality_reason  # noqa: E402
from nre_ros.ros.params import PARAMETERS, NodeConfig, defaults  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _flatten(d, prefix=''):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def test_yaml_repeats_declared_defaults():
    data = yaml.safe_load((REPO / 'config' / 'nre_ros.yaml').read_text())
    assert list(data) == ['/**']  # wildcard: the file also applies under a namespace
    params = _flatten(data['/**']['ros__parameters'])
    assert params == defaults()
    for name, value in params.items():  # same types as declared (ROS rejects int for double)
        assert type(value) is type(defaults()[name]), name


def test_config_dataclass_matches_table():
    fields = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
    assert fields == {p.field: p.default for p in PARAMETERS}


def test_validation_names_the_bad_parameter():
    ok = NodeConfig(map_path='x.nremap').validate()
    assert ok.tf_owner == 'map_to_odom'
    assert NodeConfig(map_path='x', publish_tf=False).tf_owner == 'none'
    with pytest.raises(ConfigError, match='map_path is empty'):
        NodeConfig().validate()
    with pytest.raises(ConfigError, match="tf_mode='map_to_cam'"):
        NodeConfig(map_path='x', tf_mode='map_to_cam').validate()
    with pytest.raises(ConfigError, match='distinct'):
        NodeConfig(map_path='x', odom_frame='map').validate()
    with pytest.raises(ConfigError, match='max_rate'):
        NodeConfig(map_path='x', max_rate=-1.0).validate()


def test_declared_with_descriptors_and_ranges():
    import rclpy
    from rclpy.node import Node

    from nre_ros.ros.params import declare_parameters, read_config
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        from rclpy.parameter import Parameter
        node = Node('params_probe', context=ctx,
                    parameter_overrides=[Parameter('map_path', value='m.nremap'),
                                         Parameter('max_rate', value=2.0)])
        declare_parameters(node)
        cfg = read_config(node)
        assert cfg.map_path == 'm.nremap' and cfg.max_rate == 2.0
        desc = node.describe_parameter('transform_tolerance')
        assert desc.description and desc.floating_point_range[0].to_value == 10.0
        assert node.describe_parameter('queue_size').integer_range[0].from_value == 1
        result = node.set_parameters([Parameter('max_rate', value=-3.0)])[0]
        assert not result.successful  # outside the declared range
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def _result(points=20, supported=18, mean_cost=0.5):
    return Result(np.eye(4), np.eye(6), 1.0, mean_cost, points, supported, 1)


def test_quality_thresholds():
    assert quality_reason(_result(), GateConfig()) is None
    assert 'min_points' in quality_reason(_result(points=5), GateConfig(min_points=10))
    assert 'inlier ratio' in quality_reason(_result(supported=5), GateConfig(min_inlier_ratio=.5))
    assert 'max_cost' in quality_reason(_result(mean_cost=3.0), GateConfig(max_cost=2.0))


def _T(x, yaw=0.0):
    return make_transform(so3_exp([0, 0, yaw]), [x, 0, 0])


def test_gate_consistency_and_jumps():
    gate = FixGate(GateConfig(min_consistent_fixes=2, max_jump_translation=1.0))
    assert not gate.offer(_T(0.0))[0]
    assert not gate.offer(_T(5.0))[0]          # inconsistent: streak restarts
    assert gate.offer(_T(5.1))[0]              # 2 consistent -> accepted
    assert gate.offer(_T(5.5))[0]              # small move while localized
    ok, why = gate.offer(_T(20.0))
    assert not ok and 'jump' in why            # jump needs confirmation
    assert gate.offer(_T(20.1))[0]
    gate.reset()
    assert gate.current is None and not gate.offer(_T(20.1))[0]
    single = FixGate(GateConfig(min_consistent_fixes=1))
    assert single.offer(_T(1.0))[0] and single.offer(_T(100.0))[0]  # jumps off by default
