"""``nre-ros evaluate``: replay a bag through the relocalizer and write a report.

Offline (default; rosbags, no ROS): the ``Relocalizer`` runs in this process behind the node's
localization stream (``nre_ros.stream``) with the node's parameters (``--params-file``,
``--param``): max_rate dropping, priors, the consistency gate; never busy unless ``--realtime``.
``--live``: the bag is published over ROS 2 to the running ``nre_relocalization`` node (started
here, or ``--attach`` to one already running) and what it publishes is recorded
(``nre_ros.eval.live``): real latency, drops, map->odom. Both write the same outputs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nre_ros.commands import _bag_options
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
    rate.add_argument('--max-rate', type=float, metavar='HZ',
                      help='as --realtime, with the max_rate parameter set to HZ')
    parser.add_argument('--use-depth', action='store_true', help='pass the bag depth to localize '
                        '(the use_depth parameter)')
    parser.add_argument('--params-file', help='node parameter YAML (default: the built-in '
                        'defaults = config/nre_ros.yaml); offline, its stream settings apply')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='node parameter override (repeatable)')
    parser.add_argument('--out', default='out/eval', help='output folder (default: out/eval)')
    parser.add_argument('--baseline', nargs='+', default=[], metavar='RUN',
                        help='earlier runs (summary.json or its folder) shown side by side')
    parser.add_argument('--oracle', nargs=2, type=float, metavar=('SIGMA_T_M', 'SIGMA_R_DEG'),
                        help='harness self-check: evaluate ground truth + this noise instead of '
                        'the relocalizer (no map needed); not a relocalization result')
    parser.add_argument('--oracle-fail-rate', type=float, default=0.0, metavar='P',
                        help='with --oracle: answer this fraction of the frames with a Failure '
                        '(seeded, the same frames offline and --live)')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm progress bar')
    topics = parser.add_argument_group('topics (offline; default: the make-bag layout)')
    topics.add_argument('--image-topic', default=None,
                        help='Image or CompressedImage topic (default /camera/color/image_raw)')
    topics.add_argument('--camera-info-topic', default=None,
                        help='CameraInfo topic (default: the image topic\'s sibling camera_info)')
    topics.add_argument('--depth-topic', default=None, help='depth topic for --use-depth '
                        '(default /camera/aligned_depth_to_color/image_raw)')
    _bag_options.add_ground_truth_arguments(parser)
    live = parser.add_argument_group('live replay over ROS 2 (--live)')
    live.add_argument('--live', action='store_true',
                      help='replay through the nre_relocalization node over ROS 2 and record '
                      'its ~/pose, /tf and /diagnostics (needs rclpy + tf2_msgs)')
    live.add_argument('--attach', action='store_true',
                      help='with --live: use the node already running (it is configured and '
                      'activated if needed) instead of starting one')
    live.add_argument('--rate', type=float, default=1.0,
                      help='with --live: playback speed, x bag time (default 1)')
    live.add_argument('--node-name', default='/nre_relocalization',
                      help='with --live: full node name (default /nre_relocalization)')
    live.add_argument('--pose-topic', help='with --live: pose topic (default <node>/pose)')
    live.add_argument('--no-clock', action='store_true',
                      help='with --live: do not publish /clock (node on wall time)')
    live.add_argument('--settle', type=float, default=10.0, metavar='S',
                      help='with --live: wait up to S s for poses after the last image')
    live.add_argument('--domain-id', type=int,
                      help='with --live: ROS_DOMAIN_ID (default: the environment\'s)')


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


def _parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition(':=')
        if not sep or not name:
            raise InputError(f'--param expects NAME:=VALUE, got {item!r}')
        out[name] = value
    return out


def _ground_truth(args: argparse.Namespace, image_topic: str):
    """T_map_cam by image stamp from the ``--gt-*`` option (interpolated), or None: the bag's
    /ground_truth at exact stamps."""
    source = _bag_options.ground_truth_source(args)
    if source is None:
        return None
    from nre_ros.bagio.poses import ground_truth_by_stamp
    truth, _ = ground_truth_by_stamp(args.bag, image_topic, source)
    print(f'ground truth: {source.describe()}, {len(truth)} images within '
          f'{source.tolerance_s} s')
    return truth


def _gt_flags(args: argparse.Namespace) -> list[str]:
    """The ``--gt-*`` options as given, for the oracle node's command line."""
    flags = []
    if args.gt_topic is not None:
        flags += ['--gt-topic', args.gt_topic]
    if args.gt_tf is not None:
        flags += ['--gt-tf', *args.gt_tf]
    if args.gt_poses is not None:
        flags += ['--gt-poses', str(Path(args.gt_poses).resolve())]
    if flags and args.gt_frame is not None:
        flags += ['--gt-frame', args.gt_frame]
    if flags:
        flags += ['--gt-tolerance', str(args.gt_tolerance)]
    return flags


def run_live(args: argparse.Namespace, ground_truth=None) -> int:
    from nre_ros.eval.evaluate import load_baseline
    try:
        from nre_ros.eval.live import LiveOptions, evaluate_live, format_table
    except ImportError as exc:
        raise NreError(f'--live needs rclpy and tf2_msgs ({exc}); see scripts/install_ros.sh')
    if args.realtime or args.max_rate is not None:
        raise InputError('--realtime / --max-rate simulate the node offline; --live runs it')
    program, map_path = None, args.map_path or ''
    meta = {'localizer': 'nre_relocalization node (nre_ros.pipeline.Relocalizer)',
            'map': map_path, 'config': args.config or 'defaults'}
    params = _parse_params(args.param)
    if args.config:
        params.setdefault('pipeline_config', args.config)
    if args.oracle:
        import sys
        program = [sys.executable, '-m', 'nre_ros.eval.oracle_node', str(args.bag),
                   str(args.oracle[0]), str(args.oracle[1]),
                   '--fail-rate', str(args.oracle_fail_rate), *_gt_flags(args)]
        map_path = map_path or 'oracle'
        meta = {'localizer': f'ORACLE in the node (ground truth + noise {args.oracle[0]} m, '
                             f'{args.oracle[1]} deg): harness self-check'}
    elif not map_path and not args.attach:
        raise InputError('--map is required (or --oracle for a harness self-check)')
    opts = LiveOptions(rate=args.rate, use_depth=args.use_depth, clock=not args.no_clock,
                       attach=args.attach, node_name=args.node_name,
                       pose_topic=args.pose_topic, params_file=args.params_file,
                       params=params, program=program, settle_s=args.settle,
                       domain_id=args.domain_id, node_log=str(Path(args.out) / 'node.log'),
                       ground_truth=ground_truth)
    baselines = {str(b): load_baseline(b) for b in args.baseline}
    metrics, paths = evaluate_live(args.bag, map_path, args.out, opts, meta, baselines,
                                   show_progress=not args.no_progress)
    print(format_table(metrics))
    print(f"report: {paths['report']}")
    return 0


def run(args: argparse.Namespace) -> int:
    from nre_ros.eval.evaluate import ReplayMode, evaluate_bag, load_baseline, load_stream_config
    if not Path(args.bag).exists():
        raise InputError(f'bag {args.bag} does not exist')
    from nre_ros.eval.bags import TOPIC_DEPTH, TOPIC_IMAGE
    if args.live:
        if args.image_topic or args.camera_info_topic or args.depth_topic:
            raise InputError('topic options apply to offline evaluation; --live replays the '
                             'make-bag layout')
        return run_live(args, _ground_truth(args, TOPIC_IMAGE))
    if args.attach:
        raise InputError('--attach only goes with --live')
    read_options = {'image_topic': args.image_topic or TOPIC_IMAGE,
                    'camera_info_topic': args.camera_info_topic,
                    'depth_topic': args.depth_topic or TOPIC_DEPTH}
    ground_truth = _ground_truth(args, read_options['image_topic'])
    if ground_truth is not None:
        read_options['ground_truth'] = ground_truth
    params = _parse_params(args.param)
    if args.max_rate is not None:
        if args.max_rate <= 0:
            raise InputError(f'--max-rate must be > 0, got {args.max_rate}')
        params['max_rate'] = str(float(args.max_rate))
    if args.use_depth:
        params['use_depth'] = 'true'
    config = load_stream_config(args.params_file, params)
    mode = ReplayMode(realtime=args.realtime or args.max_rate is not None)
    if args.oracle:
        from nre_ros.eval.bags import read_bag
        from nre_ros.eval.fakes import OracleLocalizer
        localizer = OracleLocalizer.from_frames(read_bag(args.bag, with_depth=False,
                                                         **read_options),
                                                sigma_t_m=args.oracle[0],
                                                sigma_r_deg=args.oracle[1],
                                                fail_rate=args.oracle_fail_rate)
        meta = {'localizer': f'ORACLE (ground truth + noise {args.oracle[0]} m, '
                             f'{args.oracle[1]} deg): harness self-check'}
    else:
        localizer = _relocalizer(args)
        meta = {'localizer': 'nre_ros.pipeline.Relocalizer', 'map': args.map_path,
                'config': args.config or 'defaults'}
    baselines = {str(b): load_baseline(b) for b in args.baseline}
    metrics, paths = evaluate_bag(args.bag, localizer, args.out, mode, config, meta, baselines,
                                  show_progress=not args.no_progress, read_options=read_options)
    lat = metrics['latency_ms']
    print(f"{metrics['num_frames']} frames, {metrics['num_fixes']} fixes published "
          f"({metrics['num_rejected_by_gate']} held back by the consistency gate); recall "
          f"{metrics['recall_25cm_2deg']:.3f} / {metrics['recall_50cm_5deg']:.3f} / "
          f"{metrics['recall_5m_10deg']:.3f}; ATE {metrics['ate_rmse_m']:.4f} m; "
          f"latency p50 {lat['p50']:.1f} ms")
    print(f"report: {paths['report']}")
    return 0
