"""``nre-ros demo``: relocalize the shipped demo queries against the shipped demo map."""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial.transform import Rotation

from nre_ros.datasets import TumSequence
from nre_ros.paths import shared_file

NAME = 'demo'
HELP = 'relocalize the shipped demo images against the shipped demo map and print a table'
ORDER = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--queries', default=None,
                        help='query folder in the TUM layout (default: the shipped demo queries)')


def run(args: argparse.Namespace) -> int:
    root = args.queries or shared_file('maps/demo/queries')
    t0 = time.perf_counter()
    seq = TumSequence(root)
    print(f'demo queries: {len(seq)} images from {root}')
    print(f'camera: {seq.camera.width}x{seq.camera.height} fx={seq.camera.fx:.1f} '
          f'fy={seq.camera.fy:.1f} distortion={np.round(seq.camera.dist, 3).tolist()}')
    print(f'{"image":<28} {"size":>9} {"gt x":>7} {"gt y":>7} {"gt z":>7} {"gt yaw":>7}')
    for frame in seq.frames:
        rgb = seq.load_rgb(frame)
        T = frame.T_world_cam
        yaw = Rotation.from_matrix(T[:3, :3]).as_euler('ZYX', degrees=True)[0]
        print(f'{frame.name:<28} {rgb.shape[1]:>4}x{rgb.shape[0]:<4} {T[0, 3]:7.3f} '
              f'{T[1, 3]:7.3f} {T[2, 3]:7.3f} {yaw:7.1f}')
    print(f'loaded in {1e3 * (time.perf_counter() - t0):.0f} ms')
    print('relocalization: not available yet (the solver, networks, map and pipeline are still '
          'being built); no poses are estimated, none are shown.')
    return 0
