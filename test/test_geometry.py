import numpy as np
import pytest
import transforms3d

from nre_ros import geometry as g
from nre_ros.errors import ShapeError


def random_transforms(n, seed=0):
    rng = np.random.default_rng(seed)
    R = g.so3_exp(rng.normal(size=(n, 3)))
    return g.make_transform(R, rng.normal(size=(n, 3)))


def test_inverse_and_composition_identities():
    T_a_b, T_b_c = random_transforms(2)
    np.testing.assert_allclose(T_a_b @ g.invert(T_a_b), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(g.invert(T_a_b @ T_b_c), g.invert(T_b_c) @ g.invert(T_a_b),
                               atol=1e-12)
    p_c = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(g.transform_points(T_a_b @ T_b_c, p_c),
                               g.transform_points(T_a_b, g.transform_points(T_b_c, p_c)),
                               atol=1e-12)
    # batched inverse equals per-item inverse
    Ts = random_transforms(4, seed=3)
    np.testing.assert_allclose(g.invert(Ts)[2], g.invert(Ts[2]), atol=1e-12)


def test_quaternion_matrix_against_transforms3d():
    rng = np.random.default_rng(2)
    for q in rng.normal(size=(20, 4)):
        q /= np.linalg.norm(q)
        R_ref = transforms3d.quaternions.quat2mat([q[3], q[0], q[1], q[2]])  # scalar first
        np.testing.assert_allclose(g.quat_to_matrix(q), R_ref, atol=1e-12)
        q_back = g.matrix_to_quat(R_ref)
        assert q_back[3] >= 0
        np.testing.assert_allclose(np.abs(q_back @ q), 1.0, atol=1e-12)
        wxyz = transforms3d.quaternions.mat2quat(R_ref)
        np.testing.assert_allclose(np.abs(np.dot(wxyz, [q[3], *q[:3]])), 1.0, atol=1e-12)


def test_tum_rows_round_trip():
    T = random_transforms(6, seed=4)
    np.testing.assert_allclose(g.tum_to_pose(g.pose_to_tum(T)), T, atol=1e-12)


def test_so3_exp_log_round_trip_and_skew():
    v = np.array([0.3, -0.2, 1.1])
    np.testing.assert_allclose(g.so3_log(g.so3_exp(v)), v, atol=1e-12)
    w = np.array([0.5, 2.0, -1.0])
    np.testing.assert_allclose(g.skew(v) @ w, np.cross(v, w), atol=1e-12)


def test_adjoint_maps_left_increments():
    """T_a_b @ exp(xi_b) == exp(Ad(T_a_b) xi_b) @ T_a_b for twists (rho, phi)."""
    from scipy.linalg import expm
    T = random_transforms(1, seed=5)[0]
    xi = np.array([0.01, -0.02, 0.03, 0.004, -0.005, 0.006])

    def hat(x):
        M = np.zeros((4, 4))
        M[:3, :3] = g.skew(x[3:])
        M[:3, 3] = x[:3]
        return M
    np.testing.assert_allclose(T @ expm(hat(xi)), expm(hat(g.adjoint(T) @ xi)) @ T, atol=1e-12)


def test_pose_error():
    T = random_transforms(1, seed=6)[0]
    d = g.make_transform(g.so3_exp([0, 0, np.radians(3.0)]), [0, 0, 0])
    dt, dr = g.pose_error(d @ T, T)
    assert dr == pytest.approx(3.0, abs=1e-9)
    # rotating about the camera centre moves the world-to-camera t but not the centre
    assert dt == pytest.approx(0.0, abs=1e-9)
    shift = g.make_transform(np.eye(3), [0.1, 0, 0])
    dt, dr = g.pose_error(shift @ T, T)
    assert dt == pytest.approx(0.1) and dr == pytest.approx(0.0, abs=1e-6)


def test_bad_shapes_raise():
    with pytest.raises(ShapeError):
        g.invert(np.eye(3))
    with pytest.raises(ShapeError):
        g.quat_to_matrix([0, 0, 0, 0])
    assert not g.is_rigid(np.diag([1, 1, -1, 1.0]))
    assert g.is_rigid(random_transforms(1)[0])


def test_se3_exp_matches_expm_and_inverts_se3_log():
    from scipy.linalg import expm
    rng = np.random.default_rng(3)
    xis = np.concatenate([rng.normal(size=(5, 6)), [[0.1, 0.2, 0.3, 0, 0, 0],
                                                    [0.1, -0.2, 0.3, 1e-9, 0, -2e-9]]])
    for xi in xis:
        M = np.zeros((4, 4))
        M[:3, :3], M[:3, 3] = g.skew(xi[3:]), xi[:3]
        np.testing.assert_allclose(g.se3_exp(xi), expm(M), atol=1e-12)
        if np.linalg.norm(xi[3:]) < np.pi:
            np.testing.assert_allclose(g.se3_log(g.se3_exp(xi)), xi, atol=1e-10)
    # one twist takes the scalar path, several the vectorised one: the same transforms
    np.testing.assert_allclose(g.se3_exp(xis), np.stack([g.se3_exp(x) for x in xis]), atol=1e-14)


def test_rotation_angle_deg_broadcasts():
    R = g.so3_exp(np.array([[0, 0, np.radians(30.0)], [np.radians(-50.0), 0, 0]]))
    np.testing.assert_allclose(g.rotation_angle_deg(R, np.eye(3)), [30.0, 50.0], atol=1e-9)
    np.testing.assert_allclose(g.rotation_angle_deg(R[0], R[0]), 0.0, atol=1e-5)


def test_sim3_camera_pose_round_trip_and_matrix():
    rng = np.random.default_rng(4)
    sim = g.Sim3(g.so3_exp(rng.normal(size=3)), rng.normal(size=3), 2.5)
    S = sim.matrix()
    back = g.Sim3.from_matrix(S)
    assert back.scale == pytest.approx(2.5)
    np.testing.assert_allclose(back.rotation, sim.rotation, atol=1e-12)
    T_cam_model = g.make_transform(g.so3_exp(rng.normal(size=3)), rng.normal(size=3))
    T_map_cam = sim.camera_pose_in_map(T_cam_model)
    assert g.is_rigid(T_map_cam)
    # the camera centre maps like a point through the similarity
    c_model = g.invert(T_cam_model)[:3, 3]
    np.testing.assert_allclose(T_map_cam[:3, 3], S[:3, :3] @ c_model + S[:3, 3], atol=1e-10)
    np.testing.assert_allclose(sim.camera_pose_in_model(T_map_cam), T_cam_model, atol=1e-10)
    I = g.Sim3.identity()
    np.testing.assert_allclose(I.camera_pose_in_map(T_cam_model), g.invert(T_cam_model),
                               atol=1e-15)
    with pytest.raises(ShapeError, match='non-positive scale'):
        g.Sim3.from_matrix(np.diag([-1.0, 1.0, 1.0, 1.0]))
