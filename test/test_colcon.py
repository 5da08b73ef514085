"""A ROS 2 workspace build: the documented ``colcon build`` builds nre_ros and
nre_ros_interfaces; the installed node starts (with ~/load_map) and the installed launch file runs
the real pipeline on the demo bag.

Without a ROS distro the workspace's underlay is the venv's ROS wheels plus a throwaway venv with
the rosidl generators (``nre_ros_interfaces/build_wheel.sh`` with PREPARE_ONLY=1); colcon comes
from requirements-dev.txt. Slow: the build venv, the build and the pipeline take minutes.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytestmark = [pytest.mark.slow, pytest.mark.ros]

REPO = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).parent / 'colcon'
DEMO_MAP = Path('maps') / 'demo' / 'fr1_rpy.nremap'      # shipped: share/nre_ros/<this>
# the documented command (README "ROS 2"), run in the workspace root
COLCON_BUILD = ['build', '--base-paths', 'src', 'src/nre_ros/nre_ros_interfaces']


def _repo_files() -> list[str]:
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip('not a git checkout: cannot tell the source files apart')
    return [f for f in out.stdout.split('\0') if f and (REPO / f).is_file()]


def _plain_env() -> dict:
    """The environment without the ROS-wheel bootstrap of this process (pitfall: a process of
    another venv must not inherit it)."""
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=str(20 + os.getpid() % 80))
    for name in ('_ROS_WHEELS_BOOTSTRAP_COMPLETE', 'LD_LIBRARY_PATH', 'PYTHONPATH',
                 'AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH'):
        env.pop(name, None)
    return env


def sourced_env(ws: Path) -> dict:
    """The environment after ``source install/setup.bash`` in the workspace."""
    out = subprocess.run(['bash', '-c', 'source install/setup.bash && env -0'], cwd=ws,
                         env=_plain_env(), capture_output=True, text=True, check=True)
    return dict(line.split('=', 1) for line in out.stdout.split('\0') if '=' in line)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    if not COLCON.exists():
        pytest.skip(f'colcon not installed in {COLCON.parent} (requirements-dev.txt)')
    for tool in ('cmake', 'c++'):
        if shutil.which(tool) is None:
            pytest.skip(f'{tool} not found (needed to build nre_ros_interfaces)')
    ws = tmp_path_factory.mktemp('ws')
    src = ws / 'src' / 'nre_ros'                        # the clone, as the README says
    for rel in _repo_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    env = dict(_plain_env(), WORK_DIR=str(ws / 'generators'), PREPARE_ONLY='1',
               PYTHON=sys.executable)
    prep = subprocess.run([str(REPO / 'nre_ros_interfaces' / 'build_wheel.sh')], env=env,
                          capture_output=True, text=True, timeout=900)
    assert prep.returncode == 0, prep.stderr[-3000:]
    underlay = Path(prep.stdout.strip().splitlines()[-1])
    env = dict(_plain_env(), AMENT_PREFIX_PATH=str(underlay), CMAKE_PREFIX_PATH=str(underlay))
    cmd = [str(COLCON)] + COLCON_BUILD + [
        '--event-handlers', 'console_direct-', '--cmake-args',
        f'-DPython3_EXECUTABLE={underlay / "bin" / "python"}', '-DBUILD_TESTING=OFF']
    t0 = time.monotonic()
    build = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=1200)
    print(f'$ colcon {" ".join(COLCON_BUILD)}  ({time.monotonic() - t0:.0f} s)\n'
          + build.stdout[-2000:])
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:] + \
        ''.join(p.read_text()[-3000:] for p in (ws / 'log' / 'latest_build').rglob('stderr.log'))
    return ws, build.stdout


def test_colcon_builds_both_packages_and_the_installed_node_starts(workspace, tmp_path):
    ws, output = workspace
    assert 'Finished <<< nre_ros_interfaces' in output and 'Finished <<< nre_ros ' in output
    assert 'Summary: 2 packages finished' in output
    env = sourced_env(ws)
    probe = subprocess.run(
        [sys.executable, '-c', 'import nre_ros, nre_ros_interfaces.srv as s; '
         'from ament_index_python.packages import get_package_share_directory as g; '
         'print(nre_ros.__file__, s.__file__, g("nre_ros"))'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    print(probe.stdout)
    assert all(str(ws / 'install') in p for p in probe.stdout.split()), probe.stdout
    exe = ws / 'install' / 'nre_ros' / 'lib' / 'nre_ros' / 'nre_relocalization'
    log_path = tmp_path / 'node.log'
    demo_map = ws / 'install' / 'nre_ros' / 'share' / 'nre_ros' / DEMO_MAP
    with open(log_path, 'w') as log:
        node = subprocess.Popen([str(exe), '--ros-args', '-p', f'map_path:={demo_map}',
                                 '-p', 'autostart:=true'], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and node.poll() is None \
                    and 'Activated' not in log_path.read_text():
                time.sleep(0.5)
        finally:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
    text = log_path.read_text()
    print(text[-1500:])
    assert 'Configured: map' in text and 'Activated' in text, text[-4000:]
    assert '~/load_map unavailable' not in text, text[-2000:]


def test_installed_launch_file_runs_the_pipeline_on_the_demo_bag(workspace, tmp_path):
    """ros2 launch of the installed package (namespace, YAML, autostart): the real pipeline
    publishes a pose for every demo-bag image, each within 10 cm / 3 deg of the ground truth."""
    pytest.importorskip('launch_ros', reason='launch_ros not installed (scripts/install_ros.sh)')
    from test_launch import YAML_OVERRIDES, launch_and_replay
    ws, _ = workspace
    env = sourced_env(ws)
    from nre_ros.ros.dds import ENV_PROFILE, write_large_image_profile
    env[ENV_PROFILE] = str(write_large_image_profile())
    share = ws / 'install' / 'nre_ros' / 'share' / 'nre_ros'
    params = yaml.safe_load((share / 'config' / 'nre_ros.yaml').read_text())
    params['/**']['ros__parameters'].update(YAML_OVERRIDES)
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    args = {'namespace': 'robot2', 'params_file': params_file, 'map_path': share / DEMO_MAP,
            'image': '/camera/color/image_raw', 'autostart': 'true', 'use_sim_time': 'true'}
    result, log = launch_and_replay(share / 'launch' / 'nre_relocalization.launch.py', env, args,
                                    '/robot2/nre_relocalization', list(YAML_OVERRIDES),
                                    tmp_path / 'replay', 300, rate=0.5)
    print(result)
    assert result['initial_state'] == 'active' and result['params'] == YAML_OVERRIDES, result
    assert result['images_sent'] == 8 and result['poses_received'] == 8, (result, log[-4000:])
    assert result['max_t_err_m'] < 0.1 and result['max_r_err_deg'] < 3.0, result
