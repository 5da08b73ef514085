"""Where the package's shared files (maps/, config/, launch/) are, whatever the install.

Real data sets (tests, benchmarks, training) are looked up in ``shared_data_dir()``.

Order of the share directories: the ament share directory (colcon install, or ``pip install .`` with
AMENT_PREFIX_PATH set), ``<sys.prefix>/share/nre_ros`` (plain ``pip install .``), then the
source checkout next to this package (``pip install -e .`` or running from the repo).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from nre_ros.errors import NreError

PACKAGE = 'nre_ros'


def share_dirs() -> list[Path]:
    """Candidate share directories, most specific first (existing ones only)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: BLE001 - ament index absent or package not registered
        pass
    candidates.append(Path(__file__).resolve().parents[1])            # source checkout
    candidates.append(Path(sys.prefix) / 'share' / PACKAGE)
    return [c for c in candidates if c.is_dir()]


def shared_file(relative: str) -> Path:
    """Absolute path of a shipped file such as 'maps/demo/...' or 'config/nre_ros.yaml'."""
    for base in share_dirs():
        path = base / relative
        if path.exists():
            return path
    raise NreError(f'shipped file {relative!r} not found in {[str(d) for d in share_dirs()]}; '
                   'is nre_ros installed (pip install . / colcon build)?')


def shared_data_dir() -> Path:
    """Real data sets: ``$NRE_SHARED_DATA``, else ``shared/data`` beside the checkout."""
    default = Path(__file__).resolve().parents[2] / 'shared' / 'data'
    return Path(os.environ.get('NRE_SHARED_DATA', default))
