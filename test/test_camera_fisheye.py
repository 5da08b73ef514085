"""The fisheye (ROS ``equidistant``, OpenCV ``cv2.fisheye``) model: projection, undistortion of
pixels and images, CameraInfo and map round trips."""
import cv2
import numpy as np
import pytest

from nre_ros.camera import Camera
from nre_ros.preprocess import prepare, undistort

# A wide-angle camera in the range of real fisheye calibrations (848x800, about 160 deg).
FISHEYE = Camera(848, 800, np.array([[286.2, 0, 423.6], [0, 286.4, 399.1], [0, 0, 1.0]]),
                 np.array([-0.0078, 0.0447, -0.0419, 0.0081]), fisheye=True)


def _directions(n: int, max_angle_deg: float, seed: int = 0) -> np.ndarray:
    """(n, 3) camera-frame points within ``max_angle_deg`` of the optical axis, depth 0.3-5 m."""
    rng = np.random.default_rng(seed)
    th = np.radians(max_angle_deg) * np.sqrt(rng.uniform(0, 1, n))
    ph = rng.uniform(0, 2 * np.pi, n)
    d = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], 1)
    return d * rng.uniform(0.3, 5.0, (n, 1))


def test_fisheye_projection_matches_opencv():
    pts = _directions(500, 75)
    uv, valid = FISHEYE.project(pts)
    uv_cv, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3),
                                         FISHEYE.K, FISHEYE.dist)
    np.testing.assert_allclose(uv, uv_cv.reshape(-1, 2), atol=1e-9)
    assert valid.mean() > 0.95   # 75 deg off axis still lands inside this fisheye image


def test_fisheye_project_distort_undistort_round_trip():
    """project -> (distorted) pixel -> undistort_pixels / unproject gives back the point."""
    pts = _directions(2000, 80, seed=1)
    uv, valid = FISHEYE.project(pts)
    xy = FISHEYE.undistort_pixels(uv[valid])
    err_xy = np.abs(xy - pts[valid, :2] / pts[valid, 2:]).max()
    back = FISHEYE.unproject(uv[valid], pts[valid, 2])
    err_m = np.linalg.norm(back - pts[valid], axis=1).max()
    uv2, _ = FISHEYE.project(back)
    err_px = np.linalg.norm(uv2 - uv[valid], axis=1).max()
    print(f'fisheye round trip over {valid.sum()} points up to 80 deg: max |xy| error '
          f'{err_xy:.2e}, max 3D error {err_m:.2e} m, max reprojection {err_px:.2e} px')
    assert err_px < 1e-6 and err_m < 1e-6


def test_fisheye_differs_from_the_same_coefficients_as_radtan():
    """The flag matters: the same 4 numbers as plumb_bob project elsewhere (and k=0 fisheye is
    still a fisheye: r_d = atan(r), not the pinhole r)."""
    pts = _directions(50, 60, seed=2)
    radtan = Camera(FISHEYE.width, FISHEYE.height, FISHEYE.K, FISHEYE.dist)
    assert np.median(np.linalg.norm(radtan.project(pts)[0] - FISHEYE.project(pts)[0], axis=1)) > 5
    ftheta = Camera(FISHEYE.width, FISHEYE.height, FISHEYE.K, np.zeros(4), fisheye=True)
    assert ftheta.has_distortion
    r = np.hypot(*(pts[:, :2] / pts[:, 2:]).T)
    uv, _ = ftheta.project(pts)
    r_d = np.hypot(*((uv - [ftheta.cx, ftheta.cy]) / [ftheta.fx, ftheta.fy]).T)
    np.testing.assert_allclose(r_d, np.arctan(r), rtol=1e-9)


def test_fisheye_model_survives_resize_crop_and_feature_grid():
    pts = _directions(100, 50, seed=3)
    for cam in (FISHEYE.scaled(0.5), FISHEYE.cropped(100, 80, 600, 600),
                FISHEYE.feature_grid(8)):
        assert cam.fisheye
        uv, _ = cam.project(pts)
        np.testing.assert_allclose(cam.unproject(uv, pts[:, 2]), pts, atol=1e-7)


def _smooth_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def test_fisheye_image_undistorts_to_the_pinhole_image():
    """Render a fisheye image of a pinhole texture with the model, undistort it with
    ``preprocess.undistort``: the pinhole image comes back (up to two bilinear resamplings)."""
    cam = FISHEYE
    pinhole_img = _smooth_texture(cam.height, cam.width)
    # fisheye pixel -> ray -> pixel of the pinhole image with the same K
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    xy = cam.undistort_pixels(np.stack([u.ravel(), v.ravel()], 1))
    src = xy * [cam.fx, cam.fy] + [cam.cx, cam.cy]
    fisheye_img = cv2.remap(pinhole_img, src[:, 0].reshape(u.shape).astype(np.float32),
                            src[:, 1].reshape(u.shape).astype(np.float32), cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT)
    out, out_cam = undistort(fisheye_img, cam)
    assert not out_cam.has_distortion and not out_cam.fisheye
    np.testing.assert_array_equal(out_cam.K, cam.K)
    inner = (slice(100, cam.height - 100), slice(100, cam.width - 100))
    err = np.abs(out[inner].astype(int) - pinhole_img[inner].astype(int))
    raw = np.abs(fisheye_img[inner].astype(int) - pinhole_img[inner].astype(int))
    print(f'fisheye image round trip: mean |diff| {err.mean():.2f} grey levels '
          f'(without undistortion {raw.mean():.2f})')
    assert err.mean() < 1.5 and raw.mean() > 10 * err.mean()
    prep = prepare(fisheye_img, cam, max_side=848)
    np.testing.assert_array_equal(prep.image, out)


def test_fisheye_camera_info_round_trip_through_a_bag_message():
    pytest.importorskip('rosbags')
    from nre_ros import messages
    from nre_ros.eval import bags
    msg = bags._camera_info_msg(bags.typestore(), 123, FISHEYE)
    assert msg.distortion_model == 'equidistant' and len(msg.d) == 4
    back = messages.camera_info_to_camera(msg)
    assert back.fisheye
    np.testing.assert_array_equal(back.K, FISHEYE.K)
    np.testing.assert_array_equal(back.dist, FISHEYE.dist)
    # binned 2x2 and cropped to a region of interest: still the fisheye model, same rays
    msg.binning_x = msg.binning_y = 2
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 80, 600, 600
    small = messages.camera_info_to_camera(msg)
    assert small.fisheye and (small.width, small.height) == (300, 300)
    pts = _directions(100, 40, seed=5)
    uv_full, _ = FISHEYE.project(pts)
    uv_small, _ = small.project(pts)
    np.testing.assert_allclose(uv_small, (uv_full - [100, 80] + 0.5) / 2 - 0.5, atol=1e-9)


def _synthetic_map(cams: list[Camera]):
    """A valid map whose keyframes have the given cameras: points in front of identity poses."""
    from nre_ros.maps.build_common import assemble_map
    from nre_ros.models.base import ModelSpec

    class _Model:
        spec = ModelSpec('synthetic', 8, 4, 0, 0, 1.0, 1.0, 'none', '0' * 64)
    pts = _directions(10, 20, seed=4)
    n = len(cams)
    obs_kf, obs_pt = np.repeat(np.arange(n), len(pts)), np.tile(np.arange(len(pts)), n)
    uv = np.concatenate([c.project(pts)[0] for c in cams]).astype(np.float32)
    desc = np.ones((len(obs_kf), 4), np.float32) / 2
    return assemble_map(_Model(), [f'kf{i}' for i in range(n)], cams,
                        np.repeat(np.eye(4)[None], n, 0), np.ones((n, 2), np.float32) / 2 ** .5,
                        pts, np.zeros((len(pts), 3), np.uint8), obs_kf, obs_pt, uv, desc, None,
                        {})


def test_fisheye_keyframes_round_trip_through_a_map_file(tmp_path):
    from nre_ros.maps.format import load_map
    radtan = Camera.from_params(640, 480, 500, 500, 319.5, 239.5, [0.1, -0.2, 0.001, 0.002, 0.05])
    m = _synthetic_map([FISHEYE, radtan, FISHEYE])
    assert m.kf_fisheye.tolist() == [1, 0, 1]
    back = load_map(m.save(tmp_path / 'fisheye.nremap'))
    for i, cam in enumerate([FISHEYE, radtan, FISHEYE]):
        b = back.camera(i)
        assert b.fisheye == cam.fisheye
        np.testing.assert_array_equal(b.dist[:cam.dist.size], cam.dist)
    # a map without fisheye keyframes stores no kf_fisheye tensor (files as before)
    assert _synthetic_map([radtan]).kf_fisheye is None


def fisheye_view(image: np.ndarray, source: Camera, fisheye: Camera) -> np.ndarray:
    """What ``fisheye`` (same optical frame) sees of the scene ``source`` imaged: each fisheye
    pixel's ray, projected (with distortion) into the source image, sampled bilinearly."""
    v, u = np.mgrid[0:fisheye.height, 0:fisheye.width].astype(np.float64)
    xy = fisheye.undistort_pixels(np.stack([u.ravel(), v.ravel()], 1))
    src, _ = source.project(np.concatenate([xy, np.ones((len(xy), 1))], 1))
    return cv2.remap(image, src[:, 0].reshape(u.shape).astype(np.float32),
                     src[:, 1].reshape(u.shape).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT)


@pytest.mark.slow
def test_fisheye_queries_localize_against_a_pinhole_map():
    """The demo queries re-imaged by a fisheye lens localize as well as the originals; told they
    are pinhole images (the model ignored), they do not localize as well (or not at all)."""
    from nre_ros.datasets import TumSequence
    from nre_ros.geometry import invert, pose_error
    from nre_ros.paths import shared_file
    from nre_ros.pipeline import PipelineConfig, Relocalizer
    reloc = Relocalizer.from_config(shared_file('maps/demo/fr1_rpy.nremap'), PipelineConfig())
    queries = TumSequence(shared_file('maps/demo/queries'))
    src = queries.camera
    # same size; focal chosen so the image edge sees the pinhole image's edge (about 32 deg)
    f = (src.width / 2) / np.arctan((src.width / 2) / src.fx)
    lens = Camera(src.width, src.height, np.array([[f, 0, src.cx], [0, f, src.cy], [0, 0, 1]]),
                  np.array([0.02, -0.01, 0.003, 0.0]), fisheye=True)
    wrong = Camera(lens.width, lens.height, lens.K)
    rows = []
    for frame in queries.frames:
        T_gt = invert(frame.T_world_cam)
        img = fisheye_view(queries.load_rgb(frame), src, lens)
        for name, cam, im in (('original', src, queries.load_rgb(frame)),
                              ('fisheye', lens, img), ('fisheye as pinhole', wrong, img)):
            out = reloc.localize(im, cam)
            err = pose_error(out.T_cam_world, T_gt) if out.ok else (np.inf, np.inf)
            rows.append((name, frame.name, out.ok, *err))
    for name in ('original', 'fisheye', 'fisheye as pinhole'):
        r = [x for x in rows if x[0] == name]
        good = [x for x in r if x[3] < 0.05 and x[4] < 2.0]
        med = np.median([x[3] for x in r if x[2]]) if any(x[2] for x in r) else np.inf
        print(f'{name:>20}: {sum(x[2] for x in r)}/{len(r)} localized, {len(good)} within '
              f'5 cm / 2 deg, median {100 * med:.1f} cm')
    n_good = {name: sum(1 for x in rows if x[0] == name and x[3] < 0.05 and x[4] < 2.0)
              for name in ('original', 'fisheye', 'fisheye as pinhole')}
    assert n_good['fisheye'] >= n_good['original'] - 1
    assert n_good['fisheye as pinhole'] < n_good['fisheye']
