"""Run metrics on hand-computable trajectories (nre_ros/eval/run_metrics.py)."""
import numpy as np
import pytest

from nre_ros.eval import run_metrics as rm
from nre_ros.geometry import invert, make_transform, so3_exp


def test_camera_centres_of_camera_from_world_poses():
    T_world_cam = make_transform(so3_exp([0.3, -0.2, 1.0]), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(rm.camera_centres(invert(T_world_cam)[None]), [[1, 2, 3]],
                               atol=1e-12)


def test_ate_is_rmse_of_centre_distances():
    gt = np.zeros((2, 3))
    est = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])          # distances 5 and 0
    assert rm.ate_rmse(est, gt) == pytest.approx(np.sqrt(25 / 2))
    assert rm.ate_rmse(gt + [0, 0, 2], gt) == pytest.approx(2.0)
    assert np.isnan(rm.ate_rmse(np.zeros((0, 3)), np.zeros((0, 3))))


def test_time_to_first_fix():
    stamps = np.array([100.0, 100.5, 101.0, 101.5])
    fixed = np.array([False, False, True, True])
    assert rm.time_to_first_fix(stamps, fixed) == pytest.approx(1.0)
    assert rm.time_to_first_fix(stamps, fixed, latency_s=[0, 0, 0.25, 9]) == pytest.approx(1.25)
    assert np.isnan(rm.time_to_first_fix(stamps, np.zeros(4, bool)))
    assert rm.time_to_first_fix(stamps, np.ones(4, bool)) == 0.0


def test_availability_and_fixes_per_second():
    stamps = 10.0 + 0.1 * np.arange(10)            # 10 frames at 10 Hz: 1 s of data
    fixed = np.arange(10) % 2 == 0                 # 5 fixes
    assert rm.availability(fixed) == pytest.approx(0.5)
    assert rm.run_duration_s(stamps) == pytest.approx(1.0)
    assert rm.fixes_per_second(stamps, fixed) == pytest.approx(5.0)
    assert rm.fixes_per_second(stamps, np.ones(10, bool)) == pytest.approx(10.0)
    assert np.isnan(rm.availability([]))


def test_latency_percentiles_linear_interpolation():
    ms = np.arange(1, 101, dtype=float)            # 1..100
    p = rm.latency_percentiles(ms)
    assert p == {'p50': pytest.approx(50.5), 'p90': pytest.approx(90.1),
                 'p99': pytest.approx(99.01)}
    p = rm.latency_percentiles([10.0, 20.0, np.nan])  # NaN (never processed) ignored
    assert p['p50'] == pytest.approx(15.0)
    assert np.isnan(rm.latency_percentiles([])['p90'])


def test_nees_stats_and_chi2_bound():
    from scipy.stats import chi2
    assert rm.CHI2_6DOF_95 == pytest.approx(chi2.ppf(0.95, 6))
    s = rm.nees_stats([2.0, 6.0, 10.0, 20.0, np.nan])
    assert s['nees_mean'] == pytest.approx(9.5)
    assert s['nees_within_95'] == pytest.approx(0.75)
    assert s['nees_count'] == 4


def test_predicted_sigmas_from_covariance_blocks():
    C = np.diag([0.01, 0.04, 0.04, 0.0, 0.0, np.radians(2.0) ** 2])
    st, sr = rm.predicted_sigmas(C)
    assert st == pytest.approx(0.3)
    assert sr == pytest.approx(2.0)
