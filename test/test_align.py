"""--align-to: a similarity fitted on camera centres and orientations, stored as map_T_model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nre_ros.errors import InputError
from nre_ros.geometry import Sim3, invert, make_transform, pose_to_tum, quat_to_matrix, so3_exp
from nre_ros.maps.align import read_reference_poses, umeyama


MOVE = Sim3(so3_exp(np.array([0.3, -1.2, 0.5])), np.array([12.0, -3.5, 40.0]), 0.0731)


def _reference(root):
    """name -> T_world_cam of the Sacre-Coeur reference model (COLMAP T_cam_world, qw first)."""
    out = {}
    for line in (root / 'reference_sfm_pycolmap' / 'poses_T_cam_world.txt').read_text() \
            .splitlines():
        tok = line.split()
        if not tok or tok[0].startswith('#'):
            continue
        qw, qx, qy, qz, tx, ty, tz = (float(v) for v in tok[1:8])
        out[tok[0]] = invert(make_transform(quat_to_matrix([qx, qy, qz, qw]), [tx, ty, tz]))
    return out


def _moved(T_world_cam: np.ndarray, sim: Sim3) -> np.ndarray:
    R = np.asarray(sim.rotation)
    return make_transform(R @ T_world_cam[:3, :3], sim.scale * R @ T_world_cam[:3, 3]
                          + sim.translation)


def _write_named(path, poses: dict) -> None:
    path.write_text(''.join(f'{n} ' + ' '.join(f'{v:.12g}' for v in pose_to_tum(T)) + '\n'
                            for n, T in poses.items()))


def test_umeyama_recovers_a_known_similarity_and_rejects_degenerate_input():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    dst = MOVE.scale * src @ MOVE.rotation.T + MOVE.translation
    sim = umeyama(src, dst)
    assert np.isclose(sim.scale, MOVE.scale) and np.allclose(sim.rotation, MOVE.rotation)
    assert np.allclose(sim.translation, MOVE.translation)
    with pytest.raises(InputError, match='degenerate'):
        umeyama(np.outer(np.arange(5.0), [1, 2, 3]), np.outer(np.arange(5.0), [1, 2, 3]))


def test_align_to_recovers_the_sacre_coeur_model_moved_by_a_known_similarity(tmp_path, capsys):
    """COLMAP map of the reference model; reference poses moved by MOVE: --align-to finds MOVE
    (residual printed, ~0), stored as map_T_model, the map loads with it."""
    pytest.importorskip('pycolmap')
    from conftest import shared_dataset

    from nre_ros.cli import main
    from nre_ros.maps import load_map
    root = shared_dataset('sfm_sacre_coeur_hloc')
    poses = tmp_path / 'moved.txt'
    _write_named(poses, {n: _moved(T, MOVE) for n, T in _reference(root).items()})
    out = tmp_path / 'sc.nremap'
    assert main(['build-map', str(root / 'images'), str(out), '--builder', 'colmap',
                 '--colmap-model', str(root / 'reference_sfm_pycolmap'), '--max-keyframes', '4',
                 '--max-size', '240', '--max-points', '100', '--align-to', str(poses)]) == 0
    printed = capsys.readouterr().out
    assert 'aligned on 4 keyframes: scale 0.0731' in printed and 'residual RMS 0.0000 m' in printed
    sim = load_map(out).metadata.map_T_model
    assert np.isclose(sim.scale, MOVE.scale, rtol=1e-6)
    assert np.allclose(sim.rotation, MOVE.rotation, atol=1e-5)          # text-file precision
    assert np.allclose(sim.translation, MOVE.translation, atol=1e-4)


def test_reference_poses_match_by_name_time_or_folder(tmp_path, cabinet):
    tum = tmp_path / 'gt.txt'
    from nre_ros.datasets import write_tum_poses
    frames = cabinet.frames[:5]
    write_tum_poses(tum, [f.timestamp + 0.004 for f in frames],
                    np.stack([f.T_world_cam for f in frames]))
    ref = read_reference_poses(tum, tolerance_s=0.01)
    names = [f'/cam/image_raw@{f.timestamp:.6f}000' for f in frames] + ['rgb/none.png']
    centres, has = ref.centres_for(names)
    assert has.tolist() == [True] * 5 + [False]
    assert np.allclose(centres[:5], [f.T_world_cam[:3, 3] for f in frames], atol=0.02)
    folder = read_reference_poses(cabinet.root)
    centres, has = folder.centres_for([frames[2].name, 'x/' + frames[3].name.split('/')[1]])
    assert has.all() and np.allclose(centres[0], frames[2].T_world_cam[:3, 3])


def test_units_warning_only_for_unaligned_non_metric_maps():
    from dataclasses import replace
    from pathlib import Path

    from nre_ros.maps import load_map
    from nre_ros.maps.align import units_warning
    demo = load_map(Path(__file__).resolve().parents[1] / 'maps/demo/fr1_rpy.nremap')
    assert units_warning(demo) is None
    sfm = replace(demo, metadata=replace(demo.metadata, units='sfm'))
    assert 'not metres' in units_warning(sfm)
    assert units_warning(replace(sfm, metadata=replace(sfm.metadata, map_T_model=MOVE))) is None


def test_align_to_bag_poses_matches_keyframes_by_stamp(cabinet, tmp_path):
    """Reference poses read from a bag (GT topic), keyframes named by their stamps: the
    similarity that moved the keyframe centres is found again."""
    from nre_ros.bagio.poses import PoseSource
    from nre_ros.eval import bags
    from nre_ros.maps.align import ReferencePoses, bag_reference_poses, umeyama
    idx = list(range(30, 36))
    path = tmp_path / 'b'
    bags.write_bag([bags.BagSample(bags.seconds_to_ns(cabinet[i].timestamp),
                                   cabinet.load_rgb(cabinet[i]), cabinet[i].T_world_cam)
                    for i in idx], cabinet.camera, path, pose_offset_ns=3_000_000)
    ref = bag_reference_poses(path, bags.TOPIC_IMAGE, PoseSource(topic=bags.TOPIC_GROUND_TRUTH))
    assert isinstance(ref, ReferencePoses)
    names = [f'{bags.TOPIC_IMAGE}@{cabinet[i].timestamp:.6f}000' for i in idx]
    target, has = ref.centres_for(names)
    assert has.all()
    model = (np.stack([cabinet[i].T_world_cam[:3, 3] for i in idx]) - MOVE.translation) \
        @ MOVE.rotation / MOVE.scale                           # centres in a "model" frame
    sim = umeyama(model, target)
    assert np.isclose(sim.scale, MOVE.scale, rtol=1e-2)


@pytest.mark.slow
def test_sfm_map_of_tum_images_aligned_to_ground_truth_localizes_in_metres(fr1_rpy, tmp_path):
    """16 fr1_rpy map images -> pycolmap SfM map (arbitrary gauge) -> --align-to the TUM
    folder: the demo queries localize in the metric map frame (map_T_model applied)."""
    pytest.importorskip('pycolmap')
    import shutil

    from nre_ros.datasets import TumSequence
    from nre_ros.geometry import pose_error
    from nre_ros.maps import BuildOptions, build_sfm_map
    from nre_ros.maps.align import align_map, read_reference_poses
    from nre_ros.models import load_model
    from nre_ros.pipeline import Relocalizer
    frames = fr1_rpy.split('map')[::11]
    images = tmp_path / 'images'
    images.mkdir()
    for f in frames:
        shutil.copy(f.rgb_path, images)
    model = load_model()
    m = build_sfm_map(images, model, BuildOptions(max_points_per_keyframe=300))
    assert m.metadata.units == 'sfm' and m.num_keyframes >= 12
    m, al = align_map(m, read_reference_poses(fr1_rpy.root))
    assert al.rms_m < 0.05 and al.rotation_rms_deg < 3.0    # measured 2.8 cm, 1.8 deg
    reloc = Relocalizer(m, model)
    queries = TumSequence(Path(__file__).resolve().parents[1] / 'maps/demo/queries')
    good = 0
    for f in queries.frames:
        out = reloc.localize(queries.load_rgb(f), queries.camera)
        if out.ok:
            T_map_cam = m.metadata.map_T_model.camera_pose_in_map(out.T_cam_world)
            dt, dr = pose_error(invert(T_map_cam), invert(f.T_world_cam))
            good += int(dt < 0.1 and dr < 5.0)
    assert good >= 5                                        # measured 7 of 8 (one no fix)
