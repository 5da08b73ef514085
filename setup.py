"""ament_python setup for nre_ros (also a plain pip-installable package)."""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = 'nre_ros'
HERE = Path(__file__).parent


def data_tree(folder: str) -> list[tuple[str, list[str]]]:
    """(install dir, files) pairs that keep the folder structure under share/nre_ros/."""
    out = {}
    for path in sorted(Path(HERE, folder).rglob('*')):
        if path.is_file() and '__pycache__' not in path.parts:
            rel = path.relative_to(HERE)
            out.setdefault(str(Path('share', PACKAGE, rel.parent)), []).append(str(rel))
    return sorted(out.items())


def requirements() -> list[str]:
    lines = (HERE / 'requirements.txt').read_text().splitlines()
    return [ln.split('#')[0].strip() for ln in lines if ln.split('#')[0].strip()]


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=['nre_ros', 'nre_ros.*', 'nre_training', 'nre_training.*']),
    package_data={'nre_ros': ['weights/*', 'py.typed']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + PACKAGE + '/rviz', glob('rviz/*.rviz')),
    ] + data_tree('maps'),
    install_requires=requirements(),
    extras_require={'test': ['pytest', 'transforms3d', 'catkin-pkg']},
    zip_safe=False,
    python_requires='>=3.10',
    maintainer='nre_ros maintainers',
    maintainer_email='nre-ros@example.org',
    description='Camera relocalization with the Neural Reprojection Error, as a ROS 2 node.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'nre-ros = nre_ros.cli:main',
            'nre_relocalization = nre_ros.ros.node:main',
        ],
    },
)
