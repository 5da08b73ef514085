"""The launch file, where ROS 2's launch / launch_testing exist (a colcon workspace); on the pip
install they do not (not on PyPI) and these tests skip with that reason."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip('launch_testing', reason='launch_testing is not installable from PyPI; '
                    'runs in a ROS 2 install (colcon test)')
pytest.importorskip('launch_ros', reason='launch_ros is not installed')

LAUNCH_FILE = Path(__file__).resolve().parents[1] / 'launch' / 'nre_relocalization.launch.py'


def _description():
    spec = importlib.util.spec_from_file_location('nre_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def test_launch_declares_the_documented_arguments_and_one_lifecycle_node():
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import LifecycleNode
    entities = _description().entities
    names = {e.name for e in entities if isinstance(e, DeclareLaunchArgument)}
    assert {'map_path', 'params_file', 'namespace', 'use_sim_time', 'image',
            'autostart'} <= names
    nodes = [e for e in entities if isinstance(e, LifecycleNode)]
    assert len(nodes) == 1 and nodes[0].node_executable == 'nre_relocalization'
