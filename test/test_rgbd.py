"""RGB-D queries: batched Kabsch, depth MSAC on exact synthetic scenes, depth preprocessing and
the pipeline's depth path on real TUM frames."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from nre_ros.camera import Camera
from nre_ros.errors import InputError
from nre_ros.geometry import pose_error
from nre_ros.preprocess import prepare
from nre_ros.solver import se3
from nre_ros.solver.depth_init import DepthInitConfig, depth_msac, kabsch
from nre_ros.solver.synthetic import random_scene

STRIDE = 8


def test_kabsch_recovers_batched_rigid_motions_exactly():
    rng = np.random.default_rng(0)
    R = torch.tensor(Rotation.random(64, random_state=1).as_matrix())
    t = torch.tensor(rng.normal(size=(64, 3)))
    P = torch.tensor(rng.normal(size=(64, 3, 3)))
    Q = P @ R.transpose(1, 2) + t[:, None]
    R_est, t_est = kabsch(P, Q)
    assert torch.allclose(R_est, R, atol=1e-9) and torch.allclose(t_est, t, atol=1e-9)
    assert torch.allclose(torch.linalg.det(R_est), torch.ones(64, dtype=torch.float64))


def _depth_image(scene, uv_pixels: torch.Tensor, z: torch.Tensor, size=(640, 480)):
    depth = np.zeros(size[::-1], np.float32)
    x = uv_pixels[:, 0].round().long().numpy()
    y = uv_pixels[:, 1].round().long().numpy()
    inside = (x >= 0) & (x < size[0]) & (y >= 0) & (y < size[1])
    depth[y[inside], x[inside]] = z.numpy()[inside]
    return torch.from_numpy(depth)


def _grid_to_image() -> torch.Tensor:
    """Pixel = S @ grid cell (cell i of a stride-8 grid is centred on pixel 8 i + 3.5)."""
    return torch.tensor([[STRIDE, 0, (STRIDE - 1) / 2], [0, STRIDE, (STRIDE - 1) / 2], [0, 0, 1]],
                        dtype=torch.float64)


@pytest.mark.parametrize('outliers', [0.0, 0.5])
def test_depth_msac_recovers_the_pose_of_an_exact_scene(outliers):
    scene = random_scene(400, outlier_ratio=outliers, noise=0.0, seed=3)
    K_img = _grid_to_image() @ scene.K
    pc = se3.transform(scene.points_world, scene.T_cam_world[:3, :3], scene.T_cam_world[:3, 3])
    # depth where each map peaks: the true depth for inliers, another surface for outliers
    z = torch.where(scene.inlier, pc[:, 2], torch.empty_like(pc[:, 2]).uniform_(1.0, 8.0))
    pix = (torch.cat([scene.peaks, torch.ones(len(z), 1, dtype=torch.float64)], 1)
           @ _grid_to_image().T)[:, :2]
    depth = _depth_image(scene, pix, z)
    out = depth_msac(scene.points_world, scene.maps, scene.K, depth, K_img)
    assert out.T_cam_world is not None, out.detail
    dt, dr = pose_error(out.T_cam_world.numpy(), scene.T_cam_world.numpy())
    scene_depth = float(pc[:, 2].median())
    assert dr < 1.0 and dt < 0.02 * scene_depth, (dt, dr)
    assert out.support >= 0.8 * (1 - outliers) * out.num_candidates


def test_depth_in_wrong_units_gives_no_hypothesis():
    scene = random_scene(300, seed=4)
    K_img = _grid_to_image() @ scene.K
    pc = se3.transform(scene.points_world, scene.T_cam_world[:3, :3], scene.T_cam_world[:3, 3])
    pix = (torch.cat([scene.peaks, torch.ones(300, 1, dtype=torch.float64)], 1)
           @ _grid_to_image().T)[:, :2]
    depth = _depth_image(scene, pix, pc[:, 2] * 1.5)        # e.g. a wrong depth scale
    out = depth_msac(scene.points_world, scene.maps, scene.K, depth, K_img)
    assert out.T_cam_world is None and out.reason == 'no_hypothesis'


def test_empty_depth_is_too_few_maps():
    scene = random_scene(100, seed=5)
    out = depth_msac(scene.points_world, scene.maps, scene.K, torch.zeros(480, 640),
                     _grid_to_image() @ scene.K, config=DepthInitConfig())
    assert out.T_cam_world is None and out.reason == 'too_few_peaked_maps'


def test_prepare_rotates_and_validates_depth():
    cam = Camera.from_params(64, 48, 50.0, 50.0, 31.5, 23.5)
    image = np.zeros((48, 64, 3), np.uint8)
    depth = np.arange(48 * 64, dtype=np.float32).reshape(48, 64) / 100.0
    depth[0, 0] = np.nan
    prep = prepare(image, cam, 640, 1, depth)
    assert prep.depth.shape == prep.image.shape[:2] == (64, 48)
    np.testing.assert_array_equal(prep.depth, np.rot90(np.nan_to_num(depth), 1))
    with pytest.raises(InputError, match='float metres'):
        prepare(image, cam, 640, 0, np.nan_to_num(depth).astype(np.uint16))
    with pytest.raises(InputError, match='camera is 64x48'):
        prepare(image, cam, 640, 0, depth[:10])


def test_pipeline_uses_depth_on_real_frames(fr1_rpy):
    from nre_ros.datasets import TumSequence
    from nre_ros.geometry import invert
    from nre_ros.paths import shared_file
    from nre_ros.pipeline import PipelineConfig, Relocalizer
    reloc = Relocalizer.from_config(shared_file('maps/demo/fr1_rpy.nremap'), PipelineConfig())
    seq = fr1_rpy
    frame = TumSequence(shared_file('maps/demo/queries')).frames[0]
    frame = seq.frame(frame.name)
    out = reloc.localize(seq.load_rgb(frame), seq.camera, depth=seq.load_depth(frame))
    assert out.ok and out.info['init'] == 'depth'
    dt, dr = pose_error(out.T_cam_world, invert(frame.T_world_cam))
    assert dt < 0.05 and dr < 2.0
    bad = reloc.localize(seq.load_rgb(frame), seq.camera, depth=np.zeros((5, 5), np.float32))
    assert not bad.ok and bad.reason == 'bad_input'


def test_localize_command_with_depth(fr1_rpy, tmp_path, capsys):
    from nre_ros.cli import main
    from nre_ros.datasets import TumSequence, read_tum_poses
    from nre_ros.geometry import invert
    from nre_ros.paths import shared_file
    name = TumSequence(shared_file('maps/demo/queries')).frames[1].name
    frame = fr1_rpy.frame(name)
    out = tmp_path / 'poses.txt'
    rc = main(['localize', '--map', str(shared_file('maps/demo/fr1_rpy.nremap')),
               '--camera', str(fr1_rpy.root / 'camera.yaml'), str(frame.rgb_path),
               '--depth', str(frame.depth_path), '--depth-scale', '5000', '--out', str(out)])
    assert rc == 0 and 'localized' in capsys.readouterr().out
    _, T_world_cam = read_tum_poses(out)
    dt, dr = pose_error(invert(T_world_cam[0]), invert(frame.T_world_cam))
    assert dt < 0.05 and dr < 2.0
    rc = main(['localize', '--map', str(shared_file('maps/demo/fr1_rpy.nremap')),
               '--camera', str(fr1_rpy.root / 'camera.yaml'), str(frame.rgb_path),
               str(frame.rgb_path), '--depth', str(frame.depth_path)])
    assert rc != 0 and 'one file per image' in capsys.readouterr().err
