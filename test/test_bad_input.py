"""Relocalizer.localize never raises on bad input and never trusts a non-rigid prior."""
import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.datasets import TumSequence
from nre_ros.geometry import invert
from nre_ros.paths import shared_file
from nre_ros.pipeline import Prior


@pytest.fixture(scope='module')
def query():
    seq = TumSequence(shared_file('maps/demo/queries'))
    frame = seq.frames[0]
    return seq.load_rgb(frame), seq.camera, invert(frame.T_world_cam)


def _scaled(T):
    S = T.copy()
    S[:3, :3] *= 1.5
    return S


@pytest.mark.parametrize('make_prior', [
    lambda T: Prior(np.full((4, 4), np.nan)),
    lambda T: Prior(np.eye(3)),
    lambda T: Prior(np.zeros((4, 4))),
    lambda T: Prior(T, np.eye(3)),
    lambda T: Prior(T, np.full((6, 6), np.inf)),
    lambda T: Prior(_scaled(T)),                       # scaled rotation: not rigid
    lambda T: Prior('not a pose'),
], ids=['nan', '3x3', 'zeros', 'cov3x3', 'cov_inf', 'scaled', 'string'])
def test_bad_prior_is_a_bad_input_failure(reloc, query, make_prior):
    image, camera, T_gt = query
    out = reloc.localize(image, camera, prior=make_prior(T_gt))
    assert not out.ok and out.reason == 'bad_input', out


def test_image_too_small_after_resizing_is_a_failure(reloc):
    strip = np.zeros((40, 2000, 3), np.uint8)         # 640 x 13 after resizing to 640
    out = reloc.localize(strip, Camera.from_params(2000, 40, 500, 500, 999.5, 19.5))
    assert not out.ok and out.reason == 'bad_input' and '32 px' in out.detail


def test_wrong_camera_type_is_a_failure(reloc, query):
    image, _, _ = query
    out = reloc.localize(image, {'fx': 500})
    assert not out.ok and out.reason == 'bad_input'
