"""``nre-ros localize``: relocalize image files against a map, print a table, write TUM poses."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from nre_ros.camera import Camera
from nre_ros.datasets import load_depth, load_rgb, write_tum_poses
from nre_ros.errors import InputError
from nre_ros.eval.run_metrics import predicted_sigmas
from nre_ros.pipeline import PipelineConfig, Relocalizer

NAME = 'localize'
HELP = ('relocalize images against a map; prints status, position and yaw in the map frame, '
        'sigma, ms per image; exits 1 when no image localized')
ORDER = 20

# A file name that is a timestamp: Unix seconds with a fraction (TUM: 1305031102.175304) or
# integer nanoseconds (16 or more digits).
_SECONDS = re.compile(r'^\d{9,10}\.\d+$')
_NANOSECONDS = re.compile(r'^\d{16,19}$')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--map', required=True, help='map directory (*.nremap)')
    parser.add_argument('--camera', required=True,
                        help='camera YAML: width, height, fx, fy, cx, cy, distortion[, '
                             'distortion_model], or the file ROS camera_calibration writes')
    parser.add_argument('--config', default=None, help='pipeline YAML (config/pipeline.yaml)')
    parser.add_argument('--depth', nargs='+', default=None, metavar='DEPTH',
                        help='registered depth images, one per image (16-bit PNG, or .npy float '
                             'metres): RGB-D initialization')
    parser.add_argument('--depth-scale', type=float, default=1000.0,
                        help='raw depth units per metre for 16-bit images (default 1000 = mm; '
                             'TUM RGB-D uses 5000)')
    parser.add_argument('--out', default=None,
                        help='write map-frame camera poses (T_map_cam) of localized images in '
                             'the TUM format, stamped from --stamps or, without it, from file '
                             'names that are timestamps (1305031102.175304.png)')
    parser.add_argument('--stamps', default=None, metavar='FILE',
                        help='timestamps for --out: one line per image, "STAMP" in the order '
                             'of the images or "STAMP NAME" (as TUM rgb.txt); # comments')


def image_stamps(images: list[str], stamps_file: str | None) -> list[float]:
    """Timestamps (s) of ``images``: from ``stamps_file`` or from names that are timestamps.

    Raises:
        InputError: a stamp missing or unreadable, or a file name that is not a timestamp
            (``0002.jpg`` is a frame number, not 2 s) without a stamps file.
    """
    if stamps_file is None:
        out = []
        for path in images:
            stem = Path(path).stem
            if _SECONDS.match(stem):
                out.append(float(stem))
            elif _NANOSECONDS.match(stem):
                out.append(int(stem) * 1e-9)
            else:
                raise InputError(f'--out needs a timestamp per image: the name {Path(path).name} '
                                 'is not one (seconds like 1305031102.175304 or nanoseconds); '
                                 'give --stamps FILE')
        return out
    try:
        lines = Path(stamps_file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f'cannot read --stamps {stamps_file}: {exc}') from None
    rows = [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith('#')]
    try:
        values = [float(r[0]) for r in rows]
    except ValueError as exc:
        raise InputError(f'--stamps {stamps_file}: {exc}') from None
    if rows and all(len(r) >= 2 for r in rows):
        by_name = {Path(r[1]).name: v for r, v in zip(rows, values)}
        missing = [Path(p).name for p in images if Path(p).name not in by_name]
        if missing:
            raise InputError(f'--stamps {stamps_file} has no line for {missing[:3]}')
        return [by_name[Path(p).name] for p in images]
    if len(values) != len(images):
        raise InputError(f'--stamps {stamps_file} has {len(values)} stamps for '
                         f'{len(images)} images')
    return values


def base_yaw_deg(T_map_cam: np.ndarray) -> float:
    """Yaw (deg, about map z, counter-clockwise from map x) of the base the camera looks
    forward from: the heading of the optical axis (REP 103: base x = optical z)."""
    forward = T_map_cam[:3, 2]
    return float(np.degrees(np.arctan2(forward[1], forward[0])))


def _failure_line(name: str, reason: str, detail: str, ms: float | None) -> str:
    text = f'{name:<32} failed ({reason}): {detail or "no detail"}'
    return text + (f' [{ms:.0f} ms]' if ms is not None and np.isfinite(ms) else '')


def run(args: argparse.Namespace) -> int:
    if args.depth is not None and len(args.depth) != len(args.images):
        raise InputError(f'--depth needs one file per image: {len(args.depth)} depth files for '
                         f'{len(args.images)} images')
    if args.depth_scale <= 0:
        raise InputError(f'--depth-scale must be > 0, got {args.depth_scale}')
    if args.stamps and not args.out:
        raise InputError('--stamps is only used with --out')
    stamps_all = image_stamps(args.images, args.stamps) if args.out else None
    camera = Camera.from_yaml(args.camera)
    config = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    reloc = Relocalizer.from_config(args.map, config)
    reloc.warmup()
    print(f'{"image":<32} {"status":<10} {"x":>7} {"y":>7} {"z":>7} {"yaw":>6} {"sigma m":>7} '
          f'{"ms":>6}   (map frame {reloc.map_frame_id!r}, yaw of a forward-looking base)')
    stamps, poses = [], []
    for i, path in enumerate(args.images):
        name = Path(path).name
        try:
            depth = None if args.depth is None else load_depth(args.depth[i], args.depth_scale)
            out = reloc.localize(load_rgb(path), camera, depth=depth)
        except InputError as exc:
            print(_failure_line(name, 'bad_input', str(exc), None))
            continue
        ms = out.timings_ms.get('total')
        if not out.ok:
            print(_failure_line(name, out.reason, out.detail, ms))
            continue
        T = reloc.map_T_model.camera_pose_in_map(out.T_cam_world)
        sigma = reloc.map_T_model.scale * predicted_sigmas(out.covariance)[0]   # map units
        print(f'{name:<32} {"localized":<10} {T[0, 3]:7.3f} {T[1, 3]:7.3f} '
              f'{T[2, 3]:7.3f} {base_yaw_deg(T):6.1f} {sigma:7.3f} {ms or float("nan"):6.0f}')
        if stamps_all is not None:
            stamps.append(stamps_all[i])
        poses.append(T)
    if args.out:
        write_tum_poses(args.out, np.array(stamps), np.array(poses).reshape(-1, 4, 4),
                        header='timestamp tx ty tz qx qy qz qw (T_map_cam, nre-ros localize)')
        print(f'wrote {len(poses)} poses to {args.out}')
    if not poses:
        print(f'nre-ros localize: no image localized ({len(args.images)} failed)', file=sys.stderr)
        return 1
    return 0
