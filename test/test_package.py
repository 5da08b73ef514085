"""Packaging: package.xml is a valid format-3 manifest; the core never imports rclpy/training."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3():
    catkin_pkg = pytest.importorskip('catkin_pkg.package', reason='catkin_pkg not installed')
    pkg = catkin_pkg.parse_package(str(REPO / 'package.xml'))
    assert pkg.package_format == 3 and pkg.name == 'nre_ros'
    assert pkg.get_build_type() == 'ament_python'
    deps = {d.name for d in pkg.exec_depends}
    for needed in ['rclpy', 'sensor_msgs', 'geometry_msgs', 'nav_msgs', 'tf2_ros', 'tf2_msgs',
                   'std_srvs', 'lifecycle_msgs', 'diagnostic_msgs', 'launch', 'launch_ros']:
        assert needed in deps
    assert {'python3-pytest', 'launch_testing'} <= {d.name for d in pkg.test_depends}


def test_setup_py_name():
    out = subprocess.run([sys.executable, 'setup.py', '--name'], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == 'nre_ros'


def test_core_modules_import_without_rclpy_or_training():
    """Import every core module with rclpy and nre_training made unimportable."""
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['rclpy'] = None\n"
        "sys.modules['nre_training'] = None\n"
        "import nre_ros\n"
        "for m in pkgutil.walk_packages(nre_ros.__path__, 'nre_ros.'):\n"
        "    if m.name.startswith('nre_ros.ros'):\n"
        "        continue\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, '-m', 'nre_ros.cli', '--help'], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert 'demo' in out.stdout
