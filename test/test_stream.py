"""nre_ros.stream without ROS: settings, consistency gate, covariance model, and the stream's
pairing, dropping, priors, gating, lost state and map generation."""
from __future__ import annotations

import dataclasses
import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.errors import ConfigError, InputError
from nre_ros.geometry import Sim3, invert, make_transform, so3_exp, so3_log
from nre_ros.results import Failure, Result
from nre_ros.stream import (ACCEPTED, BAD_INPUT, DROPPED_BUSY, DROPPED_RATE, FAILED, IDLE,
                            PENDING, QUEUED, REJECTED, STALE, TF_MISSING, CovarianceModel,
                            FixGate, FrameInputs, GateConfig, LocalizationStream, StreamConfig)
from nre_ros.stream.config import load_params_file
from nre_ros.stream.stats import LOCALIZED, LOST, NOT_LOCALIZED

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
S = 1_000_000_000
CAMERA = Camera.from_params(8, 6, 10.0, 10.0, 3.5, 2.5)
RGB = np.zeros((6, 8, 3), np.uint8)


# ----------------------------------------------------------------------------- settings
def _generator():
    spec = importlib.util.spec_from_file_location('write_node_params',
                                                  REPO / 'scripts' / 'write_node_params.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_parameter_files_are_current():
    gen = _generator()
    assert (REPO / 'config' / 'nre_ros.yaml').read_text() == gen.yaml_text(), \
        'run python scripts/write_node_params.py'
    assert (REPO / 'docs' / 'parameters.md').read_text() == gen.docs_text(), \
        'run python scripts/write_node_params.py'


def test_yaml_states_every_default_with_its_type():
    from nre_ros.ros.params import PARAMETERS, NodeConfig, defaults
    import yaml
    assert list(yaml.safe_load((REPO / 'config' / 'nre_ros.yaml').read_text())) == ['/**']
    values = load_params_file(REPO / 'config' / 'nre_ros.yaml')   # wildcard: any namespace
    assert values == defaults()
    for name, value in values.items():   # same types as declared (ROS rejects int for double)
        assert type(value) is type(defaults()[name]), name
    assert {f.name for f in dataclasses.fields(NodeConfig)} == {p.field for p in PARAMETERS}
    assert StreamConfig.from_params(values) == StreamConfig()


def test_params_file_wildcard_node_and_overrides(tmp_path):
    f = tmp_path / 'p.yaml'
    f.write_text('/**:\n  ros__parameters:\n    max_rate: 2\n    initial_pose: {x: 1.5}\n'
                 'nre_relocalization:\n  ros__parameters:\n    max_rate: 3.0\n'
                 'other:\n  ros__parameters:\n    min_consistent_fixes: 7\n')
    values = load_params_file(f)
    assert values == {'max_rate': 3.0, 'initial_pose.x': 1.5}
    cfg = StreamConfig.from_params({**values, 'use_sim_time': True, 'queue_size': 4})
    assert (cfg.max_rate, cfg.initial_pose_x, cfg.min_consistent_fixes) == (3.0, 1.5, 2)


@pytest.mark.parametrize('values, match', [
    ({'max_cost': 3.0}, 'solver.verdict.max_mean_cost'),
    ({'min_inlier_ratio': 0.5}, 'solver.verdict.min_supported_fraction'),
    ({'min_points': 10}, 'solver.verdict.min_supported'),
    ({'engine_cache_dir': '/tmp'}, 'no effect'),
    ({'max_rate': -1.0}, 'max_rate'),
    ({'tf_mode': 'map_to_cam'}, "tf_mode='map_to_cam'"),
    ({'max_rate': 'fast'}, 'expected a float'),
])
def test_bad_and_removed_settings_are_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        StreamConfig.from_params(values)


def test_node_config_validation():
    from nre_ros.ros.params import NodeConfig
    ok = NodeConfig(map_path='x.nremap').validate()
    assert ok.tf_owner == 'map_to_odom' and ok.stream == StreamConfig()
    assert NodeConfig(map_path='x', publish_tf=False).tf_owner == 'none'
    with pytest.raises(ConfigError, match='map_path is empty'):
        NodeConfig().validate()
    with pytest.raises(ConfigError, match='distinct'):
        NodeConfig(map_path='x', odom_frame='map').validate()


# ----------------------------------------------------------------------------- gate
def _T(x, yaw=0.0):
    return make_transform(so3_exp([0, 0, yaw]), [x, 0, 0])


def test_gate_consistency_and_jumps():
    gate = FixGate(GateConfig(min_consistent_fixes=2, max_jump_translation=1.0))
    assert not gate.offer(_T(0.0))[0]
    assert not gate.offer(_T(5.0))[0]          # inconsistent: streak restarts
    assert gate.offer(_T(5.1))[0]              # 2 consistent -> accepted
    assert gate.offer(_T(5.5))[0]              # small move while localized
    ok, why = gate.offer(_T(20.0))
    assert not ok and 'jump' in why            # jump needs confirmation
    assert gate.offer(_T(20.1))[0]
    assert not gate.offer(_T(20.1, yaw=0.5))[0] is False   # rotation jumps off by default
    gate.reset()
    assert gate.current is None and not gate.offer(_T(20.1))[0]
    single = FixGate(GateConfig(min_consistent_fixes=1))
    assert single.offer(_T(1.0))[0] and single.offer(_T(100.0))[0]  # jumps off by default
    rot = FixGate(GateConfig(min_consistent_fixes=2, consistency_rotation=0.1))
    assert not rot.offer(_T(0.0))[0] and not rot.offer(_T(0.0, yaw=0.2))[0]   # 0.2 rad apart


# ----------------------------------------------------------------------------- covariance
def _random_T():
    return make_transform(so3_exp(RNG.normal(size=3)), RNG.normal(size=3))


def _similarity(s):
    T = _random_T()
    return Sim3(T[:3, :3], T[:3, 3], s)


def _random_spd(scale=1e-3):
    A = RNG.normal(size=(6, 6)) * np.sqrt(scale)
    return A @ A.T + np.eye(6) * scale * 0.1


def _monte_carlo(cov_xi, T_cam_model, T_base_cam, S_, n=40000):
    """Sample left increments on T_cam_model, push them through the stream's pose chain."""
    T_map_base0 = S_.camera_pose_in_map(T_cam_model) @ invert(T_base_cam)
    xs = RNG.normal(size=(n, 6)) @ np.linalg.cholesky(cov_xi).T
    dT = make_transform(so3_exp(xs[:, 3:]), xs[:, :3])  # first order is all that matters
    T_model_cam = invert(dT @ T_cam_model)              # (n, 4, 4)
    R_map_cam = S_.rotation @ T_model_cam[:, :3, :3]
    t_map_cam = S_.scale * T_model_cam[:, :3, 3] @ S_.rotation.T + S_.translation
    T_map_base = make_transform(R_map_cam, t_map_cam) @ invert(T_base_cam)
    out = np.concatenate([T_map_base[:, :3, 3] - T_map_base0[:3, 3],  # rotations: fixed axes
                          so3_log(T_map_base[:, :3, :3] @ T_map_base0[:3, :3].T)], axis=1)
    return T_map_base0, np.cov(out.T)


EXACT = CovarianceModel(min_position_std=0.0, min_rotation_std=0.0)


@pytest.mark.parametrize('scale', [1.0, 0.5])
def test_covariance_matches_monte_carlo(scale):
    cov_xi = _random_spd(1e-5)
    T_cam_model, T_base_cam = _random_T(), _random_T()
    S_ = Sim3.identity() if scale == 1.0 else _similarity(scale)
    T_map_base, cov_mc = _monte_carlo(cov_xi, T_cam_model, T_base_cam, S_)
    cov = EXACT.to_map(cov_xi, T_map_base, T_base_cam, scale)
    assert np.abs(cov - cov_mc).max() < 0.05 * np.abs(cov).max()
    np.testing.assert_allclose(np.diag(cov), np.diag(cov_mc), rtol=0.05)


def test_covariance_symmetric_pd_floors_scales_inflation():
    T_map_base, T_base_cam = _random_T(), _random_T()
    model = CovarianceModel(position_scale=4.0, rotation_scale=9.0, min_position_std=0.02,
                            min_rotation_std=0.005)
    for cov_xi in (_random_spd(1e-10), np.zeros((6, 6)), _random_spd(1e-2)):
        cov = model.to_map(cov_xi, T_map_base, T_base_cam)
        np.testing.assert_array_equal(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() > 0
        assert np.all(np.diag(cov)[:3] >= 0.02 ** 2 - 1e-15)
        assert np.all(np.diag(cov)[3:] >= 0.005 ** 2 - 1e-15)
    cov_xi = _random_spd(1e-2)
    base = EXACT.to_map(cov_xi, T_map_base, T_base_cam)
    scaled = model.to_map(cov_xi, T_map_base, T_base_cam)
    np.testing.assert_allclose(np.diag(scaled)[:3], 4 * np.diag(base)[:3], rtol=1e-9)
    np.testing.assert_allclose(np.diag(scaled)[3:], 9 * np.diag(base)[3:], rtol=1e-9)
    inflating = dataclasses.replace(EXACT, inflation_points=60)
    np.testing.assert_allclose(inflating.to_map(cov_xi, T_map_base, T_base_cam, 1.0, 20),
                               3 * base, rtol=1e-9)                      # 60 / 20 supported
    np.testing.assert_allclose(inflating.to_map(cov_xi, T_map_base, T_base_cam, 1.0, 100),
                               base, rtol=1e-9)                          # enough support
    assert inflating.inflation(0) == 1.0 and EXACT.inflation(5) == 1.0
    with pytest.raises(InputError):
        model.to_map(np.full((6, 6), np.nan), T_map_base, T_base_cam)


def test_prior_from_map_inverts_the_frame_change():
    cov_xi = _random_spd(1e-3)
    T_map_base, T_base_cam = _random_T(), _random_T()
    cov = EXACT.to_map(cov_xi, T_map_base, T_base_cam, 2.0)
    np.testing.assert_allclose(EXACT.prior_from_map(cov, T_map_base, T_base_cam, 2.0), cov_xi,
                               rtol=1e-6, atol=1e-12)
    rviz = np.zeros(36)
    rviz[0], rviz[7], rviz[35] = 0.25, 0.25, 0.07  # what "2D Pose Estimate" sends
    prior = CovarianceModel().prior_from_map(rviz, T_map_base, T_base_cam)
    assert np.linalg.eigvalsh(prior).min() > 0


# ----------------------------------------------------------------------------- the stream
T_MAP_CAM = make_transform(so3_exp([0.1, -0.2, 0.3]), [1.0, 2.0, 0.5])
T_BASE_CAM = make_transform(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
                            [0.2, 0.0, 0.3])
COV_XI = np.diag([1e-3, 2e-3, 3e-3, 1e-4, 2e-4, 3e-4])


class Fake:
    """A relocalizer returning a fixed pose (or a Failure), recording its priors."""

    def __init__(self, T_map_cam=T_MAP_CAM, map_T_model=None, fail=''):
        self.map_T_model = map_T_model or Sim3.identity()
        self.T_cam_model = self.map_T_model.camera_pose_in_model(T_map_cam)
        self.fail, self.priors = fail, []

    def localize(self, image, camera, prior=None, depth=None):
        self.priors.append(prior)
        if self.fail:
            return Failure(self.fail, 'fake failure', {'total': 1.0})
        return Result(self.T_cam_model, COV_XI, 10.0, 0.5, 20, 18, 3, {'total': 1.0})


def _stream(fake=None, **cfg):
    s = LocalizationStream(StreamConfig(**cfg), fake or Fake())
    s.activate()
    return s


def _run(stream, stamp, T_odom_base=np.eye(4), rgb=RGB, camera=CAMERA):
    """Feed one frame and process it at once; (admission, decision or None)."""
    stream.add_camera_info(stamp, camera)
    admission = stream.add_image(stamp, rgb)
    if admission != QUEUED:
        return admission, None
    frame = stream.take_frame()
    decision = stream.localize(frame, FrameInputs(rgb, frame.camera_info, None, T_BASE_CAM,
                                                  T_odom_base))
    stream.finish_frame()
    return admission, decision


def test_pairing_by_stamp_either_order_and_unpaired():
    s = _stream(max_rate=0.0)
    assert s.add_image(1 * S, 'img1') == PENDING
    assert s.add_image(2 * S, 'img2') == PENDING
    assert s.add_camera_info(2 * S, 'info2') == QUEUED      # img1 is older: dropped
    assert s.stats.frames_unpaired == 1
    frame = s.take_frame()
    assert (frame.stamp_ns, frame.image, frame.camera_info) == (2 * S, 'img2', 'info2')
    s.finish_frame()
    assert s.add_camera_info(3 * S, 'info3') is None
    assert s.add_image(3 * S, 'img3') == QUEUED              # info first, then the image
    for k in range(4, 9):                                    # never paired: only 3 are kept
        s.add_image(k * S, k)
    assert s.stats.frames_unpaired == 3 and s.stats.frames_received == 8


def test_rate_and_busy_dropping():
    s = _stream(max_rate=2.0)
    s.add_camera_info(10 * S, 'i')
    assert s.add_image(10 * S, 'a') == QUEUED
    frame = s.take_frame()                                   # busy from here
    s.add_camera_info(10 * S + S // 4, 'i')
    assert s.add_image(10 * S + S // 4, 'b') == DROPPED_RATE  # 0.25 s < 1 / 2 Hz
    s.add_camera_info(11 * S, 'i')
    assert s.add_image(11 * S, 'c') == DROPPED_BUSY
    s.finish_frame()
    s.add_camera_info(12 * S, 'i')
    assert s.add_image(12 * S, 'd') == QUEUED
    s.add_camera_info(13 * S, 'i')
    assert s.add_image(13 * S, 'e') == QUEUED                # not busy: replaces the queued one
    assert s.take_frame().image == 'e'
    assert (s.stats.frames_skipped_rate, s.stats.frames_dropped_busy) == (1, 2)
    assert frame.image == 'a'


def test_disabled_on_request_and_inactive_frames_are_idle():
    s = _stream(continuous=False, localize_on_startup=False, max_rate=0.0)
    assert _run(s, 1 * S)[0] == IDLE
    s.request_global()
    assert _run(s, 2 * S)[1].status == REJECTED               # one request = one frame
    assert _run(s, 3 * S)[0] == IDLE
    s2 = _stream(max_rate=0.0)
    s2.set_enabled(False)
    assert _run(s2, 1 * S)[0] == IDLE
    s2.set_enabled(True)
    s2.deactivate()
    assert _run(s2, 2 * S)[0] == IDLE


def test_gate_covariance_and_lost_state():
    s = _stream(max_rate=0.0, lost_after_failures=2)
    _, d = _run(s, 1 * S)
    assert d.status == REJECTED and d.reason == 'first fix: 1/2 consistent fixes'
    assert not d.publish_pose and s.fix is None
    assert s.stats.localization_state(2) == NOT_LOCALIZED
    _, d = _run(s, 2 * S)
    assert d.status == ACCEPTED and d.publish_pose
    np.testing.assert_allclose(d.T_map_base, T_MAP_CAM @ invert(T_BASE_CAM), atol=1e-12)
    np.testing.assert_allclose(d.T_map_odom, d.T_map_base, atol=1e-12)      # odom = identity
    np.testing.assert_allclose(d.covariance, CovarianceModel().to_map(COV_XI, d.T_map_base,
                                                                      T_BASE_CAM), atol=0)
    assert s.fix.stamp_ns == 2 * S and s.stats.localization_state(2) == LOCALIZED
    s._reloc.fail = 'too_few_supported'
    for k in (3, 4):
        _, d = _run(s, k * S)
        assert d.status == FAILED and d.reason == 'too_few_supported' and not d.publish_pose
    assert s.stats.localization_state(2) == LOST and s.stats.failures == 2
    s._reloc.fail = ''
    assert _run(s, 5 * S)[1].status == ACCEPTED           # recovered (within the jump limits)
    assert s.stats.localization_state(2) == LOCALIZED
    s.reset()
    assert s.fix is None and _run(s, 6 * S)[1].status == REJECTED


def test_publish_unconfirmed_when_asked():
    s = _stream(max_rate=0.0, publish_pose_only_when_localized=False)
    _, d = _run(s, 1 * S)
    assert d.status == REJECTED and d.publish_pose


def test_inputs_rejected_without_a_pose():
    s = _stream(max_rate=0.0)
    _, d = _run(s, 1 * S, rgb=np.zeros((5, 8, 3), np.uint8))
    assert d.status == BAD_INPUT and 'image is 8x5 but camera_info describes 8x6' in d.detail
    _, d = _run(s, 2 * S, T_odom_base=None)           # map_to_odom needs odometry
    assert d.status == TF_MISSING
    assert _run(_stream(max_rate=0.0, tf_mode='map_to_base'), 3 * S, T_odom_base=None)[1] \
        .status == REJECTED
    assert s.stats.bad_inputs == 1 and s.stats.tf_failures == 1
    assert s.stats.consecutive_failures == 2 and s._reloc.priors == []


def test_priors_initial_pose_initialpose_last_fix_and_global():
    fake = Fake(map_T_model=Sim3(so3_exp([0, 0, 0.4]), np.array([1.0, -2.0, 0.5]), 2.0))
    s = _stream(fake, max_rate=0.0, set_initial_pose=True, initial_pose_x=3.0,
                initial_pose_yaw=0.5, use_initial_guess=True, prior_search_radius=2.0)
    _run(s, 1 * S)
    p = fake.priors[-1]                               # initial_pose.*: base pose in map
    T_map_base = fake.map_T_model.camera_pose_in_map(p.T_cam_world) @ invert(T_BASE_CAM)
    np.testing.assert_allclose(T_map_base, make_transform(so3_exp([0, 0, 0.5]), [3, 0, 0]),
                               atol=1e-9)
    cov = CovarianceModel().to_map(p.covariance, T_map_base, T_BASE_CAM, 2.0)
    np.testing.assert_allclose(np.diag(cov), [4.0] * 3 + [0.25] * 3, rtol=1e-9)
    assert _run(s, 2 * S)[1].status == ACCEPTED         # no fix before it: no prior
    assert fake.priors[-1] is None
    odom = make_transform(so3_exp([0, 0, 0.2]), [0.5, 0.1, 0.0])
    T_map_odom = s.fix.T_map_odom
    _run(s, 4 * S, T_odom_base=odom)                  # last fix carried by odometry
    T_map_base = T_map_odom @ odom
    np.testing.assert_allclose(fake.priors[-1].T_cam_world, fake.map_T_model.camera_pose_in_model(
        T_map_base @ T_BASE_CAM), atol=1e-9)
    hint = make_transform(np.eye(3), [5.0, 6.0, 0.0])
    s.set_prior(hint, np.diag([0.25, 0.25, 0, 0, 0, 0.07]))
    assert s.pending_prior is not None
    _run(s, 5 * S)
    T_map_cam = fake.map_T_model.camera_pose_in_map(fake.priors[-1].T_cam_world)
    np.testing.assert_allclose((T_map_cam @ invert(T_BASE_CAM))[:3, 3], [5, 6, 0], atol=1e-9)
    s.set_prior(hint, np.eye(6))
    s.request_global()                                # forgets the prior
    _run(s, 6 * S)
    assert fake.priors[-1] is None and s.pending_prior is None


def test_new_map_drops_results_in_flight_and_uses_the_hint():
    s = _stream(max_rate=0.0, min_consistent_fixes=1)
    assert _run(s, 1 * S)[1].status == ACCEPTED
    s.add_camera_info(2 * S, CAMERA)
    s.add_image(2 * S, RGB)
    frame = s.take_frame()                            # in flight on the old map
    new = Fake()
    s.replace_relocalizer(new, hint_T_map_base=make_transform(np.eye(3), [1.0, 0, 0]))
    d = s.localize(frame, FrameInputs(RGB, CAMERA, None, T_BASE_CAM, np.eye(4)))
    s.finish_frame()
    assert d.status == STALE and not d.publish_pose and s.fix is None
    assert s.relocalizer is new and new.priors == []
    assert _run(s, 3 * S)[1].status == ACCEPTED and new.priors[0] is not None
    s.deactivate()                                    # results after deactivation: stale too
    s.activate()
    s.add_camera_info(4 * S, CAMERA)
    s.add_image(4 * S, RGB)
    frame = s.take_frame()
    s.deactivate()
    assert s.localize(frame, FrameInputs(RGB, CAMERA, None, T_BASE_CAM, np.eye(4))).status \
        == STALE


def test_worker_waits_and_depth_is_paired_by_stamp():
    s = _stream(max_rate=0.0, use_depth=True)
    got = []
    worker = threading.Thread(target=lambda: got.append(s.take_frame(timeout_s=5.0)))
    worker.start()
    s.add_depth(7 * S, 'depth7')
    s.add_camera_info(7 * S, 'info')
    s.add_image(7 * S, 'img')
    worker.join(5.0)
    assert got[0].image == 'img' and s.busy
    assert s.take_depth(8 * S, 0.0) is None and s.take_depth(7 * S, 0.0) == 'depth7'
    s.close()
    assert s.take_frame(timeout_s=5.0) is None        # closed: returns at once
