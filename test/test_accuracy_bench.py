"""benchmarks/accuracy.py bookkeeping on synthetic per-query records (no model, no data, fast):
fix-threshold choice from out-of-map runs, table rows, strict JSON with the issue's keys."""
import json

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope='module')
def acc():
    return load_benchmark('accuracy.py', 'accuracy_bench')


def _pose(t):
    T = np.eye(4)
    T[:3, 3] = t
    return T


def _raw(acc):
    gt = [_pose([0, 0, 0]), _pose([1, 0, 0]), _pose([0, 1, 0]), _pose([0, 0, 1])]
    near = [_pose(np.asarray(g[:3, 3]) + [0.1, 0, 0]) for g in gt]
    methods = ['nre_ros', 'nre_ros_rgbd', 'xfeat_mnn_poselib']
    inmap = {'est': {'nre_ros': [(near[0], None, 100.0), (None, None, 90.0),
                                 (near[2], None, 110.0), (_pose([9, 9, 9]), None, 120.0)],
                     'nre_ros_rgbd': [None] * 4,                    # no depth: n/a
                     'xfeat_mnn_poselib': [(near[i], 10 * i + 5, 50.0) for i in range(4)]},
             'T_gt': gt, 'timings': {'global': [], 'tracking': [], 'rgbd': []},
             'track': [], 'nees': [], 'n': 4}
    # out-of-map: 200 queries, inlier counts 0..19 (10 each); any pose is a false fix
    oom = {'est': {'nre_ros': [(None, None, 80.0)] * 200,
                   'nre_ros_rgbd': [(None, None, 85.0)] * 200,
                   'xfeat_mnn_poselib': [(_pose([0, 0, 0]), i // 10, 40.0) for i in range(200)]},
           'T_gt': [None] * 200, 'timings': {'global': [], 'tracking': [], 'rgbd': []},
           'track': [], 'nees': [], 'n': 200}
    return methods, {'fr1_hard': inmap, 'out_of_map_cabinet_in_fr1': oom}


def test_threshold_keeps_out_of_map_fixes_at_most_one_percent(acc):
    methods, raw = _raw(acc)
    th, info = acc.choose_thresholds(raw, methods, acc.DEFAULT_THRESHOLDS)
    assert list(th) == ['xfeat_mnn_poselib']
    # counts >= 19: 10 of 200 (5 %); >= 20: none -> 20 is the smallest with <= 1 %
    assert th['xfeat_mnn_poselib'] == 20
    assert info['xfeat_mnn_poselib']['fixes_at_threshold'] == 0
    # without out-of-map runs the defaults apply
    th2, _ = acc.choose_thresholds({'fr1_hard': raw['fr1_hard']}, methods,
                                   {'xfeat_mnn_poselib': 12})
    assert th2 == {'xfeat_mnn_poselib': 12}


def test_rows_and_strict_json(acc):
    methods, raw = _raw(acc)
    res = acc.table_rows(raw, methods, {'xfeat_mnn_poselib': 20})
    r = res['nre_ros']['fr1_hard']
    assert r['num_published'] == 3 and r['recall_25cm_2deg'] == pytest.approx(0.5)
    assert r['false_fix_rate'] == pytest.approx(1 / 3)         # the (9, 9, 9) pose
    assert res['xfeat_mnn_poselib']['fr1_hard']['num_published'] == 2  # inliers 25, 35
    assert res['xfeat_mnn_poselib']['out_of_map']['false_fix_rate'] == 0.0
    assert res['nre_ros_rgbd']['fr1_hard']['num_queries'] == 0
    out = json.loads(acc.to_json(res))      # strict: no NaN tokens
    assert 'NaN' not in acc.to_json(res)
    assert set(out) == set(methods)
    assert 'nre_ros' in out and all(m == 'nre_ros' or m.startswith('nre_ros_') or
                                    not m.startswith('nre_ros') for m in out)
    for per_ds in out.values():
        for row in per_ds.values():
            assert list(row) == list(acc.KEYS)
    assert out['nre_ros_rgbd']['fr1_hard']['recall_25cm_2deg'] is None
    assert out['nre_ros']['out_of_map_cabinet_in_fr1']['median_t_m'] is None
    assert out['nre_ros']['out_of_map']['false_fix_rate'] == 0.0


def test_megadepth_map_builds_is_cached_and_localizes_its_query(acc, megadepth_pair, tmp_path):
    """accuracy.py's MegaDepth map (one keyframe + the pair's given 3D points, built with the
    product's networks) is a valid map the cache keeps, and its one query lands within the
    benchmark's threshold of the ground truth (SfM units)."""
    from nre_ros.geometry import pose_error
    from nre_ros.maps import load_map, validate_map
    from nre_ros.pipeline import PipelineConfig, Relocalizer, load_configured_model
    cfg = PipelineConfig()
    model = load_configured_model('xfeat-ms', cfg)
    path = acc.get_map('megadepth', tmp_path, model)
    stamp = path.stat().st_mtime_ns
    assert acc.get_map('megadepth', tmp_path, model) == path     # kept, not rebuilt
    assert path.stat().st_mtime_ns == stamp
    m = load_map(path, model.spec)
    validate_map(m)
    assert m.num_keyframes == 1 and m.num_points > 100 and m.kf_brightness is not None
    (query,) = acc.queries('nre_megadepth_pair', 1, None)
    out = Relocalizer(m, model, cfg).localize(query.image(), query.camera)
    assert out.ok, out
    dt, dr = pose_error(out.T_cam_world, query.T_gt)
    assert dt < 0.25 and dr < 2.0, (dt, dr)
