"""``nre-ros info MAP``: validate a map and print its summary."""
from __future__ import annotations

import argparse
import json
import time

NAME = 'info'
HELP = 'validate a map and print its summary (keyframes, points, size, model, provenance)'
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('map', help='map directory (e.g. maps/demo/fr1_rpy.nremap)')
    parser.add_argument('--json', action='store_true', help='print the summary as JSON')


def run(args: argparse.Namespace) -> int:
    from nre_ros.maps import FORMAT_VERSION, load_map
    from nre_ros.maps.stats import format_summary, map_summary
    from nre_ros.models import unloadable_reason
    t0 = time.perf_counter()
    m = load_map(args.map)
    load_ms = 1e3 * (time.perf_counter() - t0)
    s = map_summary(m, args.map)
    s['load_ms'] = load_ms
    problem = unloadable_reason(m.spec)
    s['usable'] = problem is None
    if problem:
        s['unusable_reason'] = problem
    if args.json:
        print(json.dumps(s, indent=1))
    elif problem:
        print(f'map {args.map} (format v{FORMAT_VERSION}): files valid but NOT usable: no '
              f'installed model can query it: {problem}')
        print(format_summary(s))
    else:
        print(f'map {args.map} (format v{FORMAT_VERSION}, validated; model {m.spec.name!r} '
              'installed)')
        print(format_summary(s))
    return 0 if problem is None else 1
