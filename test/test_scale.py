"""Queries are brought to the map's pixel scale (focal length) exactly."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence
from nre_ros.geometry import invert, pose_error
from nre_ros.paths import shared_file
from nre_ros.pipeline import PipelineConfig, Relocalizer
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


@pytest.fixture(scope='module')
def reloc():
    return Relocalizer.from_config(shared_file('maps/demo/fr1_rpy.nremap'), PipelineConfig())


def test_half_resolution_queries_localize_as_well(reloc):
    seq = TumSequence(shared_file('maps/demo/queries'))
    cam = seq.camera.resized(320, 240)
    for frame in seq.frames[:4]:
        img = cv2.resize(seq.load_rgb(frame), (320, 240), interpolation=cv2.INTER_AREA)
        out = reloc.localize(img, cam)
        assert out.ok, out
        dt, dr = pose_error(out.T_cam_world, invert(frame.T_world_cam))
        assert dt < 0.05 and dr < 2.0, (frame.name, dt, dr)
