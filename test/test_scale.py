"""Queries are brought to the map's pixel scale (focal length) exactly."""
from __future__ import annotations

import cv2
import numpy as np

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence
from nre_ros.geometry import invert, pose_error
from nre_ros.paths import shared_file
from nre_ros.preprocess import PreparedImage, match_focal


def test_match_focal_undoes_a_half_resolution_exactly():
    full = Camera.from_params(640, 480, 517.3, 516.5, 318.6, 255.3)
    half = full.resized(320, 240)
    prep = PreparedImage(np.zeros((240, 320, 3), np.uint8), half, np.eye(3))
    out = match_focal(prep, float(np.sqrt(full.fx * full.fy)), 0.15, 2.5)
    assert out.image.shape == (480, 640, 3)
    assert np.allclose(out.camera.K, full.K, atol=1e-9)
    assert match_focal(prep, half.fx * 1.1, 0.15, 2.5) is prep     # within tolerance: as is
    capped = match_focal(prep, half.fx * 10, 0.15, 2.5)
    assert capped.image.shape == (600, 800, 3)


def test_half_resolution_queries_localize_as_well(reloc):
    seq = TumSequence(shared_file('maps/demo/queries'))
    cam = seq.camera.resized(320, 240)
    # frame 2 is left out: its geometry fits a focal length 1.2 x the calibrated one at any
    # resolution (pose 1.9-2.5 deg off), which the intrinsics check refuses
    for frame in [seq.frames[i] for i in (0, 1, 3, 4)]:
        img = cv2.resize(seq.load_rgb(frame), (320, 240), interpolation=cv2.INTER_AREA)
        out = reloc.localize(img, cam)
        assert out.ok, out
        dt, dr = pose_error(out.T_cam_world, invert(frame.T_world_cam))
        assert dt < 0.05 and dr < 2.0, (frame.name, dt, dr)


def test_rolled_camera_is_tracked_without_rotation_search(reloc):
    """A camera mounted upside down: with a prior (e.g. the previous fix) the roll is known, the
    image is turned once and tracked (no MSAC, no search over the four rotations)."""
    seq = TumSequence(shared_file('maps/demo/queries'))
    frame, cam = seq.frames[4], seq.camera
    img = np.ascontiguousarray(np.rot90(seq.load_rgb(frame), 2))
    K = cam.K.copy()
    K[0, 2], K[1, 2] = cam.width - 1 - cam.cx, cam.height - 1 - cam.cy
    rolled = Camera(cam.width, cam.height, K)
    T_gt = np.diag([-1.0, -1.0, 1.0, 1.0]) @ invert(frame.T_world_cam)
    T_prior = T_gt.copy()
    T_prior[:3, 3] += [0.03, -0.02, 0.02]
    from nre_ros.pipeline import Prior
    out = reloc.localize(img, rolled, prior=Prior(T_prior))
    assert out.ok and out.info['mode'] == 'tracking' and out.info['quarter_turns'] == 2
    assert 'msac' not in out.timings_ms
    dt, dr = pose_error(out.T_cam_world, T_gt)
    assert dt < 0.05 and dr < 2.0


def test_sideways_camera_is_turned_upright_by_the_global_search(reloc):
    """Demo frame 6 turned a quarter turn: the image as given fits the map with high MSAC
    support but a pose rolled far from its nearest keyframes, so the turns are searched (before,
    that pose was published, outside (0.25 m, 2 deg)); the upright frame still takes the early
    exit."""
    from nre_ros.preprocess import rotate_quarter_turns, undistort
    seq = TumSequence(shared_file('maps/demo/queries'))
    frame = seq.frames[6]
    img0, cam0 = undistort(seq.load_rgb(frame), seq.camera)
    out = reloc.localize(img0, cam0)
    assert out.ok and out.info['orientations_searched'] == 1
    img, cam, R = rotate_quarter_turns(img0, cam0, 1)
    T_gt = np.eye(4)
    T_gt[:3, :3] = R
    T_gt = T_gt @ invert(frame.T_world_cam)
    out = reloc.localize(img, cam)
    assert out.ok, out
    assert out.info['quarter_turns'] == 3 and out.info['orientations_searched'] == 4
    dt, dr = pose_error(out.T_cam_world, T_gt)
    assert dt < 0.05 and dr < 2.0, (dt, dr)


def test_quarter_turns_only_for_large_rolls():
    """fr1_rpy queries sit up to 80 deg of roll from their nearest keyframes and track best
    upright (turning them cost 7 of 48 fixes); a camera upside down is turned twice."""
    from scipy.spatial.transform import Rotation

    from nre_ros.pipeline import quarter_turns_to

    def rolled(deg):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_euler('z', deg, degrees=True).as_matrix()
        return T

    kfs = np.stack([rolled(0.0), rolled(85.0)])
    assert quarter_turns_to(kfs, rolled(80.0)) == 0       # the 85-deg keyframe is 5 deg away
    assert quarter_turns_to(kfs[:1], rolled(80.0)) == 0   # moderate roll: upright
    assert quarter_turns_to(kfs[:1], rolled(180.0)) == 2
    assert quarter_turns_to(kfs[:1], rolled(-120.0)) in (1, 3)
    assert quarter_turns_to(kfs[:1], rolled(-120.0)) != quarter_turns_to(kfs[:1], rolled(120.0))
