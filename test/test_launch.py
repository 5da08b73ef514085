"""launch/nre_relocalization.launch.py, run for real with launch.LaunchService.

launch / launch_ros are not on PyPI: scripts/install_ros.sh installs them from source (the tests
skip without them). ``launched_node`` lays out an ament prefix the way colcon installs nre_ros
(resource index, share/nre_ros/{launch,config}, lib/nre_ros/nre_relocalization), so the launch
file finds the package and its executable as in a ROS 2 install; test_colcon.py does the same
with a real ``colcon build`` and the real pipeline.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip('launch', reason='launch is not on PyPI: scripts/install_ros.sh installs it')
pytest.importorskip('launch_ros', reason='launch_ros is not installed (scripts/install_ros.sh)')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'nre_relocalization.launch.py'
BAG = REPO / 'maps' / 'demo' / 'queries_bag'
DEMO_MAP = REPO / 'maps' / 'demo' / 'fr1_rpy.nremap'
# values that differ from the defaults, to see the YAML take effect under a namespace
YAML_OVERRIDES = {'min_consistent_fixes': 1, 'tf_lookup_timeout': 2.0, 'queue_size': 5}


def _description(prefix: Path, monkeypatch):
    monkeypatch.setenv('AMENT_PREFIX_PATH', ros_env(prefix)['AMENT_PREFIX_PATH'])
    spec = importlib.util.spec_from_file_location('nre_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def fake_install(prefix: Path, command: list[str]) -> Path:
    """An ament prefix holding nre_ros like a colcon install, its executable running ``command``."""
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'nre_ros').touch()
    share = prefix / 'share' / 'nre_ros'
    share.mkdir(parents=True)
    for name in ('launch', 'config', 'package.xml'):
        (share / name).symlink_to(REPO / name)
    exe = prefix / 'lib' / 'nre_ros' / 'nre_relocalization'
    exe.parent.mkdir(parents=True)
    exe.write_text('#!/bin/sh\nexec ' + ' '.join(f"'{c}'" for c in command) + ' "$@"\n')
    exe.chmod(0o755)
    return prefix


def ros_env(prefix: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=str(100 + os.getpid() % 100))
    env['AMENT_PREFIX_PATH'] = os.pathsep.join(
        [str(prefix)] + [p for p in env.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p])
    from nre_ros.ros.dds import ENV_PROFILE, write_large_image_profile
    env[ENV_PROFILE] = str(write_large_image_profile())
    return env


def launch_and_replay(launch_file: Path, env: dict, args: dict, node: str, params: list[str],
                      out: Path, timeout_s: float, rate: float = 1.0) -> tuple[dict, str]:
    """Run the launch file (scripts/ros2_launch.py), replay the demo bag through the launched node
    (test/launch_replay.py), stop the launch with SIGINT. Returns (replay JSON, launch log)."""
    log_path = out.parent / f'{out.name}_launch.log'
    with open(log_path, 'w') as log:
        launch = subprocess.Popen(
            [sys.executable, str(REPO / 'scripts' / 'ros2_launch.py'), str(launch_file)]
            + [f'{k}:={v}' for k, v in args.items()], env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            replay = subprocess.run(
                [sys.executable, str(REPO / 'test' / 'launch_replay.py'), node, str(BAG),
                 str(out), '--timeout', str(timeout_s), '--rate', str(rate)]
                + [a for p in params for a in ('--param', p)],
                env=env, capture_output=True, text=True, timeout=timeout_s + 120)
        finally:
            launch.send_signal(signal.SIGINT)
            try:
                launch.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(launch.pid, signal.SIGKILL)
                launch.wait()
    launch_log = log_path.read_text()
    lines = [ln for ln in replay.stdout.splitlines() if ln.startswith('{')]
    assert replay.returncode == 0 and lines, (replay.stdout[-3000:], replay.stderr[-3000:],
                                              launch_log[-4000:])
    return json.loads(lines[-1]), launch_log


def test_launch_declares_the_documented_arguments_and_no_pose_remap(tmp_path, monkeypatch):
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_context import LaunchContext
    entities = _description(fake_install(tmp_path / 'install', ['true']), monkeypatch).entities
    args = {e.name: e for e in entities if isinstance(e, DeclareLaunchArgument)}
    assert {'map_path', 'params_file', 'namespace', 'use_sim_time', 'image', 'autostart', 'depth',
            'image_transport', 'pipeline_config', 'threads', 'pose', 'camera_info'} <= set(args)
    assert args['params_file'].default_value[0].text == str(
        tmp_path / 'install' / 'share' / 'nre_ros' / 'config' / 'nre_ros.yaml')

    def node_for(**given):
        context = LaunchContext()
        for name, arg in args.items():
            default = arg.default_value[0].text if arg.default_value else ''
            context.launch_configurations[name] = given.get(name, default)
        opaque = next(e for e in entities if isinstance(e, OpaqueFunction))
        (node,) = opaque.execute(context)
        node._perform_substitutions(context)
        return node

    plain = node_for()
    assert plain.node_executable == 'nre_relocalization'
    remaps = dict(plain.expanded_remapping_rules)
    assert remaps == {'image': '/camera/image_raw'}             # ~/pose stays ~/pose
    rgbd = node_for(depth='/cam/depth', pose='amcl_pose', threads='3', image_transport='compressed',
                    camera_info='/cam/info')
    remaps = dict(rgbd.expanded_remapping_rules)
    assert remaps['depth'] == '/cam/depth' and remaps['camera_info'] == '/cam/info'
    assert remaps['~/pose'] == 'amcl_pose'


@pytest.mark.skipif(not BAG.exists(), reason=f'demo bag {BAG} not found')
def test_launch_under_namespace_autostarts_applies_yaml_and_publishes_poses(tmp_path):
    """The launch file with autostart under /robot1: active on its own, the YAML's values read
    back from the node, poses for every bag image on /robot1/nre_relocalization/pose. The node
    is the real one with the ground-truth oracle as localizer (test_colcon runs the pipeline)."""
    prefix = fake_install(tmp_path / 'install', [sys.executable, '-m', 'nre_ros.eval.oracle_node',
                                                 str(BAG), '0', '0'])
    params = yaml.safe_load((REPO / 'config' / 'nre_ros.yaml').read_text())
    params['/**']['ros__parameters'].update(YAML_OVERRIDES)
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    launch_file = prefix / 'share' / 'nre_ros' / 'launch' / LAUNCH_FILE.name
    args = {'namespace': 'robot1', 'params_file': params_file, 'map_path': DEMO_MAP,
            'image': '/camera/color/image_raw', 'autostart': 'true', 'use_sim_time': 'true',
            'threads': '1', 'pipeline_config': REPO / 'config' / 'pipeline.yaml'}
    names = list(YAML_OVERRIDES) + ['num_threads', 'pipeline_config', 'use_depth', 'autostart',
                                    'max_rate']
    result, log = launch_and_replay(launch_file, ros_env(prefix), args,
                                    '/robot1/nre_relocalization', names, tmp_path / 'replay', 90)
    print(json.dumps(result))
    assert result['states_seen'][-1] == 'active' and result['initial_state'] == 'active', result
    assert result['params'] == {**YAML_OVERRIDES, 'num_threads': 1, 'use_depth': False,
                                'pipeline_config': str(REPO / 'config' / 'pipeline.yaml'),
                                'autostart': True, 'max_rate': 5.0}, result
    assert result['images_sent'] == 8 and result['poses_received'] == 8, (result, log[-3000:])
    assert result['statuses'] == ['fix'] * 8 and result['unmatched_poses'] == 0
    assert result['max_t_err_m'] < 1e-6 and result['tf_checked'] == 8
