"""The TUM-layout reader: clear errors on a wrong layout, interpolated poses, dropped frames."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from nre_ros.datasets import TumSequence, write_tum_poses
from nre_ros.errors import InputError
from nre_ros.geometry import make_transform, so3_exp


def _folder(tmp_path, names, stamps, pose_stamps, poses):
    root = tmp_path / 'seq'
    root.mkdir()
    (root / 'camera.yaml').write_text('width: 64\nheight: 48\nfx: 50\nfy: 50\ncx: 31.5\n'
                                      'cy: 23.5\n')
    (root / 'rgb.txt').write_text(''.join(f'{t:.6f} {n}\n' for t, n in zip(stamps, names)))
    write_tum_poses(root / 'poses_T_world_cam.txt', pose_stamps, poses)
    return root


def _poses(t):
    return make_transform(so3_exp(np.stack([0 * t, 0.4 * t, 0 * t], 1)),
                          np.stack([t, 0 * t, 0.5 * t], 1))


def test_poses_are_interpolated_and_frames_without_one_dropped_with_a_warning(tmp_path, caplog):
    stamps = 100 + np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.6])
    knots = 100 + np.array([0.0, 0.1, 0.2])            # every other image; nothing near 0.6
    root = _folder(tmp_path, [f'rgb/{i}.png' for i in range(6)], stamps, knots,
                   _poses(knots - 100))
    with caplog.at_level(logging.WARNING):
        seq = TumSequence(root, pose_tolerance_s=0.06)
    assert [f.name for f in seq] == [f'rgb/{i}.png' for i in range(5)]
    assert np.allclose(np.stack([f.T_world_cam for f in seq]), _poses(stamps[:5] - 100),
                       atol=1e-9)
    assert '1 of 6 images have no pose' in caplog.text


def test_wrong_layout_is_a_clear_error(tmp_path):
    root = _folder(tmp_path, ['images/0.png'], [1.0], [1.0], _poses(np.zeros(1)))
    with pytest.raises(InputError, match='expected "timestamp rgb/NAME".*TUM layout'):
        TumSequence(root)
    (root / 'associations.txt').write_text('0 1.0 images/0.png depth/0.png\n')
    with pytest.raises(InputError, match='associations.txt:1: no "timestamp rgb/NAME".*TUM'):
        TumSequence(root)
    (root / 'poses_T_world_cam.txt').unlink()
    with pytest.raises(InputError, match='poses_T_world_cam.txt is missing; expected the TUM'):
        TumSequence(root)
    shutil.rmtree(root)
    with pytest.raises(InputError, match='does not exist'):
        TumSequence(root)
