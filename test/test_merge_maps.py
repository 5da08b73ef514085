"""merge-maps: shards of one map join back into it; duplicate keyframes are dropped."""
from __future__ import annotations

import numpy as np
import pytest

from nre_ros.errors import InputError
from nre_ros.geometry import make_transform, so3_exp
from nre_ros.maps import load_map, validate_map
from nre_ros.maps.merge import concat_maps, merge_maps, select_keyframes, transformed

DEMO = 'maps/demo/fr1_rpy.nremap'


@pytest.fixture(scope='module')
def demo():
    from pathlib import Path
    return load_map(Path(__file__).resolve().parents[1] / DEMO)


def _same(a, b):
    for k in ('kf_T_cam_world', 'kf_global', 'kf_offsets', 'points_world', 'obs_point', 'obs_uv',
              'obs_coarse', 'obs_fine'):
        assert np.array_equal(np.asarray(getattr(a, k)), np.asarray(getattr(b, k))), k


def test_shards_merge_back_into_the_map_and_overlap_is_deduplicated(demo, tmp_path, capsys):
    from nre_ros.cli import main
    K = demo.num_keyframes
    first, second = np.arange(K) < K // 2, np.arange(K) >= K // 2 - 5   # 5 keyframes overlap
    a, b = select_keyframes(demo, first), select_keyframes(demo, second)
    validate_map(a)
    validate_map(b)
    a_path, b_path = a.save(tmp_path / 'a.nremap'), b.save(tmp_path / 'b.nremap')
    out = tmp_path / 'ab.nremap'
    tight = ['--min-translation', '1e-4', '--min-rotation', '0.01']     # exact copies only
    assert main(['merge-maps', str(a_path), str(b_path), str(out), *tight]) == 0
    assert '5 duplicates dropped' in capsys.readouterr().out
    m = load_map(out)
    assert m.keyframe_names == demo.keyframe_names
    assert np.array_equal(m.kf_T_cam_world, demo.kf_T_cam_world)
    assert np.array_equal(m.kf_brightness, demo.kf_brightness)
    assert m.num_observations == demo.num_observations
    # each keyframe sees the same 3D points with the same descriptors (points are not fused,
    # so a point seen from both halves appears twice)
    for i in (0, K // 2, K - 1):
        o, r = m.observations(i), demo.observations(i)
        assert np.array_equal(m.points_world[o.point_idx], demo.points_world[r.point_idx])
        assert np.array_equal(o.coarse, r.coarse)
    assert main(['merge-maps', str(a_path), str(b_path), str(out)]) != 0    # exists, no --force
    _, stats = merge_maps(a, b)          # default thresholds: near views of rpy dropped too
    assert stats['duplicates_dropped'] > 5


def test_merge_refuses_other_frames_and_keeps_moved_copies(demo):
    from dataclasses import replace
    other = replace(demo, metadata=replace(demo.metadata, map_frame='site_b'))
    with pytest.raises(InputError, match='map frame'):
        merge_maps(demo, other)
    with pytest.raises(InputError, match='nothing to merge'):
        merge_maps(demo, demo)
    far = transformed(demo, make_transform(so3_exp(np.array([0, 0, 1.0])), [50.0, 0, 0]))
    m, stats = merge_maps(demo, far)
    assert stats['duplicates_dropped'] == 0 and m.num_keyframes == 2 * demo.num_keyframes
    validate_map(m)
    c = concat_maps([demo, far])
    _same(c, m)
    assert np.array_equal(c.kf_brightness, np.tile(demo.kf_brightness, 2))
    # a part without a brightness record (an older map): the merged map has none
    assert concat_maps([demo, replace(far, kf_brightness=None)]).kf_brightness is None
    assert m.keyframe_names[demo.num_keyframes].endswith('#2')
    # the moved copy is consistent: points project to the same pixels in the moved keyframes
    from nre_ros.maps.stats import reprojection_errors
    assert np.allclose(reprojection_errors(m)[demo.num_observations:],
                       reprojection_errors(demo), atol=1e-2)


def test_tracking_level_round_trips_and_follows_keyframe_selection(demo, tmp_path):
    """The tracking level (xfeat-ms-head's fine descriptors beside xfeat-ms's) is saved and
    loaded, selected with its keyframes, joined when every part has it and dropped (with the
    spec) when one part lacks it; a spec without the tensor is a format error."""
    from dataclasses import replace

    from nre_ros.errors import MapFormatError
    assert demo.tracking_spec.name == 'xfeat-ms-head'
    assert demo.obs_fine_tracking.shape == (demo.num_observations, demo.tracking_spec.fine_dim)
    m = load_map(demo.save(tmp_path / 'copy.nremap'))
    assert m.tracking_spec == demo.tracking_spec
    assert np.array_equal(m.obs_fine_tracking, demo.obs_fine_tracking)
    obs = m.observations(3)
    s = slice(int(m.kf_offsets[3]), int(m.kf_offsets[4]))
    assert np.array_equal(obs.fine_tracking, m.obs_fine_tracking[s])
    K = demo.num_keyframes
    a, b = select_keyframes(demo, np.arange(K) < 10), select_keyframes(demo, np.arange(K) >= 10)
    joined = concat_maps([a, b])
    assert np.array_equal(joined.obs_fine_tracking, demo.obs_fine_tracking)
    bare = replace(b, tracking_spec=None, obs_fine_tracking=None)
    validate_map(bare)
    assert concat_maps([a, bare]).tracking_spec is None
    assert concat_maps([a, bare]).obs_fine_tracking is None
    with pytest.raises(MapFormatError, match='tracking level'):
        validate_map(replace(a, obs_fine_tracking=None))
    with pytest.raises(MapFormatError, match='obs_fine_tracking'):
        validate_map(replace(a, obs_fine_tracking=a.obs_fine_tracking[:, :32]))
    with pytest.raises(MapFormatError, match='another coarse level'):
        validate_map(replace(a, tracking_spec=replace(a.tracking_spec, coarse_dim=128)))
