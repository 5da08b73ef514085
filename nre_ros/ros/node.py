"""Entry point of the ROS 2 relocalization node (``ros2 run nre_ros nre_relocalization``)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print('nre_relocalization: the ROS 2 node is not implemented yet (issue: ROS 2 relocalization '
          'node); use `nre-ros` for the offline tools.', file=sys.stderr)
    return 1


if __name__ == '__main__':
    sys.exit(main())
