"""Command-line options for reading a recording: topics and pose source (build-map, evaluate)."""
from __future__ import annotations

import argparse

from nre_ros.trajectory import DEFAULT_TOLERANCE_S


def add_pose_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--pose-topic T | --pose-tf PARENT CHILD | --poses TUM_FILE`` and their modifiers."""
    g = parser.add_argument_group('poses from a recording')
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument('--pose-topic', default=None, help='PoseStamped, PoseWithCovarianceStamped, '
                     'Odometry or TransformStamped topic (any frame; the bag\'s TF takes it to '
                     'the camera)')
    src.add_argument('--pose-tf', nargs=2, metavar=('PARENT', 'CHILD'), default=None,
                     help='poses from the TF chain PARENT -> CHILD recorded in the bag')
    src.add_argument('--poses', default=None, metavar='TUM_FILE',
                     help='TUM trajectory file "t tx ty tz qx qy qz qw" (body in map, seconds)')
    g.add_argument('--pose-frame', default=None, help='the frame a PoseStamped / TUM pose is of '
                   '(default: the camera optical frame)')
    g.add_argument('--pose-tolerance', type=float, default=DEFAULT_TOLERANCE_S,
                   help='max seconds from an image to its nearest pose (interpolated between '
                   'poses; default %(default)s)')


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    """Topics and keyframe selection of the ``bag`` builder."""
    g = parser.add_argument_group('bag builder')
    g.add_argument('--image-topic', default=None, help='Image or CompressedImage topic')
    g.add_argument('--camera-info-topic', default=None,
                   help='CameraInfo topic (default: the image topic\'s sibling camera_info)')
    g.add_argument('--depth-topic', default=None, help='registered depth (16UC1 mm or 32FC1 m); '
                   'without it the posed images are triangulated')
    g.add_argument('--kf-translation', type=float, default=0.10,
                   help='new keyframe after this many metres (default %(default)s)')
    g.add_argument('--kf-rotation', type=float, default=5.0,
                   help='... or this many degrees (default %(default)s)')
    g.add_argument('--kf-sharpness', type=float, default=0.5,
                   help='skip frames less sharp than this times the recent median (0: off)')
    add_pose_arguments(parser)


def pose_source(args: argparse.Namespace):
    """The PoseSource the options name, or None when none was given."""
    from nre_ros.bagio.poses import PoseSource
    if args.pose_topic is None and args.pose_tf is None and args.poses is None:
        return None
    return PoseSource(topic=args.pose_topic, tf=tuple(args.pose_tf) if args.pose_tf else None,
                      tum_file=args.poses, body_frame=args.pose_frame,
                      tolerance_s=args.pose_tolerance)


def build_bag(args: argparse.Namespace, model, opts):
    """Run the bag builder from the parsed options; returns (map, selection counts)."""
    from nre_ros.errors import InputError
    from nre_ros.maps.bag_builder import BagTopics, build_bag_map
    from nre_ros.maps.keyframes import KeyframePolicy
    if not args.image_topic:
        raise InputError('--builder bag needs --image-topic')
    poses = pose_source(args)
    if poses is None:
        raise InputError('--builder bag needs a pose source: --pose-topic, --pose-tf or --poses')
    topics = BagTopics(args.image_topic, args.camera_info_topic, args.depth_topic)
    policy = KeyframePolicy(args.kf_translation, args.kf_rotation, args.kf_sharpness)
    return build_bag_map(args.source, model, topics, poses, opts, policy, progress=True)


def align(m, args: argparse.Namespace):
    """``--align-to``: the map with ``map_T_model`` fitted to the reference poses (printed)."""
    from pathlib import Path

    from nre_ros.errors import InputError
    from nre_ros.maps.align import align_map, bag_reference_poses, read_reference_poses
    if (Path(args.align_to) / 'metadata.yaml').is_file():           # a rosbag2 directory
        source = pose_source(args)
        if source is None or not args.image_topic:
            raise InputError('--align-to BAG needs --image-topic and a pose source '
                             '(--pose-topic, --pose-tf or --poses)')
        ref = bag_reference_poses(args.align_to, args.image_topic, source)
    else:
        ref = read_reference_poses(args.align_to, args.pose_tolerance)
    m, alignment = align_map(m, ref)
    print(alignment.describe())
    return m


def bag_flags(args: argparse.Namespace) -> dict:
    """The bag options for the map's provenance command line."""
    flags = {'image-topic': args.image_topic, 'camera-info-topic': args.camera_info_topic,
             'depth-topic': args.depth_topic, 'pose-topic': args.pose_topic,
             'pose-tf': ' '.join(args.pose_tf) if args.pose_tf else None, 'poses': args.poses,
             'pose-frame': args.pose_frame}
    if args.builder == 'bag':
        flags.update({'pose-tolerance': args.pose_tolerance, 'kf-translation': args.kf_translation,
                      'kf-rotation': args.kf_rotation, 'kf-sharpness': args.kf_sharpness})
    return flags


def add_ground_truth_arguments(parser: argparse.ArgumentParser) -> None:
    """``--gt-topic T | --gt-tf PARENT CHILD | --gt-poses TUM_FILE`` for evaluate."""
    g = parser.add_argument_group('ground truth (default: exact stamps on /ground_truth)')
    src = g.add_mutually_exclusive_group()
    src.add_argument('--gt-topic', default=None, help='ground-truth pose topic (PoseStamped, '
                     'PoseWithCovarianceStamped, Odometry, TransformStamped; any frame, TF '
                     'takes it to the camera), interpolated at the image stamps')
    src.add_argument('--gt-tf', nargs=2, metavar=('PARENT', 'CHILD'), default=None,
                     help='ground truth from the TF chain PARENT -> CHILD recorded in the bag')
    src.add_argument('--gt-poses', default=None, metavar='TUM_FILE',
                     help='ground truth from a TUM file (body in map, seconds)')
    g.add_argument('--gt-frame', default=None, help='the frame a PoseStamped / TUM ground-truth '
                   'pose is of (default: the camera optical frame)')
    g.add_argument('--gt-tolerance', type=float, default=DEFAULT_TOLERANCE_S,
                   help='max seconds from an image to its nearest ground-truth pose')


def ground_truth_source(args: argparse.Namespace):
    """The PoseSource of the ``--gt-*`` options, or None (use the bag's exact-stamp truth)."""
    from nre_ros.bagio.poses import PoseSource
    if args.gt_topic is None and args.gt_tf is None and args.gt_poses is None:
        return None
    return PoseSource(topic=args.gt_topic, tf=tuple(args.gt_tf) if args.gt_tf else None,
                      tum_file=args.gt_poses, body_frame=args.gt_frame,
                      tolerance_s=args.gt_tolerance)
