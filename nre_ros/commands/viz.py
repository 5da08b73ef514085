"""``nre-ros viz MAP``: write a top-view PNG of a map (points and keyframe frusta)."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = 'viz'
HELP = 'write a PNG top view of a map (points and keyframe frusta)'
ORDER = 21


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('map', help='map directory')
    parser.add_argument('-o', '--output', default=None, help='PNG path (default: MAP.png)')


def run(args: argparse.Namespace) -> int:
    from nre_ros.maps import load_map
    from nre_ros.maps.viz import plot_map_top_view
    out = args.output or str(Path(args.map).with_suffix('.png'))
    path = plot_map_top_view(load_map(args.map), out)
    print(f'wrote {path}')
    return 0
