"""Declared ROS parameters (nre_ros.ros.params); the table itself, config/nre_ros.yaml and the
gate are tested without ROS in test_stream.py."""
from __future__ import annotations

import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

from nre_ros.errors import ConfigError  # noqa: E402


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


def test_removed_parameter_given_to_the_node_is_an_error():
    import rclpy
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from nre_ros.ros.params import declare_parameters, read_config
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = Node('params_probe', context=ctx,
                    parameter_overrides=[Parameter('map_path', value='m.nremap'),
                                         Parameter('min_inlier_ratio', value=0.5)])
        declare_parameters(node)
        with pytest.raises(ConfigError, match='min_supported_fraction'):
            read_config(node)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


@pytest.mark.parametrize('given, expected', [(None, 'auto'), (4, 4), ('auto', 'auto'), (0, 0)])
def test_num_threads_is_auto_or_a_count(given, expected):
    """Dynamically typed: a YAML / launch integer and the string 'auto' are both accepted."""
    import rclpy
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from nre_ros.ros.params import declare_parameters, read_config
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        overrides = [Parameter('map_path', value='m.nremap')]
        if given is not None:
            overrides.append(Parameter('num_threads', value=given))
        node = Node('params_probe', context=ctx, parameter_overrides=overrides)
        declare_parameters(node)
        assert read_config(node).num_threads == expected
        node.set_parameters([Parameter('num_threads', value='many')])
        with pytest.raises(ConfigError, match='num_threads'):
            read_config(node)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
