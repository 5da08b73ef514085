"""RViz content built without ROS: map cloud fields, keyframe poses, the debug image, and the
per-point support the pipeline returns for it."""
import numpy as np

from nre_ros.camera import Camera
from nre_ros.geometry import Sim3, invert, make_transform, so3_exp
from nre_ros.results import Failure, PointSupport, Result
from nre_ros.ros import visualization as viz

SIM = Sim3(so3_exp(np.array([0.1, -0.3, 0.8])), np.array([2.0, -1.0, 0.5]), 1.7)


def test_point_cloud_fields_round_trip_and_layout():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    rgb[0] = (255, 16, 1)
    f = viz.point_cloud_fields(pts, rgb)
    assert (f.width, f.height, f.point_step, f.row_step) == (50, 1, 16, 800)
    assert len(f.data) == 800 and f.is_dense and not f.is_bigendian
    assert [n for n, *_ in f.fields] == ['x', 'y', 'z', 'rgb']
    # RViz reads rgb as the bytes B, G, R, 0 of a little-endian 0x00RRGGBB
    assert f.data[12:16] == bytes([1, 16, 255, 0])
    assert np.frombuffer(f.data[:12], '<f4').tolist() == pts[0].tolist()
    back_pts, back_rgb = viz.cloud_to_numpy(f)
    np.testing.assert_array_equal(back_pts, pts)
    np.testing.assert_array_equal(back_rgb, rgb)


def test_map_points_and_keyframes_in_the_map_frame():
    rng = np.random.default_rng(1)
    p_model = rng.normal(size=(20, 3))
    p_map = viz.map_points_in_map(p_model, SIM)
    np.testing.assert_allclose(p_map, 1.7 * p_model @ SIM.rotation.T + SIM.translation)
    T_cam_model = np.stack([make_transform(so3_exp(rng.normal(size=3)), rng.normal(size=3))
                            for _ in range(4)])
    T_map_cam = viz.keyframe_poses_in_map(T_cam_model, SIM)
    # the keyframe camera centre in the map is the map image of its centre in the model
    centres_model = np.stack([invert(T)[:3, 3] for T in T_cam_model])
    np.testing.assert_allclose(T_map_cam[:, :3, 3], viz.map_points_in_map(centres_model, SIM),
                               atol=1e-12)
    R = T_map_cam[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape),
                               atol=1e-12)


def _scene():
    cam = Camera.from_params(160, 120, 100.0, 100.0, 79.5, 59.5)
    T = make_transform(so3_exp(np.array([0.05, 0.1, 0.0])), np.array([0.1, 0.0, 0.2]))
    uv_target = np.array([[30.0, 30.0], [120.0, 40.0], [80.0, 90.0], [50.0, 100.0]])
    depth = np.array([2.0, 3.0, 2.5, 4.0])
    p_model = invert(T)[:3, :3] @ cam.unproject(uv_target, depth).T
    p_model = p_model.T + invert(T)[:3, 3]
    # 6 map points, the solver used points 5, 1, 3, 0 (in that order)
    points = np.zeros((6, 3))
    points[[5, 1, 3, 0]] = p_model
    return cam, T, points, uv_target


def test_debug_image_draws_supported_points_by_cost():
    cam, T, points, uv = _scene()
    rgb = np.full((120, 160, 3), 40, np.uint8)
    support = PointSupport(np.array([0.5, 2.0, 3.9, 7.0], np.float32), 4.0,
                           np.array([5, 1, 3, 0]))
    res = Result(T, np.eye(6) * 1e-4, 10.0, 2.5, 4, 3, 5, support=support)
    out = viz.debug_image(rgb, cam, res, points)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    px = [tuple(out[int(v), int(u)]) for u, v in uv]
    assert px[0] == (0, 255, 0)                  # lowest cost: green
    assert px[1][0] > 100 and px[1][1] > 100     # middle: yellowish
    assert px[2][0] == 255 and px[2][1] < 20     # at the threshold: red
    assert px[3] == (160, 160, 160)              # unsupported: a grey dot only
    assert tuple(out[int(uv[3, 1]), int(uv[3, 0]) + 2]) == (40, 40, 40)
    assert tuple(out[int(uv[0, 1]), int(uv[0, 0]) + 2]) == (0, 255, 0)   # supported: a disk
    np.testing.assert_array_equal(rgb, 40)       # the input is not modified
    # away from the points and the caption, the image is untouched
    assert np.all(out[60:70, 0:10] == 40)


def test_debug_image_of_a_failure_has_its_reason_and_no_points():
    cam, T, points, uv = _scene()
    rgb = np.full((120, 160, 3), 40, np.uint8)
    out = viz.debug_image(rgb, cam, Failure('too_few_supported', 'x'), points)
    changed = np.any(out != 40, axis=2)
    assert changed[:30].any() and not changed[40:].any()     # caption only, at the top


def test_pipeline_result_carries_the_support_it_was_judged_on(fr1_rpy):
    from nre_ros.paths import shared_file
    from nre_ros.pipeline import PipelineConfig, Relocalizer
    reloc = Relocalizer.from_config(shared_file('maps/demo/fr1_rpy.nremap'), PipelineConfig())
    frame = fr1_rpy.frame(sorted(p.name for p in (shared_file('maps/demo/queries') / 'rgb')
                                 .iterdir())[0].join(['rgb/', '']))
    out = reloc.localize(fr1_rpy.load_rgb(frame), fr1_rpy.camera)
    assert out.ok and out.support is not None
    s = out.support
    assert len(s.nre) == len(s.point_idx) >= out.num_points    # coarse level: all points
    assert int(s.supported.sum()) == out.num_supported
    assert s.point_idx.max() < reloc.map.num_points
    # supported points reproject into the image with the returned pose (they explain it)
    T = out.T_cam_world
    p = np.asarray(reloc.map.points_world, np.float64)[s.point_idx[s.supported]]
    _, visible = fr1_rpy.camera.project(p @ T[:3, :3].T + T[:3, 3])
    assert visible.mean() > 0.95
    img = viz.debug_image(fr1_rpy.load_rgb(frame), fr1_rpy.camera, out, reloc.map.points_world)
    assert np.mean(np.any(img != fr1_rpy.load_rgb(frame), axis=2)) > 0.01


def _rviz_displays():
    import yaml
    from pathlib import Path
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / 'rviz' / 'nre_ros.rviz')
                         .read_text())
    return cfg, {d['Name']: d for d in cfg['Visualization Manager']['Displays']}


def test_rviz_file_shows_the_node_topics_with_their_qos():
    cfg, displays = _rviz_displays()
    assert cfg['Visualization Manager']['Global Options']['Fixed Frame'] == 'map'
    node = '/nre_relocalization/'
    expected = {  # display -> (class, topic, durability)
        'Map points': ('PointCloud2', node + viz.MAP_POINTS_TOPIC[2:], 'Transient Local'),
        'Keyframes': ('PoseArray', node + viz.KEYFRAMES_TOPIC[2:], 'Transient Local'),
        'Pose': ('PoseWithCovariance', node + 'pose', 'Transient Local'),
        'Debug image': ('Image', node + viz.DEBUG_IMAGE_TOPIC[2:], 'Volatile'),
        'Camera image': ('Image', '/camera/color/image_raw', 'Volatile'),
    }
    for name, (cls, topic, durability) in expected.items():
        d = displays[name]
        assert d['Class'] == f'rviz_default_plugins/{cls}', name
        assert d['Topic']['Value'] == topic and d['Topic']['Durability Policy'] == durability
    assert displays['TF']['Class'] == 'rviz_default_plugins/TF'
    assert displays['Map points']['Color Transformer'] == 'RGB8'


def test_rviz_file_is_installed_with_the_package(monkeypatch):
    import runpy
    from pathlib import Path

    import setuptools
    repo = Path(__file__).resolve().parents[1]
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kw: captured.update(kw))
    monkeypatch.chdir(repo)
    runpy.run_path(str(repo / 'setup.py'), run_name='__main__')
    installed = {f for folder, files in captured['data_files'] for f in files
                 if folder == 'share/nre_ros/rviz'}
    assert installed == {'rviz/nre_ros.rviz'}
