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
    assert 'python3-pytest' in {d.name for d in pkg.test_depends}


def test_package_xml_lists_every_ros_package_the_code_imports():
    """ROS packages imported by nre_ros/ and launch/ (messages, services, rclpy, launch, ament
    index, our interfaces) == the exec_depends that are not python3-* rosdep keys."""
    import ast
    catkin_pkg = pytest.importorskip('catkin_pkg.package', reason='catkin_pkg not installed')
    ros_suffixes = ('_msgs', '_srvs', '_interfaces')
    ros_names = {'rclpy', 'launch', 'launch_ros', 'ament_index_python', 'tf2_ros'}
    imported = set()
    for path in [*REPO.glob('nre_ros/**/*.py'), *REPO.glob('launch/*.py')]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            imported |= {n.split('.')[0] for n in names}
    ros_imported = {n for n in imported if n in ros_names or n.endswith(ros_suffixes)}
    pkg = catkin_pkg.parse_package(str(REPO / 'package.xml'))
    listed = {d.name for d in pkg.exec_depends if not d.name.startswith('python3-')}
    assert ros_imported == listed
    assert {'rosgraph_msgs', 'ament_index_python', 'nre_ros_interfaces'} <= listed


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


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (anywhere in it, lazily or not)."""
    import ast
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_import_layering():
    """Only nre_ros/ros/ imports rclpy; the core (everything but ros/, eval/, commands/, cli)
    never imports ros, eval, commands, cli or nre_training."""
    outer = ('ros', 'eval', 'commands')
    for path in sorted((REPO / 'nre_ros').rglob('*.py')):
        rel = path.relative_to(REPO / 'nre_ros')
        names = _imports(path)
        if rel.parts[0] != 'ros':
            assert not any(n == 'rclpy' or n.startswith('rclpy.') for n in names), rel
        if rel.parts[0] in outer or rel.name == 'cli.py':
            continue
        bad = [n for n in names if n.split('.')[0] == 'nre_training' or
               any(n == f'nre_ros.{o}' or n.startswith(f'nre_ros.{o}.') for o in outer + ('cli',))]
        assert not bad, (rel, bad)
