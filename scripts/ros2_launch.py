#!/usr/bin/env python3
"""``ros2 launch`` for installs without the ros2 CLI (launch from source, see install_ros.sh).

    python scripts/ros2_launch.py LAUNCH_FILE [NAME:=VALUE ...]

Runs the launch file with ``launch.LaunchService`` as ``ros2 launch`` would; Ctrl-C (SIGINT)
shuts the launched nodes down. A package's installed launch file is at
``<install>/share/<package>/launch/``.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ('-h', '--help') or any(':=' not in a for a in argv[1:]):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    arguments = [tuple(a.split(':=', 1)) for a in argv[1:]]
    service = LaunchService(argv=argv[1:])
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(argv[0]), launch_arguments=arguments)]))
    return service.run()


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
