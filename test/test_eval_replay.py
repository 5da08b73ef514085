"""Replay through the localization stream with fake localizers: frame dropping, gating, run
summary, CSV/TUM/JSON outputs."""
import csv
import json

import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.eval.bags import BagFrame
from nre_ros.eval.evaluate import (DROPPED_BUSY, DROPPED_RATE, FAILURE, FIX, REJECTED, ReplayMode,
                                   replay, summarize_run, write_outputs)
from nre_ros.geometry import Sim3, invert, make_transform, so3_exp
from nre_ros.results import Failure, Result
from nre_ros.stream import StreamConfig

CAMERA = Camera.from_params(8, 6, 10.0, 10.0, 3.5, 2.5)
# every fix published at once, no rate limit, no odometry needed
PLAIN = StreamConfig(min_consistent_fixes=1, max_rate=0.0, tf_mode='map_to_base')


def run(frames, loc, mode=ReplayMode(), config=PLAIN, **kw):
    return replay(frames, loc, mode, config, np.eye(4), **kw)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class ScriptedLocalizer:
    """Returns scripted outcomes in call order; each call takes ``durations_s[k]`` on the clock."""

    def __init__(self, outcomes, durations_s, clock):
        self.outcomes, self.durations, self.clock = list(outcomes), list(durations_s), clock
        self.calls = 0
        self.map_T_model = Sim3.identity()

    def localize(self, image, camera, prior=None, depth=None):
        assert image.shape == (6, 8, 3) and camera is CAMERA and prior is None
        self.clock.t += self.durations[self.calls % len(self.durations)]
        out = self.outcomes[self.calls % len(self.outcomes)]
        self.calls += 1
        return out(image) if callable(out) else out


def frames_at(stamps_s, poses=None):
    out = []
    for i, t in enumerate(stamps_s):
        T = np.eye(4) if poses is None else poses[i]
        rgb = np.full((6, 8, 3), i, np.uint8)
        out.append(BagFrame(int(round(t * 1e9)), rgb, CAMERA, T))
    return out


def result(T_cam_world, sigma=0.1, ms=None):
    return Result(T_cam_world=T_cam_world, covariance=np.eye(6) * sigma ** 2, cost=1.0,
                  mean_cost=0.1, num_points=10, num_supported=8, iterations=3,
                  timings_ms=ms or {'coarse': 5.0, 'fine': 2.0})


def test_realtime_drops_frames_that_arrive_while_busy():
    clock = FakeClock()
    loc = ScriptedLocalizer([result(np.eye(4))], [0.25], clock)
    frames = frames_at(10.0 + 0.1 * np.arange(6))                  # 10 Hz, 250 ms each
    recs = run(frames, loc, ReplayMode(realtime=True), clock=clock)
    assert [r.status for r in recs] == [FIX, DROPPED_BUSY, DROPPED_BUSY, FIX, DROPPED_BUSY,
                                        DROPPED_BUSY]
    assert loc.calls == 2
    assert recs[0].latency_ms == pytest.approx(250.0)
    offline = run(frames, ScriptedLocalizer([result(np.eye(4))], [0.25], clock), clock=clock)
    assert all(r.status == FIX for r in offline)


def test_max_rate_limits_accepted_frames():
    clock = FakeClock()
    loc = ScriptedLocalizer([result(np.eye(4))], [0.05], clock)
    frames = frames_at(0.1 * np.arange(7))
    recs = run(frames, loc, config=StreamConfig(min_consistent_fixes=1, max_rate=4.0,
                                                tf_mode='map_to_base'), clock=clock)  # >= 0.25 s
    assert [r.status for r in recs] == [FIX, DROPPED_RATE, DROPPED_RATE, FIX, DROPPED_RATE,
                                        DROPPED_RATE, FIX]


def hand_run():
    """4 frames 0.5 s apart: failure, fixes 0.1 m and 0.3 m off, a 6 m false fix."""
    clock = FakeClock()
    shift = lambda d: make_transform(np.eye(3), [d, 0, 0])         # noqa: E731
    outcomes = [Failure('too_few_points', 'x', timings_ms={'coarse': 1.0}), result(shift(0.1)),
                result(shift(0.3)), result(shift(6.0))]
    loc = ScriptedLocalizer(outcomes, [0.1, 0.2, 0.3, 0.4], clock)
    return run(frames_at([10.0, 10.5, 11.0, 11.5]), loc, clock=clock)


def test_summary_of_hand_computed_run():
    m = summarize_run(hand_run())
    assert (m['num_frames'], m['num_processed'], m['num_fixes']) == (4, 4, 3)
    assert m['availability'] == pytest.approx(0.75)
    assert m['ate_rmse_m'] == pytest.approx(np.sqrt((0.01 + 0.09 + 36.0) / 3))
    assert m['time_to_first_fix_s'] == pytest.approx(0.5 + 0.2)    # stamp + latency
    assert m['fixes_per_second'] == pytest.approx(3 / 2.0)         # 4 frames x 0.5 s
    assert m['latency_ms']['p50'] == pytest.approx(250.0)
    assert m['latency_ms']['p90'] == pytest.approx(370.0)
    assert m['latency_ms']['p99'] == pytest.approx(397.0)
    assert (m['recall_25cm_2deg'], m['recall_50cm_5deg'], m['recall_5m_10deg']) == \
        pytest.approx((0.25, 0.5, 0.5))
    assert m['false_fix_rate'] == pytest.approx(1 / 3) and m['num_false_fixes'] == 1
    assert m['median_t_m'] == pytest.approx(0.3)
    assert m['failure_reasons'] == {'too_few_points': 1}
    assert m['stage_latency_ms']['coarse']['p50'] == pytest.approx(5.0)
    # NEES with sigma 0.1 m: xi = (d, 0, 0, 0, 0, 0) -> d^2 / 0.01
    assert m['nees_median'] == pytest.approx(9.0)


def test_outputs_csv_tum_json(tmp_path):
    recs = hand_run()
    recs[0].T_gt = make_transform(so3_exp([0.1, 0.2, 0.3]), [1, 2, 3])   # a non-trivial GT
    m = summarize_run(recs)
    paths = write_outputs(tmp_path, recs, m, {'bag': 'fake'})
    rows = list(csv.DictReader(open(paths['csv'])))
    assert [r['status'] for r in rows] == [FAILURE, FIX, FIX, FIX]
    assert rows[0]['stamp_s'] == '10.000000000' and rows[0]['reason'] == 'too_few_points'
    assert float(rows[2]['t_err_m']) == pytest.approx(0.3)
    assert float(rows[1]['latency_ms']) == pytest.approx(200.0)
    assert float(rows[1]['ms_fine']) == pytest.approx(2.0)
    from nre_ros.datasets import read_tum_poses
    t_est, T_est = read_tum_poses(paths['estimate'])
    t_gt, T_gt = read_tum_poses(paths['ground_truth'])
    np.testing.assert_allclose(t_est, [10.5, 11.0, 11.5])
    np.testing.assert_allclose(t_gt, [10.0, 10.5, 11.0, 11.5])
    np.testing.assert_allclose(T_gt[0], invert(recs[0].T_gt), atol=1e-8)   # camera in map
    np.testing.assert_allclose(T_est[2][:3, 3], [-6.0, 0, 0], atol=1e-8)
    data = json.loads(paths['summary'].read_text())
    assert data['metrics']['num_fixes'] == 3 and data['meta']['bag'] == 'fake'
    html = paths['report'].read_text()
    assert html.count('data:image/png;base64,') == 4
    assert 'http://' not in html and 'https://' not in html        # self-contained


def test_oracle_noise_gives_consistent_nees():
    from nre_ros.eval.fakes import OracleLocalizer
    rng = np.random.default_rng(3)
    poses = [make_transform(so3_exp(rng.normal(size=3)), rng.normal(size=3)) for _ in range(300)]
    frames = []
    for i, T in enumerate(poses):
        rgb = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        frames.append(BagFrame(i * 10 ** 8, rgb, CAMERA, T))
    oracle = OracleLocalizer.from_frames(frames, sigma_t_m=0.05, sigma_r_deg=1.0, fail_rate=0.2)
    m = summarize_run(run(frames, oracle))
    assert m['nees_mean'] == pytest.approx(6.0, rel=0.2)
    assert m['availability'] == pytest.approx(0.8, abs=0.08)
    assert m['failure_reasons'].keys() == {'oracle_dropout'}
    assert m['ate_rmse_m'] == pytest.approx(0.05 * np.sqrt(3), rel=0.2)


def test_node_defaults_gate_the_first_fix_and_need_odometry():
    """With the node's default settings the first fix waits for a second consistent one, and
    map_to_odom needs odom -> base at the image stamp."""
    clock = FakeClock()
    frames = frames_at([10.0, 10.5, 11.0])
    recs = replay(frames, ScriptedLocalizer([result(np.eye(4))], [0.1], clock), ReplayMode(),
                  StreamConfig(), np.eye(4), clock=clock)
    assert [r.status for r in recs] == [FAILURE] * 3
    assert {r.reason for r in recs} == {'tf_missing'}
    odom = [BagFrame(f.stamp_ns, f.rgb, f.camera, f.T_world_cam, None, np.eye(4)) for f in frames]
    recs = replay(odom, ScriptedLocalizer([result(np.eye(4))], [0.1], clock), ReplayMode(),
                  StreamConfig(), np.eye(4), clock=clock)
    assert [r.status for r in recs] == [REJECTED, FIX, FIX]
    assert recs[0].reason == 'gate: first fix: 1/2 consistent fixes' and recs[0].T_est is None
    m = summarize_run(recs)
    assert m['num_fixes'] == 2 and m['num_rejected_by_gate'] == 1
