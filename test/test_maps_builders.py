"""Map builders on tiny real inputs: posed RGB (triangulation), COLMAP model, CLI, viz."""
from __future__ import annotations

import numpy as np
import pytest

from nre_ros.maps import BuildOptions, build_colmap_map, build_posed_map, load_map
from nre_ros.maps.stats import reprojection_errors


@pytest.fixture(scope='module')
def model():
    from nre_ros.models import load_model
    return load_model()


def _tiny_sequence(seq, tmp_path, indices):
    """A TUM folder sharing seq's files, with split_tiny.txt listing the given frames."""
    root = tmp_path / 'seq'
    root.mkdir()
    for name in ('rgb', 'depth', 'camera.yaml', 'poses_T_world_cam.txt', 'associations.txt'):
        (root / name).symlink_to(seq.root / name)
    (root / 'split_tiny.txt').write_text('\n'.join(seq[i].name for i in indices) + '\n')
    return root


def test_posed_builder_agrees_with_depth(cabinet, model, tmp_path):
    root = _tiny_sequence(cabinet, tmp_path, [54, 55, 56, 57])
    m = build_posed_map(root, model, BuildOptions(split='tiny', max_points_per_keyframe=512))
    assert m.num_keyframes == 4 and m.num_points > 30
    assert np.median(reprojection_errors(m)) < 2.0
    assert np.all(np.bincount(m.obs_point) >= 2)                 # triangulated: >= 2 views
    rel = []
    for i, name in enumerate(m.keyframe_names):                  # depth never used: check it
        depth = cabinet.load_depth(cabinet.frame(name))
        obs = m.observations(i)
        T = m.kf_T_cam_world[i]
        z = (m.points_world[obs.point_idx] @ T[:3, :3].T + T[:3, 3])[:, 2]
        d = depth[np.round(obs.uv[:, 1]).astype(int), np.round(obs.uv[:, 0]).astype(int)]
        rel.append(np.abs(z - d)[d > 0] / d[d > 0])
    assert np.median(np.concatenate(rel)) < 0.10      # measured 5.4 % (short baselines)
    assert m.obs_fine is None or m.obs_fine.shape[1] == model.spec.fine_dim


def test_colmap_builder(model, tmp_path):
    from conftest import shared_dataset
    pytest.importorskip('pycolmap')
    root = shared_dataset('sfm_sacre_coeur_hloc')
    opts = BuildOptions(max_keyframes=3, image_max_size=480, max_points_per_keyframe=300)
    m = build_colmap_map(root / 'reference_sfm_pycolmap', root / 'images', model, opts,
                         exclude=('93341989_396310999.jpg',))
    assert m.num_keyframes == 3 and '93341989_396310999.jpg' not in m.keyframe_names
    assert m.metadata.units == 'sfm' and np.all(np.diff(m.kf_offsets) <= 300)
    assert max(m.kf_image_size.max(axis=1)) <= 480
    assert np.median(reprojection_errors(m)) < 1.0              # the COLMAP +0.5 shift is right
    loaded = load_map(m.save(tmp_path / 'sfm.nremap'), model.spec)
    assert np.array_equal(loaded.obs_uv, m.obs_uv)


def test_build_map_and_viz_commands(fr1_rpy, tmp_path, capsys):
    from nre_ros.cli import main
    root = _tiny_sequence(fr1_rpy, tmp_path, [0, 5, 10])
    out = tmp_path / 'cli.nremap'
    assert main(['build-map', str(root), str(out), '--split', 'tiny', '--max-points', '200',
                 '--keypoints', 'grid']) == 0
    assert 'wrote' in capsys.readouterr().out
    m = load_map(out)
    assert m.num_keyframes == 3 and 'build-map' in m.metadata.provenance['command']
    # the default model stores xfeat-ms-head's fine level as the tracking level, sampled where
    # the coarse and fine descriptors were: same observations, unit norm, not the x4 level
    assert m.tracking_spec is not None and m.tracking_spec.name == 'xfeat-ms-head'
    t = np.asarray(m.obs_fine_tracking, np.float32)
    assert t.shape == (m.num_observations, 64)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=5e-3)
    x4 = np.asarray(m.obs_fine, np.float32)
    assert np.median(np.sum(t * x4, axis=1)) < 0.99
    bare = tmp_path / 'bare.nremap'
    assert main(['build-map', str(root), str(bare), '--split', 'tiny', '--max-points', '200',
                 '--keypoints', 'grid', '--no-tracking-level']) == 0
    b = load_map(bare)
    assert b.tracking_spec is None and b.obs_fine_tracking is None
    assert '--no-tracking-level' in b.metadata.provenance['command']
    assert np.array_equal(b.obs_fine, m.obs_fine) and np.array_equal(b.obs_uv, m.obs_uv)
    png = tmp_path / 'map.png'
    assert main(['viz', str(out), '-o', str(png)]) == 0
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
