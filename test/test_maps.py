"""Map format: build -> save -> load round trip and rejection of bad files."""
from __future__ import annotations

import json
import pickle
import shutil
import struct
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from nre_ros.errors import MapFormatError
from nre_ros.maps import BuildOptions, build_rgbd_map, load_map
from nre_ros.maps.format import METADATA_FILE, TENSORS_FILE, tensor_hashes
from nre_ros.models.base import file_sha256


@pytest.fixture(scope='module')
def model():
    from nre_ros.models import load_model
    return load_model('xfeat')


@pytest.fixture(scope='module')
def tiny_map(fr1_rpy, model):
    opts = BuildOptions(split='map', max_keyframes=3, max_points_per_keyframe=300)
    return build_rgbd_map(fr1_rpy.root, model, opts)


@pytest.fixture()
def saved(tiny_map, tmp_path):
    return tiny_map.save(tmp_path / 'tiny.nremap')


def _rewrite(path, mutate_tensors=None, mutate_meta=None, rehash=True):
    """Change a saved map's tensors/metadata; re-hash so that deeper checks are reached."""
    meta = json.loads((path / METADATA_FILE).read_text())
    if mutate_tensors:
        tensors = {k: np.array(v) for k, v in load_file(str(path / TENSORS_FILE)).items()}
        mutate_tensors(tensors)
        save_file(tensors, str(path / TENSORS_FILE))
    if rehash:
        meta.update(tensor_hashes(path / TENSORS_FILE))
    if mutate_meta:
        mutate_meta(meta)
    (path / METADATA_FILE).write_text(json.dumps(meta))


def test_round_trip_identical(tiny_map, saved, model):
    m = load_map(saved, model.spec)
    assert m.keyframe_names == tiny_map.keyframe_names
    assert m.spec == tiny_map.spec == model.spec
    a, b = tiny_map.tensors(), m.tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert m.metadata == tiny_map.metadata
    m.save(saved.parent / 'again.nremap')             # a loaded (memory-mapped) map saves too
    assert file_sha256(saved / TENSORS_FILE) == file_sha256(
        saved.parent / 'again.nremap' / TENSORS_FILE)


def test_map_contents(tiny_map):
    m = tiny_map
    assert m.num_keyframes == 3
    assert m.points_world.dtype == np.float32 and m.points_world.shape == (m.num_points, 3)
    obs = m.observations(1)
    assert len(obs.point_idx) == m.kf_offsets[2] - m.kf_offsets[1] <= 300
    assert obs.coarse.shape == (len(obs.point_idx), m.spec.coarse_dim)
    norms = np.linalg.norm(m.obs_coarse.astype(np.float32), axis=1)
    assert np.allclose(norms, 1, atol=2e-3)
    offsets, kfs = m.point_tracks()
    assert offsets[-1] == m.num_observations and kfs.max() < 3
    assert m.keyframes[2].camera.width == 640
    assert np.allclose(m.keyframes[0].T_cam_world @ np.linalg.inv(m.kf_T_cam_world[0]), np.eye(4))


def test_map_records_each_keyframes_brightness(fr1_rpy, tiny_map):
    from nre_ros.preprocess import grey_mean
    want = [grey_mean(fr1_rpy.load_rgb(fr1_rpy.frame(n))) for n in tiny_map.keyframe_names]
    assert tiny_map.kf_brightness.dtype == np.float32
    assert np.allclose(tiny_map.kf_brightness, want, atol=1e-6)
    assert 0.3 < min(want) and max(want) < 0.7          # an office in daylight, not a constant


def test_summary_and_reprojection(tiny_map, saved):
    from nre_ros.maps.stats import map_summary, reprojection_errors
    err = reprojection_errors(tiny_map)
    assert err.shape == (tiny_map.num_observations,) and np.median(err) < 1.0
    s = map_summary(tiny_map, saved)
    assert s['keyframes'] == 3 and s['size_mb'] > 0


def test_descriptors_sampled_at_projection(fr1_rpy, tiny_map, model):
    """Descriptors equal a fresh bilinear sample at the point's (distorted) projection."""
    from nre_ros.maps.features import sample_descriptors
    i = 1
    frame = fr1_rpy.frame(tiny_map.keyframe_names[i])
    feats = model.extract(fr1_rpy.load_rgb(frame))
    obs = tiny_map.observations(i)
    T = tiny_map.kf_T_cam_world[i]
    uv, _ = tiny_map.camera(i).project(tiny_map.points_world[obs.point_idx] @ T[:3, :3].T
                                       + T[:3, 3])
    ref = sample_descriptors(feats.coarse, uv, model.spec.coarse_stride)
    assert np.abs(ref - obs.coarse.astype(np.float32)).max() < 2e-3


# ------------------------------------------------------------------ rejections
def test_reject_truncated(saved):
    f = saved / TENSORS_FILE
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(MapFormatError, match='truncated or was modified'):
        load_map(saved)


def test_reject_truncated_without_hash_check(saved):
    f = saved / TENSORS_FILE
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(MapFormatError, match='outside the .* data bytes'):
        load_map(saved, verify_hash=False)


def test_reject_tampered_bytes(saved):
    f = saved / TENSORS_FILE
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(MapFormatError, match='content hash'):
        load_map(saved)


def test_reject_wrong_version(saved):
    _rewrite(saved, mutate_meta=lambda m: m.update(version=99))
    with pytest.raises(MapFormatError, match='format version 99'):
        load_map(saved)


def test_reject_nan_pose(saved):
    _rewrite(saved, lambda t: t['kf_T_cam_world'].__setitem__((1, 0, 3), np.nan))
    with pytest.raises(MapFormatError, match="'kf_T_cam_world' has 1 non-finite"):
        load_map(saved)


def test_reject_non_rigid_pose(saved):
    _rewrite(saved, lambda t: t['kf_T_cam_world'].__setitem__((2, 0, 0), 2.0))
    with pytest.raises(MapFormatError, match=r'poses \[2\] are not rigid'):
        load_map(saved)


def test_reject_out_of_range_index(saved):
    _rewrite(saved, lambda t: t['obs_point'].__setitem__(0, 10 ** 6))
    with pytest.raises(MapFormatError, match='obs_point indices out of range'):
        load_map(saved)


def test_reject_bad_offsets(saved):
    _rewrite(saved, lambda t: t['kf_offsets'].__setitem__(1, -4))
    with pytest.raises(MapFormatError, match='kf_offsets must rise'):
        load_map(saved)


def test_reject_brightness_out_of_range(saved):
    _rewrite(saved, lambda t: t['kf_brightness'].__setitem__(0, 1.5))
    with pytest.raises(MapFormatError, match='kf_brightness must lie in'):
        load_map(saved)


def test_map_without_brightness_still_loads(saved):
    _rewrite(saved, lambda t: t.pop('kf_brightness'))
    assert load_map(saved).kf_brightness is None


def test_reject_wrong_model_hash(saved, model):
    other = replace(model.spec, weights_sha256='0' * 64)
    with pytest.raises(MapFormatError, match='weights_sha256'):
        load_map(saved, other)
    assert load_map(saved, model.spec).num_keyframes == 3


def test_reject_missing_tensor(saved):
    _rewrite(saved, lambda t: t.pop('obs_coarse'))
    with pytest.raises(MapFormatError, match="missing tensor 'obs_coarse'"):
        load_map(saved)


def test_reject_wrong_dtype(saved):
    def f(t):
        t['points_world'] = t['points_world'].astype(np.float64)
    _rewrite(saved, f)
    with pytest.raises(MapFormatError, match="'points_world' has dtype float64"):
        load_map(saved)


def test_reject_descriptor_dim(saved):
    def f(t):
        t['obs_coarse'] = t['obs_coarse'][:, :32].copy()
    _rewrite(saved, f)
    with pytest.raises(MapFormatError, match=r"'obs_coarse' has shape \(\d+, 32\)"):
        load_map(saved)


def test_reject_pickle_payload(saved):
    (saved / TENSORS_FILE).write_bytes(pickle.dumps({'points_world': np.zeros((3, 3))}))
    _rewrite(saved)
    with pytest.raises(MapFormatError, match='not a safetensors file'):
        load_map(saved)


def test_reject_huge_declared_shape(saved):
    header = {'points_world': {'dtype': 'F32', 'shape': [10 ** 12, 3], 'data_offsets': [0, 12]}}
    hb = json.dumps(header).encode()
    (saved / TENSORS_FILE).write_bytes(struct.pack('<Q', len(hb)) + hb + b'\0' * 12)
    _rewrite(saved)
    with pytest.raises(MapFormatError, match=r'declares shape \[1000000000000, 3\]'):
        load_map(saved)


def test_reject_missing_metadata_and_not_a_map(saved, tmp_path):
    with pytest.raises(MapFormatError, match='does not exist'):
        load_map(tmp_path / 'nothing.nremap')
    (saved / METADATA_FILE).unlink()
    with pytest.raises(MapFormatError, match='metadata.json is missing'):
        load_map(saved)


def test_reject_bad_counts_and_alignment(saved):
    _rewrite(saved, mutate_meta=lambda m: m['counts'].update(points=1))
    with pytest.raises(MapFormatError, match='counts'):
        load_map(saved)
    _rewrite(saved, mutate_meta=lambda m: m['counts'].update(points=None) or m.update(
        map_T_model={'rotation': np.eye(3).tolist(), 'translation': [0, 0, 0], 'scale': -1}))
    with pytest.raises(MapFormatError, match='map_T_model'):
        load_map(saved)


def test_save_refuses_invalid_map(tiny_map, tmp_path):
    bad = replace(tiny_map, points_world=np.full_like(tiny_map.points_world, np.nan))
    with pytest.raises(MapFormatError, match='non-finite'):
        bad.save(tmp_path / 'bad.nremap')
    assert not (tmp_path / 'bad.nremap').exists()


def test_alignment_round_trip(tiny_map, tmp_path):
    from nre_ros.maps import Sim3
    from nre_ros.geometry import so3_exp
    sim = Sim3(so3_exp(np.array([0.1, 0.2, 0.3])), np.array([1.0, 2.0, 3.0]), 0.5)
    m = replace(tiny_map, metadata=replace(tiny_map.metadata, map_T_model=sim))
    loaded = load_map(m.save(tmp_path / 'a.nremap'))
    assert np.allclose(loaded.metadata.map_T_model.rotation, sim.rotation)
    assert loaded.metadata.map_T_model.scale == 0.5


def test_info_command(saved, capsys):
    from nre_ros.cli import main
    assert main(['info', str(saved)]) == 0
    out = capsys.readouterr().out
    assert 'keyframes' in out and 'validated' in out
    shutil.rmtree(saved)
    assert main(['info', str(saved)]) == 1
