"""``nre-ros evaluate``: replay a bag offline through the relocalizer and write a report.

Offline only (rosbags, no ROS): replaying through the running node (``--live``) is not
implemented; use ``ros2 bag play --clock`` + ``evo_ape bag2`` for that (ros-interface.md §10).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nre_ros.errors import InputError, NreError

NAME = 'evaluate'
HELP = 'replay a ROS 2 bag offline through the relocalizer: CSV, TUM files, JSON and HTML report'
ORDER = 61


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag', metavar='BAG', help='bag directory (make-bag output or recorded)')
    parser.add_argument('--map', dest='map_path', help='map file for the relocalizer')
    parser.add_argument('--config', help='PipelineConfig YAML (default: built-in defaults)')
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument('--realtime', action='store_true',
                      help='drop frames that arrive while the previous one is processed (virtual '
                      'bag-rate playback, as the node with a depth-1 queue)')
    rate.add_argument('--max-rate', type=float, default=0.0, metavar='HZ',
                      help='as --realtime, and accept at most HZ frames per second')
    parser.add_argument('--use-depth', action='store_true', help='pass the bag depth to localize')
    parser.add_argument('--out', default='out/eval', help='output folder (default: out/eval)')
    parser.add_argument('--baseline', nargs='+', default=[], metavar='RUN',
                        help='earlier runs (summary.json or its folder) shown side by side')
    parser.add_argument('--oracle', nargs=2, type=float, metavar=('SIGMA_T_M', 'SIGMA_R_DEG'),
                        help='harness self-check: evaluate ground truth + this noise instead of '
                        'the relocalizer (no map needed); not a relocalization result')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm progress bar')


def _relocalizer(args: argparse.Namespace):
    if not args.map_path:
        raise InputError('--map is required (or --oracle for a harness self-check)')
    try:
        from nre_ros.pipeline import PipelineConfig, Relocalizer
    except ImportError as exc:
        raise NreError(f'the relocalization pipeline is not available ({exc}); '
                       'use --oracle to check the harness') from exc
    config = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    return Relocalizer.from_config(args.map_path, config)


def run(args: argparse.Namespace) -> int:
    from nre_ros.eval.evaluate import ReplayMode, evaluate_bag, load_baseline
    if not Path(args.bag).exists():
        raise InputError(f'bag {args.bag} does not exist')
    if args.max_rate < 0:
        raise InputError(f'--max-rate must be > 0, got {args.max_rate}')
    mode = ReplayMode(realtime=args.realtime, max_rate_hz=args.max_rate,
                      use_depth=args.use_depth)
    if args.oracle:
        from nre_ros.eval.bags import read_bag
        from nre_ros.eval.fakes import OracleLocalizer
        localizer = OracleLocalizer.from_frames(read_bag(args.bag, with_depth=False),
                                                sigma_t_m=args.oracle[0],
                                                sigma_r_deg=args.oracle[1])
        meta = {'localizer': f'ORACLE (ground truth + noise {args.oracle[0]} m, '
                             f'{args.oracle[1]} deg): harness self-check'}
    else:
        localizer = _relocalizer(args)
        meta = {'localizer': 'nre_ros.pipeline.Relocalizer', 'map': args.map_path,
                'config': args.config or 'defaults'}
    baselines = {str(b): load_baseline(b) for b in args.baseline}
    metrics, paths = evaluate_bag(args.bag, localizer, args.out, mode, meta, baselines,
                                  show_progress=not args.no_progress)
    lat = metrics['latency_ms']
    print(f"{metrics['num_frames']} frames, {metrics['num_fixes']} fixes; recall "
          f"{metrics['recall_25cm_2deg']:.3f} / {metrics['recall_50cm_5deg']:.3f} / "
          f"{metrics['recall_5m_10deg']:.3f}; ATE {metrics['ate_rmse_m']:.4f} m; "
          f"latency p50 {lat['p50']:.1f} ms")
    print(f"report: {paths['report']}")
    return 0
