"""``nre-ros build-map``: build a map from posed RGB-D, posed RGB, a COLMAP model or images."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from nre_ros.commands import _bag_options
from nre_ros.errors import InputError
from nre_ros.maps.build_common import BuildOptions
from nre_ros.maps.format import METADATA_FILE
from nre_ros.maps.stats import format_summary, map_summary
from nre_ros.precision import PRECISIONS

NAME = 'build-map'
HELP = ('build a map (rgbd: posed RGB-D; posed: posed RGB; colmap: COLMAP model; sfm: images; '
        'bag: a rosbag2 recording with poses)')
ORDER = 10
BUILDERS = ('rgbd', 'posed', 'colmap', 'sfm', 'bag')
DEFAULTS = BuildOptions()           # the options' defaults are stated once, there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('source', help='sequence folder (TUM layout) for rgbd/posed, image '
                        'folder for colmap/sfm, rosbag2 for bag')
    parser.add_argument('output', help='map directory to write, e.g. maps/lab.nremap (must not '
                        'exist unless --force)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite an existing map directory (never another folder)')
    parser.add_argument('--builder', choices=BUILDERS, default='rgbd')
    parser.add_argument('--model', default=None,
                        help='feature model (default: nre_ros.models.DEFAULT_MODEL)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', choices=PRECISIONS, default='auto',
                        help='network precision: auto = bf16 on a CPU with bf16 units, else fp32 '
                             '(maps work with queries of either precision)')
    parser.add_argument('--split', default=None, help='use split_<SPLIT>.txt, e.g. map')
    parser.add_argument('--step', type=int, default=DEFAULTS.keyframe_step,
                        help='keep every n-th frame')
    parser.add_argument('--max-keyframes', type=int, default=None)
    parser.add_argument('--max-points', type=int, default=DEFAULTS.max_points_per_keyframe,
                        help='max keypoints (observations) per keyframe')
    parser.add_argument('--keypoints', choices=('score', 'grid'), default=DEFAULTS.keypoint_mode,
                        help='keep the best NMS peaks, or the best per 32 px grid cell')
    parser.add_argument('--max-size', type=int, default=None,
                        help='resize images so the longer side is at most this')
    parser.add_argument('--float32', action='store_true', help='store float32 descriptors')
    parser.add_argument('--no-tracking-level', action='store_true',
                        help='do not store the tracking level (a model with one, e.g. xfeat-ms, '
                        'also stores xfeat-ms-head\'s fine descriptors so that tracking runs '
                        'one network pass; without it tracking runs the fine network)')
    parser.add_argument('--colmap-model', default=None,
                        help='colmap builder: folder of the COLMAP model (text or binary)')
    parser.add_argument('--exclude', nargs='*', default=(),
                        help='colmap/sfm builders: image names to leave out (held-out queries)')
    parser.add_argument('--work-dir', default=None, help='sfm builder: where SfM files go')
    parser.add_argument('--align-to', default=None, metavar='POSES',
                        help='fit a similarity (Umeyama on camera centres) to these poses of the '
                        'same images and store it as map_T_model: TUM file (times in the '
                        'image names), "name tx ty tz qx qy qz qw" file, TUM folder, or a bag '
                        'with --image-topic and a pose source')
    _bag_options.add_bag_arguments(parser)


def check_output(path: str | Path, force: bool) -> None:
    """InputError unless ``path`` is free, or ``force`` and it holds an nre_ros map (a map is
    replaced as a whole folder: another folder is never deleted)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise InputError(f'{path} exists; pass --force to overwrite it')
    if path.is_symlink() or not path.is_dir() or not (path / METADATA_FILE).is_file():
        raise InputError(f'{path} exists and is not an nre_ros map folder (no {METADATA_FILE}); '
                         'refusing to replace it even with --force')


def run(args: argparse.Namespace) -> int:
    check_output(args.output, args.force)
    from nre_ros import maps
    opts = BuildOptions(split=args.split, keyframe_step=args.step,
                        max_keyframes=args.max_keyframes, max_points_per_keyframe=args.max_points,
                        keypoint_mode=args.keypoints, image_max_size=args.max_size,
                        descriptor_dtype='float32' if args.float32 else 'float16')
    t0 = time.perf_counter()
    model = feature_model(args.model, args.device, args.precision,
                          tracking_level=not args.no_tracking_level)
    if args.builder == 'rgbd':
        m = maps.build_rgbd_map(args.source, model, opts, progress=True)
    elif args.builder == 'posed':
        m = maps.build_posed_map(args.source, model, opts, progress=True)
    elif args.builder == 'colmap':
        m = maps.build_colmap_map(args.colmap_model, args.source, model, opts,
                                  exclude=args.exclude, progress=True)
    elif args.builder == 'bag':
        m, counts = _bag_options.build_bag(args, model, opts)
        print('bag: ' + ', '.join(f'{k} {v}' for k, v in counts.items()))
    else:
        m = maps.build_sfm_map(args.source, model, opts, exclude=args.exclude,
                               work_dir=args.work_dir, progress=True)
    if args.align_to:
        m = _bag_options.align(m, args)
    m = maps.with_command(m, command_line(args))
    path = m.save(args.output)
    s = map_summary(m, path)
    print(format_summary({k: s[k] for k in ('keyframes', 'points', 'observations',
                                            'track_length_mean', 'reproj_err_median_px',
                                            'size_mb')}))
    print(f'wrote {path} ({s["keyframes"]} keyframes, {s["points"]} points, '
          f'{s["size_mb"]:.2f} MB) in {time.perf_counter() - t0:.1f} s')
    return 0


def feature_model(name: str | None, device: str, precision: str = 'auto',
                  tracking_level: bool = True):
    """The networks the map is built with: the relocalizer's own backend, precision and threads
    (``PipelineConfig`` defaults: torch bf16 on a CPU with bf16 units, else ONNX Runtime on
    CPU; torch on CUDA), so building runs the product's fastest path. With ``tracking_level``
    and a model that has one (``models.TRACKING_MODELS``), a ``WithTrackingLevel``."""
    from nre_ros.models import DEFAULT_MODEL, TRACKING_MODELS, WithTrackingLevel
    from nre_ros.pipeline import PipelineConfig, load_configured_model
    from nre_ros.threads import apply_threads
    config = PipelineConfig(device=device, precision=precision)
    apply_threads(config.num_threads)
    name = name or DEFAULT_MODEL
    model = load_configured_model(name, config)
    if tracking_level and name in TRACKING_MODELS:
        model = WithTrackingLevel(model, load_configured_model(TRACKING_MODELS[name], config))
    return model


def command_line(args: argparse.Namespace) -> str:
    """The equivalent command line, for the map's provenance."""
    flags = {'builder': args.builder, 'model': args.model, 'split': args.split,
             'step': args.step, 'max-keyframes': args.max_keyframes,
             'max-points': args.max_points, 'keypoints': args.keypoints,
             'max-size': args.max_size, 'colmap-model': args.colmap_model,
             'align-to': args.align_to,
             **_bag_options.bag_flags(args)}
    parts = ['nre-ros', NAME, str(args.source), str(args.output)]
    parts += [f'--{k} {v}' for k, v in flags.items() if v is not None]
    parts += ['--float32'] * bool(args.float32)
    parts += ['--no-tracking-level'] * bool(args.no_tracking_level)
    parts += [f'--exclude {" ".join(args.exclude)}'] * bool(args.exclude)
    return ' '.join(parts)
