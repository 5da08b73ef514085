"""``nre-ros localize``: relocalize image files against a map, print a table, write TUM poses."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from nre_ros.camera import Camera
from nre_ros.datasets import load_depth, load_rgb, write_tum_poses
from nre_ros.errors import InputError
from nre_ros.pipeline import PipelineConfig, Relocalizer

NAME = 'localize'
HELP = 'relocalize images against a map; prints status, position, yaw, sigma, ms per image'
ORDER = 20


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
                        help='write camera-to-world poses of localized images (TUM format; the '
                             'timestamp is the file name when numeric, else the index)')


def _stamp(path: str, i: int) -> float:
    try:
        return float(Path(path).stem)
    except ValueError:
        return float(i)


def run(args: argparse.Namespace) -> int:
    if args.depth is not None and len(args.depth) != len(args.images):
        raise InputError(f'--depth needs one file per image: {len(args.depth)} depth files for '
                         f'{len(args.images)} images')
    if args.depth_scale <= 0:
        raise InputError(f'--depth-scale must be > 0, got {args.depth_scale}')
    camera = Camera.from_yaml(args.camera)
    config = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    reloc = Relocalizer.from_config(args.map, config)
    reloc.warmup()
    print(f'{"image":<32} {"status":<24} {"x":>7} {"y":>7} {"z":>7} {"yaw":>6} {"sigma m":>7} '
          f'{"ms":>6}')
    stamps, poses = [], []
    for i, path in enumerate(args.images):
        try:
            depth = None if args.depth is None else load_depth(args.depth[i], args.depth_scale)
            out = reloc.localize(load_rgb(path), camera, depth=depth)
        except InputError as exc:
            print(f'{Path(path).name:<32} failed: {exc}')
            continue
        ms = out.timings_ms.get('total', float('nan'))
        if not out.ok:
            print(f'{Path(path).name:<32} {"failed: " + out.reason:<24} {"":>37} {ms:6.0f}')
            continue
        T = out.T_world_cam
        yaw = Rotation.from_matrix(T[:3, :3]).as_euler('ZYX', degrees=True)[0]
        sigma = float(np.sqrt(np.trace(out.covariance[:3, :3])))
        print(f'{Path(path).name:<32} {"localized":<24} {T[0, 3]:7.3f} {T[1, 3]:7.3f} '
              f'{T[2, 3]:7.3f} {yaw:6.1f} {sigma:7.3f} {ms:6.0f}')
        stamps.append(_stamp(path, i))
        poses.append(T)
    if args.out:
        write_tum_poses(args.out, np.array(stamps), np.array(poses).reshape(-1, 4, 4),
                        header='timestamp tx ty tz qx qy qz qw (T_world_cam, nre-ros localize)')
        print(f'wrote {len(poses)} poses to {args.out}')
    return 0
