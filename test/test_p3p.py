"""Batched torch P3P against PoseLib's P3P (the reference) and ground truth."""
from __future__ import annotations

import numpy as np
import poselib
import torch
from scipy.spatial.transform import Rotation

from nre_ros.solver.p3p import p3p


def _problems(m, seed=0):
    rng = np.random.default_rng(seed)
    R = Rotation.random(m, random_state=seed).as_matrix()
    t = rng.normal(size=(m, 3))
    pc = rng.uniform(-1, 1, (m, 3, 3))
    pc[..., 2] += 4
    X = np.einsum('mji,mkj->mki', R, pc - t[:, None])
    return pc / np.linalg.norm(pc, axis=-1, keepdims=True), X, R, t


def test_recovers_ground_truth():
    b, X, R, t = _problems(500)
    Rs, ts, valid = p3p(torch.tensor(b), torch.tensor(X))
    err = (np.linalg.norm(Rs.numpy() - R[:, None], axis=(-1, -2))
           + np.linalg.norm(ts.numpy() - t[:, None], axis=-1))
    err[~valid.numpy()] = np.inf
    assert np.median(err.min(axis=1)) < 1e-12
    assert np.all(err.min(axis=1) < 1e-6)  # worst case: a near-degenerate triplet


def test_same_solutions_as_poselib():
    b, X, _, _ = _problems(200, seed=1)
    Rs, ts, valid = p3p(torch.tensor(b), torch.tensor(X))
    for i in range(200):
        ref = poselib.p3p(b[i], X[i])
        ours = [(Rs[i, k].numpy(), ts[i, k].numpy()) for k in range(4) if valid[i, k]]
        assert len(ours) == len(ref), i
        for pose in ref:
            d = [np.abs(R - pose.R).max() + np.abs(t - pose.t).max() for R, t in ours]
            assert min(d) < 1e-6, i


def test_degenerate_triplets_are_invalid():
    b, X, _, _ = _problems(3, seed=2)
    X[:, 2] = X[:, 0] + 2.0 * (X[:, 1] - X[:, 0])  # collinear points
    _, _, valid = p3p(torch.tensor(b), torch.tensor(X))
    assert not bool(valid.any())


def test_project_in_grid_keeps_points_in_front_and_inside():
    from nre_ros.solver.se3 import project_in_grid
    K = torch.tensor([[10.0, 0, 4.5], [0, 10.0, 2.5], [0, 0, 1]], dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, 3] = torch.tensor([0.0, 0.0, 1.0])                  # world origin 1 m ahead
    pts = torch.tensor([[0.0, 0.0, 0.0],      # centre (4.5, 2.5): inside
                        [-0.45, -0.25, 0.0],  # (0, 0): corner cell centre, inside
                        [0.46, 0.0, 0.0],     # u = 9.1 > W - 1 = 9: outside
                        [0.0, 0.0, -2.0]],    # behind the camera
                       dtype=torch.float64)
    uv, index = project_in_grid(pts, T, K, (10, 6))
    assert index.tolist() == [0, 1]
    torch.testing.assert_close(uv[:2], torch.tensor([[4.5, 2.5], [0.0, 0.0]],
                                                    dtype=torch.float64))


def test_compiled_kernel_equals_torch(monkeypatch):
    """The numba kernel of the CPU path (nre_ros.solver._p3p_kernels) gives the torch code's
    solutions, including on degenerate triplets (collinear points, repeated bearings)."""
    import pytest
    from nre_ros import compiled
    from nre_ros.solver.p3p import KERNELS
    if compiled.kernels(KERNELS) is None:
        pytest.skip('compiled kernels unavailable (numba missing or NRE_ROS_NUMBA=0)')
    b, X, _, _ = _problems(300, seed=2)
    X[:5, 2] = X[:5, 0] + 0.5 * (X[:5, 1] - X[:5, 0])          # collinear world points
    b[5:10, 1] = b[5:10, 0]                                       # two equal bearings
    X[10:15, 1] = X[10:15, 0]                                     # two equal points
    bt, Xt = torch.tensor(b), torch.tensor(X)
    R, t, valid = p3p(bt, Xt)
    monkeypatch.setenv('NRE_ROS_NUMBA', '0')
    R_ref, t_ref, valid_ref = p3p(bt, Xt)
    assert torch.equal(valid, valid_ref) and int(valid.sum()) > 300
    np.testing.assert_allclose(R[valid].numpy(), R_ref[valid].numpy(), atol=1e-9)
    np.testing.assert_allclose(t[valid].numpy(), t_ref[valid].numpy(), atol=1e-9)
