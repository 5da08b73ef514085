"""Camera YAML input: the TUM layout and ROS camera_calibration files, and clear errors for
wrong types, sizes and file kinds."""
import os

import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.errors import InputError

# What ROS's camera_calibration (cameracalibrator) writes as ost.yaml (camera_info_manager format).
CALIBRATION_YAML = """\
image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [517.306408, 0.000000, 318.643040, 0.000000, 516.469215, 255.313989, 0.000000, 0.000000, 1.000000]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.262383, -0.953104, -0.005358, 0.002628, 1.163314]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.000000, 0.000000, 0.000000, 0.000000, 1.000000, 0.000000, 0.000000, 0.000000, 1.000000]
projection_matrix:
  rows: 3
  cols: 4
  data: [517.306408, 0.000000, 318.643040, 0.000000, 0.000000, 516.469215, 255.313989, 0.000000, 0.000000, 0.000000, 1.000000, 0.000000]
"""

TUM_YAML = """\
width: 640
height: 480
fx: 517.306408
fy: 516.469215
cx: 318.643040
cy: 255.313989
distortion_model: plumb_bob
distortion: [0.262383, -0.953104, -0.005358, 0.002628, 1.163314]
depth_scale: 5000.0
"""


def _write(tmp_path, text, name='camera.yaml'):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def test_camera_calibration_yaml_equals_the_tum_layout(tmp_path):
    cal = Camera.from_yaml(_write(tmp_path, CALIBRATION_YAML, 'ost.yaml'))
    tum = Camera.from_yaml(_write(tmp_path, TUM_YAML))
    assert (cal.width, cal.height) == (640, 480) and not cal.fisheye
    np.testing.assert_array_equal(cal.K, tum.K)
    np.testing.assert_array_equal(cal.dist, tum.dist)
    assert cal.distortion_model == 'plumb_bob'


def test_camera_calibration_yaml_fisheye_and_rational(tmp_path):
    fish = CALIBRATION_YAML.replace('plumb_bob', 'equidistant').replace(
        'cols: 5\n  data: [0.262383, -0.953104, -0.005358, 0.002628, 1.163314]',
        'cols: 4\n  data: [-0.0078, 0.0447, -0.0419, 0.0081]')
    cam = Camera.from_yaml(_write(tmp_path, fish))
    assert cam.fisheye and cam.distortion_model == 'equidistant'
    np.testing.assert_array_equal(cam.dist, [-0.0078, 0.0447, -0.0419, 0.0081])
    rational = CALIBRATION_YAML.replace('plumb_bob', 'rational_polynomial').replace(
        'cols: 5\n  data: [0.262383, -0.953104, -0.005358, 0.002628, 1.163314]',
        'cols: 8\n  data: [0.1, 0.01, 0.001, 0.002, 0.0, 0.1, 0.01, 0.0]')
    assert Camera.from_yaml(_write(tmp_path, rational)).dist.size == 8
    # the TUM layout names the model the same way and round-trips through to_dict
    import yaml
    tum = _write(tmp_path, yaml.safe_dump(cam.to_dict()), 'tum.yaml')
    back = Camera.from_yaml(tum)
    assert back.fisheye and np.array_equal(back.dist, cam.dist) and np.array_equal(back.K, cam.K)


def test_shared_tum_camera_files_still_read(fr1_rpy, cabinet):
    assert fr1_rpy.camera.dist.size == 5 and fr1_rpy.camera.fx == pytest.approx(517.306408)
    assert not cabinet.camera.has_distortion


@pytest.mark.parametrize('text, message', [
    (TUM_YAML.replace('fx: 517.306408', 'fx: abc'), "'fx' must be a number, got 'abc'"),
    (TUM_YAML.replace('fx: 517.306408', 'fx: .nan'), "'fx' must be finite"),
    (TUM_YAML.replace('fx: 517.306408', 'fx: true'), "'fx' must be a number"),
    (TUM_YAML.replace('width: 640', 'width: 1e30'), "'width' must be a number"),
    (TUM_YAML.replace('width: 640', 'width: 1.0e+30'), "'width' must be a whole number"),
    (TUM_YAML.replace('width: 640', 'width: 640.5'), "'width' must be a whole number"),
    (TUM_YAML.replace('width: 640', 'width: -640'), "'width' must be a whole number"),
    (TUM_YAML.replace('fy: 516.469215\n', ''), "missing field 'fy'"),
    (TUM_YAML.replace('[0.262383, -0.953104, -0.005358, 0.002628, 1.163314]', '[0.1, x]'),
     "'distortion[1]' must be a number"),
    (TUM_YAML.replace('[0.262383, -0.953104, -0.005358, 0.002628, 1.163314]', '{a: 1}'),
     "'distortion' must be a list"),
    (TUM_YAML.replace('distortion_model: plumb_bob', 'distortion_model: kannala'),
     'unsupported distortion model'),
    (TUM_YAML.replace('distortion_model: plumb_bob', 'distortion_model: equidistant'),
     'equidistant needs 4 distortion coefficients, got 5'),
    (TUM_YAML.replace('distortion_model: plumb_bob', 'distortion_model: [1]'),
     "'distortion_model' must be a string"),
    ('- 640\n- 480\n', 'must hold a YAML mapping'),
    ('42\n', 'must hold a YAML mapping'),
    ('width: [640\n', 'is not valid YAML'),
    (CALIBRATION_YAML.replace('cols: 3\n  data: [517', 'cols: 4\n  data: [517'),
     "'camera_matrix' must be 3x3"),
    (CALIBRATION_YAML.replace('camera_matrix:\n  rows: 3', 'camera_matrix: 5\nxx:\n  rows: 3'),
     "'camera_matrix' must be a mapping"),
    (CALIBRATION_YAML.replace('image_height: 480\n', ''), "missing field 'image_height'"),
    (CALIBRATION_YAML.replace('0.000000, 516.469215', '0.000000, -516.469215'),
     'focal lengths must be positive'),
])
def test_bad_camera_yaml_gives_a_clear_error(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        Camera.from_yaml(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_binary_oversized_and_non_regular_files_are_refused(tmp_path):
    binary = _write(tmp_path, bytes(range(256)) * 4, 'binary.yaml')
    with pytest.raises(InputError, match='not a text'):
        Camera.from_yaml(binary)
    nul = _write(tmp_path, TUM_YAML.encode() + b'\x00\x00', 'nul.yaml')
    with pytest.raises(InputError, match='not a text'):
        Camera.from_yaml(nul)
    big = _write(tmp_path, TUM_YAML + '#' * (1 << 20), 'big.yaml')
    with pytest.raises(InputError, match='more than the 1048576'):
        Camera.from_yaml(big)
    with pytest.raises(InputError, match='not a regular file'):
        Camera.from_yaml(tmp_path)
    fifo = tmp_path / 'fifo.yaml'
    os.mkfifo(fifo)
    with pytest.raises(InputError, match='not a regular file'):
        Camera.from_yaml(fifo)           # would block forever if it were opened
    link = tmp_path / 'zero.yaml'
    link.symlink_to('/dev/zero')
    with pytest.raises(InputError, match='not a regular file'):
        Camera.from_yaml(link)
    with pytest.raises(InputError, match='No such file'):
        Camera.from_yaml(tmp_path / 'missing.yaml')
