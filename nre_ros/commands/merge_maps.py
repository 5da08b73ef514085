"""``nre-ros merge-maps A B OUT``: join maps of the same frame, dropping duplicate keyframes."""
from __future__ import annotations

import argparse

NAME = 'merge-maps'
HELP = 'join two maps built in the same frame (recordings or shards), deduplicating keyframes'
ORDER = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('a', metavar='A', help='first map (all its keyframes are kept)')
    parser.add_argument('b', metavar='B', help='second map (keyframes A already has are dropped)')
    parser.add_argument('output', metavar='OUT', help='map directory to write')
    parser.add_argument('--force', action='store_true', help='overwrite an existing map OUT')
    parser.add_argument('--min-translation', type=float, default=0.05,
                        help='a keyframe of B closer than this (m) ... (default %(default)s)')
    parser.add_argument('--min-rotation', type=float, default=5.0,
                        help='... and this (deg) to one of A is a duplicate (default %(default)s)')


def run(args: argparse.Namespace) -> int:
    from nre_ros.commands.build_map import check_output
    from nre_ros.maps import load_map, with_command
    from nre_ros.maps.merge import merge_maps
    check_output(args.output, args.force)
    a, b = load_map(args.a), load_map(args.b)
    m, stats = merge_maps(a, b, args.min_translation, args.min_rotation, (args.a, args.b))
    m = with_command(m, f'nre-ros {NAME} {args.a} {args.b} {args.output} --min-translation '
                        f'{args.min_translation} --min-rotation {args.min_rotation}')
    path = m.save(args.output)
    print(f"wrote {path}: {stats['keyframes']} keyframes ({stats['keyframes_a']} of A + "
          f"{stats['keyframes_b'] - stats['duplicates_dropped']} of B; "
          f"{stats['duplicates_dropped']} duplicates dropped), {m.num_points} points")
    return 0
