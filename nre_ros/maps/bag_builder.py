"""Builder (e): a robot's own recording (rosbag2) -> map.

Pass 1 reads the header stamps of the image (and depth) topic, pass 2 streams the images in
order: a frame is a candidate when it has a pose (``nre_ros.bagio.poses``, interpolated at its
stamp), depth when a depth topic is given, and moved enough since the last keyframe; candidates
are decoded and kept when sharp enough (``nre_ros.maps.keyframes``). The keyframes are then
mapped by the RGB-D builder (depth topic) or by triangulation (images alone); each keyframe's
image is fetched again from the bag when the builder needs it, so memory stays bounded.
The map's ``map_frame`` is the pose source's frame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nre_ros.bagio.poses import CameraPoses, PoseSource, camera_poses
from nre_ros.bagio.reader import (IMAGE_TYPES, Bag, decode_camera_info, decode_color,
                                  decode_depth, sibling_camera_info_topic)
from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.maps.build_common import BuildOptions, PosedImage, provenance
from nre_ros.maps.format import Map
from nre_ros.maps.keyframes import KeyframePolicy, KeyframeSelector
from nre_ros.models.base import FeatureModel

logger = logging.getLogger(__name__)

DEPTH_TOLERANCE_S = 0.02      # a depth image pairs with the colour image nearest in stamp


@dataclass(frozen=True)
class BagTopics:
    """Topics to read; ``camera_info`` defaults to the image topic's sibling ``camera_info``."""

    image: str
    camera_info: str | None = None
    depth: str | None = None

    @property
    def info(self) -> str:
        return self.camera_info or sibling_camera_info_topic(self.image)


@dataclass
class BagSelection:
    """The keyframes chosen from a bag and why the other images were left out."""

    keyframes: list[PosedImage]
    map_frame: str
    camera_frame: str
    counts: dict[str, int] = field(default_factory=dict)


def build_bag_map(bag_path: str | Path, model: FeatureModel, topics: BagTopics,
                  poses: PoseSource, opts: BuildOptions = BuildOptions(),
                  policy: KeyframePolicy = KeyframePolicy(), progress: bool = False
                  ) -> tuple[Map, dict[str, int]]:
    """Build a map from a bag; returns it and the selection counts (for the summary)."""
    from nre_ros.maps.rgbd import rgbd_map_from_images
    from nre_ros.maps.triangulate import posed_map_from_images
    with Bag(bag_path) as bag:
        sel = select_keyframes(bag, topics, poses, opts, policy, progress)
        prov = provenance('bag', bag_path, opts, topics=vars(topics), poses=vars(poses),
                          keyframe_policy=vars(policy), selection=sel.counts,
                          camera_frame=sel.camera_frame)
        if topics.depth:
            m = rgbd_map_from_images(sel.keyframes, model, opts, prov, progress,
                                     map_frame=sel.map_frame)
        else:
            m = posed_map_from_images(sel.keyframes, model, opts, prov, progress,
                                      map_frame=sel.map_frame)
    return m, sel.counts


def select_keyframes(bag: Bag, topics: BagTopics, poses: PoseSource, opts: BuildOptions,
                     policy: KeyframePolicy, progress: bool = False) -> BagSelection:
    """Choose the keyframes of ``bag`` (see the module docstring); InputError naming the topic
    when the bag cannot give any."""
    bag.require(topics.image, 'image', IMAGE_TYPES)
    camera, info_frame = _camera(bag, topics)
    if topics.depth:
        bag.require(topics.depth, 'depth', ('sensor_msgs/msg/Image',))
    stamps, logs, frame_id = _image_stamps(bag, topics.image)
    camera_frame = frame_id or info_frame
    if not camera_frame:
        raise InputError(f'image topic {topics.image} and camera info topic {topics.info} '
                         'have no header.frame_id: cannot place the camera in the TF tree')
    cam_poses = camera_poses(bag, poses, camera_frame)
    T_map_cam, has_pose = cam_poses.at(stamps)
    counts = {'images': len(stamps), 'no_pose': int(np.sum(~has_pose))}
    if not np.any(has_pose):
        _no_overlap(bag, topics, cam_poses, stamps)
    if counts['no_pose']:
        logger.warning('%d of %d images on %s have no pose within %.3f s (%s): skipped',
                       counts['no_pose'], len(stamps), topics.image, poses.tolerance_s,
                       poses.describe())
    depth_log = np.full(len(stamps), -1, np.int64)
    if topics.depth:
        depth_log = _pair_depth(bag, topics.depth, stamps)
        counts['no_depth'] = int(np.sum(has_pose & (depth_log < 0)))
        if counts['no_depth'] == int(np.sum(has_pose)):
            raise InputError(f'depth topic {topics.depth}: no depth image within '
                             f'{DEPTH_TOLERANCE_S} s of a posed image on {topics.image}')
    eligible = has_pose & ((depth_log >= 0) | (not topics.depth))
    eligible &= np.arange(len(stamps)) % opts.keyframe_step == 0
    selector = KeyframeSelector(policy)
    chosen = []
    bar = tqdm(total=int(eligible.sum()), desc='keyframes', unit='img', disable=not progress)
    candidates = 0
    for i, m in enumerate(bag.messages([topics.image])):
        if not eligible[i]:
            continue
        bar.update(1)
        if not selector.moved_enough(T_map_cam[i]):
            continue
        candidates += 1
        rgb = decode_color(m)
        _check_size(rgb, camera, topics)
        if selector.accept(T_map_cam[i], rgb):
            chosen.append(i)
            bar.set_postfix(keyframes=len(chosen), refresh=False)
    bar.close()
    counts.update(moved=candidates, blurred=selector.blurred)
    if opts.max_keyframes and len(chosen) > opts.max_keyframes:
        keep = np.round(np.linspace(0, len(chosen) - 1, opts.max_keyframes)).astype(int)
        chosen = [chosen[k] for k in keep]
    counts['keyframes'] = len(chosen)
    if not chosen:
        raise InputError(f'image topic {topics.image}: no keyframe selected '
                         f'({counts})')
    keyframes = [PosedImage(
        name=f'{topics.image}@{stamps[i] // 1_000_000_000}.{stamps[i] % 1_000_000_000:09d}',
        camera=camera, T_world_cam=T_map_cam[i],
        load_rgb=lambda i=i: decode_color(bag.message_at(topics.image, logs[i], stamps[i])),
        load_depth=(lambda i=i: decode_depth(bag.message_at(topics.depth, depth_log[i])))
        if topics.depth else None) for i in chosen]
    logger.info('bag %s: %s', bag.path, counts)
    return BagSelection(keyframes, cam_poses.map_frame, camera_frame, counts)


def _camera(bag: Bag, topics: BagTopics) -> tuple[Camera, str]:
    """The first CameraInfo of the info topic and its frame id."""
    if topics.info not in bag.connections:
        raise InputError(f'bag {bag.path} has no CameraInfo on {topics.info} (the camera info '
                         f'topic of {topics.image}); give --camera-info-topic; topics: '
                         f'{", ".join(sorted(bag.topics))}')
    bag.require(topics.info, 'camera info', ('sensor_msgs/msg/CameraInfo',))
    for m in bag.messages([topics.info]):
        return decode_camera_info(m), m.msg.header.frame_id.lstrip('/')
    raise InputError(f'camera info topic {topics.info} has no messages')


def _image_stamps(bag: Bag, topic: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Header stamps (N,) and receive times (N,) of the image topic, and its frame id."""
    stamps, logs, frames = [], [], set()
    for m in bag.messages([topic]):
        stamps.append(m.stamp_ns)
        logs.append(m.log_ns)
        frames.add(m.msg.header.frame_id.lstrip('/'))
    if len(frames) > 1:
        raise InputError(f'image topic {topic} mixes frame ids {sorted(frames)}')
    return np.array(stamps, np.int64), np.array(logs, np.int64), frames.pop()


def _pair_depth(bag: Bag, topic: str, stamps: np.ndarray) -> np.ndarray:
    """(N,) receive time of the depth image nearest each image stamp (-1 when none close)."""
    d_stamps, d_logs = [], []
    for m in bag.messages([topic]):
        d_stamps.append(m.stamp_ns)
        d_logs.append(m.log_ns)
    d_stamps, d_logs = np.array(d_stamps, np.int64), np.array(d_logs, np.int64)
    order = np.argsort(d_stamps)
    d_stamps, d_logs = d_stamps[order], d_logs[order]
    j = np.clip(np.searchsorted(d_stamps, stamps), 1, len(d_stamps) - 1) if len(d_stamps) > 1 \
        else np.zeros(len(stamps), int)
    lo = np.maximum(j - 1, 0)
    best = np.where(np.abs(d_stamps[lo] - stamps) <= np.abs(d_stamps[j] - stamps), lo, j)
    close = np.abs(d_stamps[best] - stamps) <= DEPTH_TOLERANCE_S * 1e9
    return np.where(close, d_logs[best], -1)


def _check_size(rgb: np.ndarray, camera: Camera, topics: BagTopics) -> None:
    if rgb.shape[:2] != (camera.height, camera.width):
        raise InputError(f'image topic {topics.image} has {rgb.shape[1]}x{rgb.shape[0]} images '
                         f'but camera info {topics.info} says {camera.width}x{camera.height}')


def _no_overlap(bag: Bag, topics: BagTopics, cam_poses: CameraPoses, stamps: np.ndarray):
    a, b = cam_poses.span_s()
    raise InputError(
        f'{cam_poses.source.describe()}: no pose within {cam_poses.source.tolerance_s} s of any '
        f'image on {topics.image} (poses span {a:.3f} .. {b:.3f} s, images '
        f'{stamps.min() * 1e-9:.3f} .. {stamps.max() * 1e-9:.3f} s)')

