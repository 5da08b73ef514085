"""Command-line details: localize's exit status, failure lines, stamps and yaw; build-map's
--force; the ONNX export log line; export's default folder; report axes and failure table."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from nre_ros.commands import build_map, export, localize
from nre_ros.errors import InputError
from nre_ros.eval.bags import T_BASE_CAM
from nre_ros.geometry import invert, make_transform, so3_exp
from nre_ros.paths import shared_file

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- localize
def test_stamps_from_timestamp_names_only(tmp_path):
    assert localize.image_stamps(['rgb/1305031229.729064.jpg'], None) == [1305031229.729064]
    assert localize.image_stamps(['1700000000123456789.png'], None) == \
        pytest.approx([1700000000.123456789])
    for name in ('0002.jpg', 'frame_12.png', '17.5.png', '2.png'):
        with pytest.raises(InputError, match='give --stamps FILE'):
            localize.image_stamps([name], None)


def test_stamps_from_a_file_by_order_or_by_name(tmp_path):
    images = ['a/0001.jpg', 'a/0002.jpg']
    ordered = tmp_path / 'stamps.txt'
    ordered.write_text('# stamps\n10.5\n11.25\n')
    assert localize.image_stamps(images, str(ordered)) == [10.5, 11.25]
    named = tmp_path / 'rgb.txt'                      # TUM rgb.txt layout, other order
    named.write_text('# timestamp filename\n11.25 rgb/0002.jpg\n10.5 rgb/0001.jpg\n')
    assert localize.image_stamps(images, str(named)) == [10.5, 11.25]
    short = tmp_path / 'short.txt'
    short.write_text('10.5\n')
    with pytest.raises(InputError, match='1 stamps for 2 images'):
        localize.image_stamps(images, str(short))
    with pytest.raises(InputError, match='no line for'):
        localize.image_stamps(images + ['a/0003.jpg'], str(named))
    bad = tmp_path / 'bad.txt'
    bad.write_text('ten\neleven\n')
    with pytest.raises(InputError, match='--stamps'):
        localize.image_stamps(images, str(bad))


@pytest.mark.parametrize('yaw_deg', [-150.0, -30.0, 0.0, 45.0, 170.0])
def test_printed_yaw_is_the_base_yaw_in_the_map(yaw_deg):
    """A base at yaw psi (REP 103, camera mounted as in the demo bag, looking forward) prints
    psi, although the optical frame's own Z-Y-X yaw is something else."""
    T_map_base = make_transform(so3_exp(np.array([0, 0, np.radians(yaw_deg)])), [1.0, 2.0, 0.0])
    T_map_cam = T_map_base @ T_BASE_CAM
    assert localize.base_yaw_deg(T_map_cam) == pytest.approx(yaw_deg, abs=1e-9)
    from scipy.spatial.transform import Rotation
    optical = Rotation.from_matrix(T_map_cam[:3, :3]).as_euler('ZYX', degrees=True)[0]
    assert abs((optical - yaw_deg + 180) % 360 - 180) > 45     # what used to be printed


def test_localize_exits_non_zero_with_a_reason_per_failure(tmp_path, capsys):
    """Nothing localized: exit 1, and each failure has one line with its reason in words."""
    import cv2
    from nre_ros.cli import main
    queries = shared_file('maps/demo/queries')
    black = tmp_path / 'black.png'
    cv2.imwrite(str(black), np.zeros((480, 640, 3), np.uint8))
    small = tmp_path / 'small.png'
    cv2.imwrite(str(small), np.full((48, 64, 3), 128, np.uint8))
    rc = main(['localize', '--map', str(shared_file('maps/demo/fr1_rpy.nremap')),
               '--camera', str(queries / 'camera.yaml'), str(black), str(small)])
    out, err = capsys.readouterr()
    assert rc == 1 and 'no image localized (2 failed)' in err
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith(('black', 'small'))}
    assert set(lines) == {'black.png', 'small.png'}
    for line in lines.values():
        assert 'failed (' in line and 'nan' not in line and 'no detail' not in line
        assert len(line.split('): ', 1)[1]) > 15            # a sentence, not a code
    assert 'is 64x48 but the camera is 640x480' in lines['small.png']


def test_localize_out_refuses_frame_numbers_as_stamps(tmp_path, capsys):
    from nre_ros.cli import main
    img = tmp_path / '0002.jpg'
    img.write_bytes((shared_file('maps/demo/queries') / 'rgb' / '1305031229.729064.jpg')
                    .read_bytes())
    rc = main(['localize', '--map', str(tmp_path / 'no.nremap'), '--camera',
               str(shared_file('maps/demo/queries') / 'camera.yaml'), str(img), '--out',
               str(tmp_path / 'out.tum')])
    assert rc == 1 and '0002.jpg is not one' in capsys.readouterr().err
    assert not (tmp_path / 'out.tum').exists()


def test_localize_accepts_a_camera_calibration_yaml(tmp_path, capsys):
    """``--camera`` with the YAML ROS camera_calibration writes (it used to be KeyError)."""
    import yaml
    from nre_ros.camera import Camera
    from nre_ros.cli import main
    queries = shared_file('maps/demo/queries')
    cam = Camera.from_yaml(queries / 'camera.yaml')
    (tmp_path / 'ost.yaml').write_text(yaml.safe_dump({
        'image_width': cam.width, 'image_height': cam.height, 'camera_name': 'kinect',
        'camera_matrix': {'rows': 3, 'cols': 3, 'data': cam.K.ravel().tolist()},
        'distortion_model': cam.distortion_model,
        'distortion_coefficients': {'rows': 1, 'cols': len(cam.ros_distortion()),
                                    'data': cam.ros_distortion().tolist()}}))
    image = sorted((queries / 'rgb').iterdir())[0]
    out = tmp_path / 'poses.tum'
    rc = main(['localize', '--map', str(shared_file('maps/demo/fr1_rpy.nremap')),
               '--camera', str(tmp_path / 'ost.yaml'), str(image), '--out', str(out)])
    assert rc == 0 and 'localized' in capsys.readouterr().out
    stamp = float(out.read_text().splitlines()[1].split()[0])
    assert stamp == pytest.approx(float(image.stem))


# ---------------------------------------------------------------------- build-map / export
def test_build_map_refuses_to_overwrite_without_force(tmp_path, capsys):
    from nre_ros.cli import main
    existing = tmp_path / 'lab.nremap'
    existing.mkdir()
    (existing / 'metadata.json').write_text('{}')
    rc = main(['build-map', str(tmp_path / 'seq'), str(existing)])
    assert rc == 1 and 'pass --force' in capsys.readouterr().err
    assert (existing / 'metadata.json').read_text() == '{}'
    build_map.check_output(existing, force=True)              # a map folder may be replaced
    build_map.check_output(tmp_path / 'new.nremap', force=False)
    other = tmp_path / 'home'
    other.mkdir()
    (other / 'thesis.tex').write_text('precious')
    rc = main(['build-map', str(tmp_path / 'seq'), str(other), '--force'])
    assert rc == 1 and 'not an nre_ros map folder' in capsys.readouterr().err
    assert (other / 'thesis.tex').read_text() == 'precious'


def test_first_run_onnx_export_is_announced(tmp_path, monkeypatch, caplog):
    """The log line comes before the export starts (which is what takes 10-40 s)."""
    import nre_ros.backends as backends
    from nre_ros.backends import BackendConfig, load_backend

    class Stop(Exception):
        pass

    def fake_export(model, onnx_dir, export):
        assert 'exporting' in caplog.text and 'this takes' in caplog.text
        raise Stop

    monkeypatch.setattr(backends, '_export_atomically', fake_export)
    with caplog.at_level('WARNING', logger='nre_ros'), pytest.raises(Stop):
        load_backend(BackendConfig(backend='onnxruntime', cache_dir=str(tmp_path)))
    assert str(tmp_path) in caplog.text


def test_export_default_output_is_git_ignored():
    assert not export.DEFAULT_OUTPUT.startswith(('export', './export'))
    probe = REPO / export.DEFAULT_OUTPUT / 'xfeat-coarse.onnx'
    if not (REPO / '.git').exists():
        pytest.skip('not a git checkout')
    rc = subprocess.run(['git', '-C', str(REPO), 'check-ignore', '-q', str(probe)]).returncode
    assert rc == 0, f'{probe} is not git-ignored'


# ---------------------------------------------------------------------- report
def _record(i, status, T_gt, reason=''):
    from nre_ros.eval.evaluate import FrameRecord
    T_est = T_gt if status == 'fix' else None
    return FrameRecord(i, i * 10 ** 8, status, reason, T_gt, T_est,
                       np.eye(6) * 1e-4 if T_est is not None else None, 20.0, {'total': 20.0})


def _climb(R_world_level: np.ndarray) -> list[np.ndarray]:
    """T_cam_world of 12 level, forward-looking cameras (REP 103 mount) on a drone climbing
    2 m while drifting 1 m, in a map whose axes are ``R_world_level`` @ (x, y, z-up)."""
    out = []
    for k in range(12):
        T_level_base = make_transform(so3_exp(np.array([0, 0, 0.3 * k])),
                                      [k / 11, 0.05 * np.sin(k), 2 * k / 11])
        out.append(invert(make_transform(R_world_level, np.zeros(3)) @ T_level_base @ T_BASE_CAM))
    return out


@pytest.mark.parametrize('R, up', [
    (np.eye(3), 2),                                              # REP 103 map, z up
    (np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), 1),        # y-up map (level z -> world y)
    (np.array([[0, 0, 1.0], [1, 0, 0], [0, 1, 0]]), 0)])        # x-up map
def test_report_top_view_looks_down_the_up_axis(R, up):
    """The climb spreads most along up and forward, so the old choice (the two axes of largest
    spread) plotted a side view; the top view is the plane normal to the map's up axis."""
    from nre_ros.eval.report import top_view_axes
    Ts = _climb(R)
    a, b, got_up = top_view_axes(np.array([invert(T)[:3, :3] for T in Ts]))
    assert got_up == up and (a, b) == ((up + 1) % 3, (up + 2) % 3)
    centres = np.array([invert(T)[:3, 3] for T in Ts])
    assert up in np.argsort(centres.std(axis=0))[-2:]            # the old axes included up


def test_report_failure_table_only_with_failures():
    from nre_ros.eval.report import plot_trajectory, render_html
    Ts = _climb(np.eye(3))
    recs = [_record(i, 'fix', T) for i, T in enumerate(Ts)]
    page = render_html(recs, {'stage_latency_ms': {}, 'failure_reasons': {}}, {'bag': 'b'}, {})
    assert '<th>reason</th>' not in page and 'No failures.' in page
    recs[3] = _record(3, 'failure', Ts[3], 'too_few_points')
    page = render_html(recs, {'stage_latency_ms': {}, 'failure_reasons': {'too_few_points': 1}},
                       {'bag': 'b'}, {})
    assert '<th>reason</th>' in page and '<td>too_few_points</td><td>1</td>' in page
    assert len(plot_trajectory(recs)) > 1000                     # a PNG, base64
