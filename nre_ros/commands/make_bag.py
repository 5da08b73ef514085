"""``nre-ros make-bag``: a TUM-layout sequence -> ROS 2 bag (see nre_ros/eval/bags.py)."""
from __future__ import annotations

import argparse

from nre_ros.eval import bags

NAME = 'make-bag'
HELP = 'write a TUM-layout posed sequence to a ROS 2 bag (images, camera_info, ground truth, TF)'
ORDER = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('sequence', metavar='SEQ', help='folder in the TUM layout (camera.yaml, '
                        'rgb.txt or associations.txt, poses_T_world_cam.txt)')
    parser.add_argument('out', metavar='OUT', help='bag directory to create (must not exist)')
    parser.add_argument('--storage', choices=bags.STORAGES, default='mcap')
    parser.add_argument('--every', type=int, default=1, help='keep every N-th frame')
    parser.add_argument('--split', default=None, help='only frames of split_<NAME>.txt')
    parser.add_argument('--depth', nargs='?', const='32FC1', default=None,
                        choices=bags.DEPTH_ENCODINGS,
                        help='add registered depth (32FC1 metres, default, or 16UC1 mm)')
    parser.add_argument('--odom-drift', nargs=2, type=float,
                        metavar=('SIGMA_T_M', 'SIGMA_YAW_DEG'),
                        default=(bags.OdomDrift.sigma_t_m, bags.OdomDrift.sigma_yaw_deg),
                        help='random-walk drift of the simulated odom->base_link per sqrt(s) '
                        '(default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the odometry drift')
    parser.add_argument('--image-format', choices=bags.IMAGE_FORMATS, default='raw',
                        help='raw sensor_msgs/Image, or CompressedImage (jpeg / png) on '
                        '<image topic>/compressed')
    parser.add_argument('--poses-as', choices=bags.POSES_AS, default='topic',
                        help='ground truth as PoseStamped on /ground_truth, as the TF map -> odom '
                        '(chains to the camera), or both')
    parser.add_argument('--pose-offset-ms', type=float, default=0.0,
                        help='stamp the ground-truth messages this much after their images')
    parser.add_argument('--distro', choices=('humble', 'jazzy'), default='humble',
                        help='message definitions to record (default humble; both replay there)')


def run(args: argparse.Namespace) -> int:
    from nre_ros.datasets import TumSequence
    seq = TumSequence(args.sequence)
    n = bags.write_sequence_bag(seq, args.out, every=args.every, split=args.split,
                                depth_encoding=args.depth, storage=args.storage,
                                drift=bags.OdomDrift(*args.odom_drift), seed=args.seed,
                                distro=args.distro, image_format=args.image_format,
                                poses_as=args.poses_as,
                                pose_offset_ns=int(round(args.pose_offset_ms * 1e6)))
    print(f'wrote {n} frames to {args.out} ({args.storage})')
    return 0
