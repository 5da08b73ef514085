"""The bag builder: maps from a recording (rosbag2) with poses from a topic, TF or a TUM file."""
from __future__ import annotations

import numpy as np
import pytest

from nre_ros.bagio.poses import PoseSource
from nre_ros.bagio.reader import Bag, sibling_camera_info_topic
from nre_ros.errors import InputError
from nre_ros.eval import bags
from nre_ros.maps import BuildOptions, build_posed_map, build_rgbd_map
from nre_ros.maps.bag_builder import BagTopics, build_bag_map, select_keyframes
from nre_ros.maps.keyframes import KeyframePolicy, KeyframeSelector

IMAGE, INFO, DEPTH, GT = (bags.TOPIC_IMAGE, bags.TOPIC_CAMERA_INFO, bags.TOPIC_DEPTH,
                          bags.TOPIC_GROUND_TRUTH)
ALL = KeyframePolicy(0, 0, 0)          # every posed image is a keyframe


@pytest.fixture(scope='module')
def model():
    from nre_ros.models import load_model
    return load_model()


def _samples(seq, indices, depth=False):
    return [bags.BagSample(bags.seconds_to_ns(seq[i].timestamp), seq.load_rgb(seq[i]),
                           seq[i].T_world_cam, seq.load_depth(seq[i]) if depth else None)
            for i in indices]


def _tiny_sequence(seq, tmp_path, indices):
    """A TUM folder sharing seq's files, with split_tiny.txt listing the given frames."""
    root = tmp_path / 'seq'
    root.mkdir()
    for name in ('rgb', 'depth', 'camera.yaml', 'poses_T_world_cam.txt', 'associations.txt'):
        (root / name).symlink_to(seq.root / name)
    (root / 'split_tiny.txt').write_text('\n'.join(seq[i].name for i in indices) + '\n')
    return root


def test_sibling_camera_info_topic():
    assert sibling_camera_info_topic('/cam/color/image_raw') == '/cam/color/camera_info'
    assert sibling_camera_info_topic('/cam/color/image_raw/compressed') == \
        '/cam/color/camera_info'
    assert sibling_camera_info_topic('/image') == '/camera_info'


@pytest.mark.parametrize('variant', ['tf_jpeg_sqlite', 'offset_png'])
def test_poses_from_tf_and_offset_topic_reach_the_camera(cabinet, tmp_path, variant):
    """Ground truth through map -> odom -> base_link -> camera (TF), or on a topic stamped
    5 ms after the images, lands on the camera's true pose; compressed images decode."""
    idx = [40, 41, 42, 43, 44]
    path = tmp_path / 'b'
    if variant == 'tf_jpeg_sqlite':
        bags.write_bag(_samples(cabinet, idx), cabinet.camera, path, storage='sqlite3',
                       image_format='jpeg', poses_as='tf')
        source, tol = PoseSource(tf=('map', 'base_link')), 1e-3
    else:
        bags.write_bag(_samples(cabinet, idx), cabinet.camera, path, image_format='png',
                       pose_offset_ns=5_000_000)
        source, tol = PoseSource(topic=GT), 2e-3
    with Bag(path) as bag:
        assert (GT in bag.topics) == (variant != 'tf_jpeg_sqlite')
        sel = select_keyframes(bag, BagTopics(IMAGE + '/compressed'), source, BuildOptions(),
                               ALL)
        assert sel.map_frame == 'map' and sel.camera_frame == bags.FRAME_CAMERA
        assert sel.counts['keyframes'] == len(idx) and sel.counts['no_pose'] == 0
        for k, i in zip(sel.keyframes, idx):
            gt = cabinet[i].T_world_cam
            assert np.abs(k.T_world_cam[:3, 3] - gt[:3, 3]).max() < tol
            rgb = k.load_rgb()
            diff = np.abs(rgb.astype(int) - cabinet.load_rgb(cabinet[i])).mean()
            assert diff < (2.0 if variant == 'tf_jpeg_sqlite' else 1e-9)


def test_images_far_from_any_pose_are_counted_and_skipped(cabinet, tmp_path):
    """Poses every 2nd frame only, tolerance below the frame gap: half the images skipped."""
    idx = list(range(10, 16))
    path = tmp_path / 'b'
    bags.write_bag(_samples(cabinet, idx), cabinet.camera, path, poses_as='tf')
    tum = tmp_path / 'poses.txt'
    from nre_ros.datasets import write_tum_poses
    write_tum_poses(tum, [cabinet[i].timestamp for i in idx[::2]],
                    np.stack([cabinet[i].T_world_cam for i in idx[::2]]))
    with Bag(path) as bag:
        sel = select_keyframes(bag, BagTopics(IMAGE), PoseSource(tum_file=str(tum),
                                                                 tolerance_s=0.1),
                               BuildOptions(), ALL)
    assert sel.counts['no_pose'] == 3 and sel.counts['keyframes'] == 3
    assert [k.name.split('@')[1] for k in sel.keyframes] == \
        [f'{cabinet[i].timestamp:.6f}000' for i in idx[::2]]


def test_keyframes_by_motion_and_sharpness():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (120, 160, 3), np.uint8)
    import cv2
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    sel = KeyframeSelector(KeyframePolicy(min_translation_m=0.1, min_rotation_deg=5))
    T = np.eye(4)
    assert sel.moved_enough(T) and sel.accept(T, sharp)
    T1 = T.copy()
    T1[0, 3] = 0.05
    assert not sel.moved_enough(T1)                             # 5 cm, no rotation
    T1[0, 3] = 0.12
    assert sel.moved_enough(T1) and not sel.accept(T1, blurred)  # far enough, but blurred
    assert sel.blurred == 1 and sel.accept(T1, sharp)


# ----------------------------------------------------------------------------- errors
def _bag(tmp_path, seq, *, info=True, gt_offset_ns=0, encoding='rgb8', depth=False):
    """A 3-frame bag written message by message (to make inconsistent ones)."""
    from rosbags.rosbag2 import Writer
    ts = bags.typestore()
    path = tmp_path / 'bad'
    frames = [seq[i] for i in (0, 1, 2)]
    with Writer(path, version=8) as w:
        ci = w.add_connection(IMAGE, 'sensor_msgs/msg/Image', typestore=ts)
        cc = w.add_connection(INFO, 'sensor_msgs/msg/CameraInfo', typestore=ts) if info else None
        cg = w.add_connection(GT, 'geometry_msgs/msg/PoseStamped', typestore=ts)
        cd = w.add_connection(DEPTH, 'sensor_msgs/msg/Image', typestore=ts) if depth else None
        for f in frames:
            t = bags.seconds_to_ns(f.timestamp)
            rgb = seq.load_rgb(f)
            img = bags._image_msg(ts, t, rgb, 'rgb8')
            img.encoding = encoding
            w.write(ci, t, ts.serialize_cdr(img, ci.msgtype))
            if cc is not None:
                w.write(cc, t, ts.serialize_cdr(bags._camera_info_msg(ts, t, seq.camera),
                                                cc.msgtype))
            if cd is not None:
                d = bags._image_msg(ts, t, seq.load_depth(f), '32FC1')
                d.encoding = 'rgb8'
                w.write(cd, t, ts.serialize_cdr(d, cd.msgtype))
            tg = t + gt_offset_ns
            pose = ts.types['geometry_msgs/msg/PoseStamped'](
                header=bags._header(ts, tg, 'map'), pose=bags._pose_msg(ts, f.T_world_cam))
            w.write(cg, tg, ts.serialize_cdr(pose, cg.msgtype))
    return path


@pytest.mark.parametrize('case, topics, source, match', [
    ('ok', BagTopics('/camera/left/image_raw'), PoseSource(topic=GT),
     'no image topic /camera/left/image_raw.*/camera/color/image_raw'),
    ('ok', BagTopics(IMAGE), PoseSource(topic='/odom'), 'no pose topic /odom'),
    ('ok', BagTopics(IMAGE, depth='/depth'), PoseSource(topic=GT), 'no depth topic /depth'),
    ('no_info', BagTopics(IMAGE), PoseSource(topic=GT),
     'no CameraInfo on /camera/color/camera_info'),
    ('late_poses', BagTopics(IMAGE), PoseSource(topic=GT),
     'pose topic /ground_truth: no pose within 0.05 s of any image on /camera/color/image_raw'),
    ('nv21', BagTopics(IMAGE), PoseSource(topic=GT),
     "image topic /camera/color/image_raw: cannot read.*'nv21'"),
    ('depth_as_rgb', BagTopics(IMAGE, depth=DEPTH), PoseSource(topic=GT),
     "depth topic /camera/aligned_depth_to_color/image_raw: depth encoding.*'rgb8'"),
    ('ok', BagTopics(IMAGE), PoseSource(tf=('map', 'base_link')), "frame 'map' is not in"),
])
def test_inconsistent_bags_stop_with_an_error_naming_the_topic(cabinet, tmp_path, model, case,
                                                               topics, source, match):
    path = _bag(tmp_path, cabinet, info=case != 'no_info',
                gt_offset_ns=100 * 10**9 if case == 'late_poses' else 0,
                encoding='nv21' if case == 'nv21' else 'rgb8',
                depth=case == 'depth_as_rgb')
    opts = BuildOptions(max_points_per_keyframe=64, image_max_size=160)
    with pytest.raises(InputError, match=match):
        build_bag_map(path, model, topics, source, opts, ALL)


def test_failed_build_leaves_no_map(cabinet, tmp_path, capsys):
    from nre_ros.cli import main
    path = _bag(tmp_path, cabinet, gt_offset_ns=100 * 10**9)
    out = tmp_path / 'out.nremap'
    rc = main(['build-map', str(path), str(out), '--builder', 'bag', '--image-topic', IMAGE,
               '--pose-topic', GT])
    assert rc != 0 and 'no pose within' in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob('out.nremap*'))


# ----------------------------------------------------------------------------- same maps
@pytest.mark.parametrize('builder', ['rgbd', pytest.param('posed', marks=pytest.mark.slow)])
def test_bag_maps_equal_the_tum_folder_maps(cabinet, model, tmp_path, builder):
    """A raw-image bag with ground truth on a topic gives the very map the TUM-folder builders
    give from the same frames: with depth (RGB-D builder) and without (triangulation)."""
    idx = [55, 56, 57] if builder == 'rgbd' else [54, 55, 56, 57]
    path = tmp_path / 'b'
    bags.write_bag(_samples(cabinet, idx, depth=True), cabinet.camera, path,
                   depth_encoding='32FC1')
    root = _tiny_sequence(cabinet, tmp_path, idx)
    opts = BuildOptions(max_points_per_keyframe=256, image_max_size=320)
    build = build_rgbd_map if builder == 'rgbd' else build_posed_map
    ref = build(root, model, BuildOptions(split='tiny', max_points_per_keyframe=256,
                                          image_max_size=320))
    m, counts = build_bag_map(path, model, BagTopics(IMAGE, depth=DEPTH if builder == 'rgbd'
                                                     else None),
                              PoseSource(topic=GT), opts, ALL)
    assert counts['keyframes'] == len(idx) and m.metadata.map_frame == 'map'
    assert m.num_points == ref.num_points and m.num_points > 30
    assert np.allclose(m.points_world, ref.points_world, atol=1e-4)   # 32FC1 vs 16-bit
    assert np.allclose(m.kf_T_cam_world, ref.kf_T_cam_world, atol=1e-9)
    assert np.array_equal(m.obs_point, ref.obs_point)


def test_ground_truth_for_evaluation_from_offset_topic_or_tf(cabinet, tmp_path):
    from nre_ros.bagio.poses import ground_truth_by_stamp
    idx = [20, 21, 22, 23]
    path = tmp_path / 'b'
    bags.write_bag(_samples(cabinet, idx), cabinet.camera, path, poses_as='both',
                   pose_offset_ns=-5_000_000)
    for source in (PoseSource(topic=GT), PoseSource(tf=('map', bags.FRAME_CAMERA))):
        truth, frame = ground_truth_by_stamp(path, IMAGE, source)
        assert frame == 'map' and len(truth) == len(idx)
        for i in idx:
            T = truth[bags.seconds_to_ns(cabinet[i].timestamp)]
            assert np.abs(T[:3, 3] - cabinet[i].T_world_cam[:3, 3]).max() < 2e-3
    with pytest.raises(InputError, match='no pose within 0.001 s'):
        ground_truth_by_stamp(path, IMAGE, PoseSource(topic=GT, tolerance_s=1e-3))


def test_read_bag_for_evaluation_with_compressed_images_and_interpolated_truth(cabinet,
                                                                               tmp_path):
    from nre_ros.bagio.poses import ground_truth_by_stamp
    idx = [5, 6, 7]
    path = tmp_path / 'b'
    bags.write_bag(_samples(cabinet, idx), cabinet.camera, path, image_format='png',
                   pose_offset_ns=5_000_000)
    topic = IMAGE + '/compressed'
    exact = list(bags.read_bag(path, image_topic=topic))
    assert all(f.T_world_cam is None for f in exact)      # no GT at the image stamps
    truth, _ = ground_truth_by_stamp(path, topic, PoseSource(topic=GT))
    frames = list(bags.read_bag(path, image_topic=topic, ground_truth=truth))
    assert len(frames) == 3 and all(f.camera is not None for f in frames)
    for f, i in zip(frames, idx):
        assert np.array_equal(f.rgb, cabinet.load_rgb(cabinet[i]))          # png: lossless
        assert np.abs(f.T_world_cam[:3, 3] - cabinet[i].T_world_cam[:3, 3]).max() < 2e-3


def test_evaluate_with_compressed_images_and_ground_truth_from_tf(cabinet, tmp_path, capsys):
    """nre-ros evaluate (oracle localizer) on a bag whose ground truth is only in TF and whose
    images are JPEG gives the same metrics as on the same frames with /ground_truth."""
    import json

    from nre_ros.cli import main
    idx = list(range(20, 26))
    runs = {}
    for name, kw, extra in (('topic', {}, []),
                            ('tf', dict(image_format='jpeg', poses_as='tf'),
                             ['--image-topic', IMAGE + '/compressed', '--gt-tf', 'map',
                              'base_link'])):
        bag = tmp_path / name
        bags.write_bag(_samples(cabinet, idx), cabinet.camera, bag, **kw)
        with Bag(bag) as b:
            assert (GT in b.topics) == (name == 'topic')
        out = tmp_path / f'eval_{name}'
        assert main(['evaluate', str(bag), '--oracle', '0', '0', '--out', str(out),
                     '--no-progress', *extra]) == 0
        runs[name] = json.loads((out / 'summary.json').read_text())['metrics']
    for key in ('num_frames', 'num_fixes', 'recall_25cm_2deg', 'ate_rmse_m'):
        assert runs['tf'][key] == pytest.approx(runs['topic'][key], abs=1e-6), key
    assert runs['tf']['num_frames'] == len(idx) and runs['tf']['num_fixes'] >= 3


def test_map_save_that_fails_leaves_nothing(tmp_path):
    """A save that fails half-way (unserializable provenance) leaves no map and no temp dir."""
    from dataclasses import replace
    from pathlib import Path

    from nre_ros.maps import load_map
    demo = load_map(Path(__file__).resolve().parents[1] / 'maps/demo/fr1_rpy.nremap')
    bad = replace(demo, metadata=replace(demo.metadata, provenance={'x': object()}))
    with pytest.raises(TypeError):
        bad.save(tmp_path / 'm.nremap')
    assert list(tmp_path.iterdir()) == []
