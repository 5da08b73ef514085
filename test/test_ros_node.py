"""The lifecycle node with a fake relocalizer, over real DDS (docs/ros.md checks)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
pytestmark = pytest.mark.ros

import test_ros_helpers as h  # noqa: E402  (sets ROS_DOMAIN_ID before rclpy.init)
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from nre_ros import messages as msgs  # noqa: E402
from nre_ros.geometry import Sim3, invert, make_transform, so3_exp  # noqa: E402
from nre_ros.ros import conversions as conv  # noqa: E402
from nre_ros.stream.covariance import CovarianceModel  # noqa: E402
from nre_ros.ros.node import POSE_QOS, RelocalizationNode  # noqa: E402
from nre_ros.ros.tf import TF_QOS, TfBroadcaster, make_transform_stamped  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000
W, H = 64, 48
CAM_FRAME = 'camera_optical'
# odom->base at t_img -/+ 0.1 s: lookups at t_img must interpolate to the midpoint.
T_ODOM_BASE_0 = make_transform(so3_exp([0, 0, 0.0]), [1.0, 0.0, 0.0])
T_ODOM_BASE_1 = make_transform(so3_exp([0, 0, 0.2]), [1.2, 0.4, 0.0])
T_ODOM_BASE_MID = make_transform(so3_exp([0, 0, 0.1]), [1.1, 0.2, 0.0])


@pytest.fixture(scope='module')
def ctx():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


class Rig(Node):
    """Camera + odometry + TF source, and a sink for pose, /tf and /diagnostics."""

    def __init__(self, context):
        super().__init__('test_rig', context=context)
        self.img_pub = self.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
        self.info_pub = self.create_publisher(CameraInfo, 'camera/camera_info',
                                              qos_profile_sensor_data)
        self.initialpose_pub = self.create_publisher(PoseWithCovarianceStamped, '/initialpose',
                                                     10)
        self.static = TfBroadcaster(self, static=True)
        self.tf = TfBroadcaster(self)
        self.poses: list[PoseWithCovarianceStamped] = []
        self.tfs: list = []
        self.diags: list[DiagnosticArray] = []
        self.create_subscription(PoseWithCovarianceStamped, '/nre_relocalization/pose',
                                 self.poses.append, POSE_QOS)
        self.create_subscription(TFMessage, '/tf', lambda m: self.tfs.extend(m.transforms),
                                 TF_QOS)
        self.create_subscription(DiagnosticArray, '/diagnostics', self.diags.append, 10)

    def send_static(self, frame=CAM_FRAME):
        self.static.send([make_transform_stamped(h.T_BASE_CAM, 'base_link', frame, 1)])

    def send_odom(self, t_img_ns):
        self.tf.send([make_transform_stamped(T_ODOM_BASE_0, 'odom', 'base_link',
                                             t_img_ns - S // 10),
                      make_transform_stamped(T_ODOM_BASE_1, 'odom', 'base_link',
                                             t_img_ns + S // 10)])

    def send_frame(self, t_img_ns, *, encoding='rgb8', w=W, h=H, info_w=W, info_h=H,
                   k=None, frame=CAM_FRAME, image=None):
        stamp = conv.ns_to_stamp(t_img_ns)
        info = CameraInfo(width=info_w, height=info_h, distortion_model='plumb_bob',
                          d=[0.0] * 5, k=k or [50.0, 0, 32, 0, 50.0, 24, 0, 0, 1])
        info.header.stamp, info.header.frame_id = stamp, frame
        if image is None:
            arr = np.zeros((h, w, 3), np.uint8)
            image = conv.numpy_to_image(arr, 'rgb8')
            image.encoding = encoding
        image.header.stamp, image.header.frame_id = stamp, frame
        self.info_pub.publish(info)
        self.img_pub.publish(image)

    def last_diag(self) -> str:
        return self.diags[-1].status[0].message if self.diags else ''


def make_node(ctx, factory, **params):
    base = dict(map_path='fake.nremap', min_consistent_fixes=1, max_rate=0.0,
                transform_publish_period=0.05, tf_lookup_timeout=0.3)
    base['diagnostic_updater.period'] = 0.1
    base.update(params)
    return RelocalizationNode(
        relocalizer_factory=factory, context=ctx,
        parameter_overrides=[Parameter(k, value=v) for k, v in base.items()],
        cli_args=['--ros-args', '-r', 'image:=camera/image_raw'])


@pytest.fixture
def running(ctx):
    """(node, rig, factory) with the node active and the rig connected."""
    made = []

    def start(wait_image: bool = True, **params):
        factory = h.fake_factory(**params.pop('fake', {}))
        node, rig = make_node(ctx, factory, **params), Rig(ctx)
        spin = h.Spinner(ctx, node, rig)
        made.append((node, rig, spin))
        assert node.autostart()
        assert h.wait_until(lambda: (rig.img_pub.get_subscription_count() > 0 or not wait_image)
                            and rig.info_pub.get_subscription_count() > 0
                            and rig.count_subscribers('/tf_static') > 0)
        return node, rig, factory

    yield start
    for node, rig, spin in made:
        spin.stop()
        node.on_shutdown(None)
        node.destroy_node()
        rig.destroy_node()


def now_ns(node) -> int:
    return node.get_clock().now().nanoseconds


def test_pose_tf_and_covariance(running):
    node, rig, factory = running()
    rig.send_static()
    t_img = now_ns(node) - S // 2
    rig.send_odom(t_img)
    time.sleep(0.05)
    rig.send_frame(t_img)
    assert h.wait_until(lambda: rig.poses, 5.0), node.stats
    pose = rig.poses[0]
    assert msgs.stamp_to_ns(pose.header.stamp) == t_img and pose.header.frame_id == 'map'
    T_map_base = msgs.pose_to_matrix(pose.pose.pose)
    np.testing.assert_allclose(T_map_base, h.T_MAP_CAM @ invert(h.T_BASE_CAM), atol=1e-9)
    # the relocalizer got RGB of the right size and the camera from camera_info
    shape, dtype, camera, prior = factory.made[0].calls[0]
    assert shape == (H, W, 3) and dtype == np.uint8 and camera.fx == 50.0 and prior is None
    cov = np.array(pose.pose.covariance).reshape(6, 6)
    np.testing.assert_array_equal(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0
    np.testing.assert_allclose(cov, CovarianceModel().to_map(h.COV_XI, T_map_base, h.T_BASE_CAM),
                               rtol=1e-9)
    # map->odom ∘ odom->base(t_img) == map->base; stamps strictly increasing, never 0
    assert h.wait_until(lambda: len([t for t in rig.tfs if t.child_frame_id == 'odom']) >= 4)
    tfs = [t for t in rig.tfs if t.child_frame_id == 'odom']
    assert all(t.header.frame_id == 'map' for t in tfs)
    T_map_odom = msgs.transform_to_matrix(tfs[-1].transform)
    np.testing.assert_allclose(T_map_odom @ T_ODOM_BASE_MID, T_map_base, atol=1e-6)
    stamps = [msgs.stamp_to_ns(t.header.stamp) for t in tfs]
    assert all(b > a for a, b in zip(stamps, stamps[1:])) and stamps[0] > 0
    assert stamps[0] == t_img + S // 5  # the correction itself: t_img + transform_tolerance
    assert h.wait_until(lambda: rig.last_diag() == 'Localized', 3.0), rig.last_diag()


def test_map_to_base_mode_and_similarity(running):
    S_map_model = Sim3(so3_exp([0, 0, 0.5]), np.array([3.0, -1.0, 0.2]), 2.0)
    node, rig, factory = running(tf_mode='map_to_base', fake={'map_T_model': S_map_model})
    rig.send_static()
    t_img = now_ns(node) - S // 2
    rig.send_frame(t_img)  # no odometry needed in this mode
    assert h.wait_until(lambda: rig.poses, 5.0), node.stats
    T_map_base = msgs.pose_to_matrix(rig.poses[0].pose.pose)
    expected = S_map_model.camera_pose_in_map(np.linalg.inv(h.T_MAP_CAM)) @ \
        invert(h.T_BASE_CAM)
    np.testing.assert_allclose(T_map_base, expected, atol=1e-9)
    assert h.wait_until(lambda: any(t.child_frame_id == 'base_link' for t in rig.tfs))
    tf = next(t for t in rig.tfs if t.child_frame_id == 'base_link')
    np.testing.assert_allclose(msgs.transform_to_matrix(tf.transform), T_map_base, atol=1e-6)


def test_bad_inputs_publish_nothing(running):
    node, rig, factory = running()
    rig.send_static()
    base = now_ns(node) - 5 * S
    zero = Image(height=0, width=0, encoding='rgb8', step=0)
    cases = [
        (dict(encoding='nv21'), 'Bad input: unsupported image encoding'),
        (dict(image=zero), 'Bad input: image has zero size'),
        (dict(info_w=32, info_h=24), 'Bad input: image is 64x48 but camera_info describes'),
        (dict(k=[0.0] * 9), 'Bad input: camera_info K is not a valid'),
        (dict(frame='unknown_cam'), 'TF missing'),
        (dict(), 'TF missing'),  # no odom->base at t_img
    ]
    for i, (kwargs, message) in enumerate(cases):
        processed = node.stats.frames_processed
        rig.send_frame(base + i * S, **kwargs)
        assert h.wait_until(lambda: node.stats.frames_processed > processed
                            and not node.busy, 3.0), (kwargs, node.stats)
        rig.diags.clear()
        assert h.wait_until(lambda: rig.last_diag().startswith(message), 3.0), \
            (message, rig.last_diag())
        assert node._state_machine.current_state[1] == 'active'
    factory.made[0].fail = 'too_few_points'  # a Failure from the pipeline: also nothing
    t_img = now_ns(node) - S // 2
    rig.send_odom(t_img)
    rig.send_frame(t_img)
    assert h.wait_until(lambda: 'too_few_points' in rig.last_diag(), 3.0), rig.last_diag()
    assert rig.last_diag().startswith('Not localized yet')
    time.sleep(0.1)
    assert rig.poses == [] and not [t for t in rig.tfs if t.child_frame_id == 'odom']
    assert node.stats.bad_inputs == 4 and node.stats.tf_failures == 2
    assert node.stats.fixes_published == 0 and len(factory.made[0].calls) == 1


def test_services_prior_and_drops(running, ctx):
    node, rig, factory = running(use_initial_guess=True, fake={'delay_s': 0.2})
    rig.send_static()
    client = rig.create_client(SetBool, '/nre_relocalization/enable')
    relocalize = rig.create_client(Trigger, '/nre_relocalization/relocalize')
    reset = rig.create_client(Trigger, '/nre_relocalization/reset')
    for c in (client, relocalize, reset):
        assert c.wait_for_service(timeout_sec=3.0)

    def call(c, req):
        done = threading.Event()
        fut = c.call_async(req)
        fut.add_done_callback(lambda _f: done.set())
        assert done.wait(3.0)
        return fut.result()

    def frame(offset_s=0.5):
        t = now_ns(node) - int(offset_s * S)
        rig.send_odom(t)
        time.sleep(0.02)
        rig.send_frame(t)
        return t

    assert call(client, SetBool.Request(data=False)).success
    frame()
    time.sleep(0.3)
    assert node.stats.frames_processed == 0 and node.stats.frames_paired == 1
    assert call(client, SetBool.Request(data=True)).success
    frame()
    assert h.wait_until(lambda: len(rig.poses) == 1 and not node.busy, 3.0)
    fake = factory.made[0]
    # while the fake is busy (0.2 s) further frames are dropped and counted
    frame()
    time.sleep(0.03)
    frame(0.4)
    assert h.wait_until(lambda: node.stats.frames_dropped_busy >= 1, 2.0)
    assert h.wait_until(lambda: len(fake.calls) == 2 and not node.busy, 2.0), node.stats
    assert h.wait_until(lambda: len(rig.poses) == 2, 2.0)
    prior = fake.calls[1][3]   # use_initial_guess: last fix carried by odometry
    assert prior is not None
    np.testing.assert_allclose(prior.T_cam_world, fake.T_cam_world, atol=1e-9)
    assert np.linalg.eigvalsh(prior.covariance).min() > 0
    assert call(relocalize, Trigger.Request()).success
    frame()
    assert h.wait_until(lambda: len(fake.calls) == 3 and not node.busy, 3.0)
    assert fake.calls[2][3] is None  # global search after ~/relocalize
    # /initialpose in map -> prior for the next frame
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = 'map'
    msg.pose.pose = conv.matrix_to_pose(make_transform(np.eye(3), [5.0, 6.0, 0.0]))
    msg.pose.covariance[0] = msg.pose.covariance[7] = 0.25
    assert h.wait_until(lambda: rig.initialpose_pub.get_subscription_count() > 0)
    rig.initialpose_pub.publish(msg)
    time.sleep(0.1)
    frame()
    assert h.wait_until(lambda: len(fake.calls) == 4 and not node.busy, 3.0)
    T_map_cam = invert(fake.calls[3][3].T_cam_world)
    np.testing.assert_allclose((T_map_cam @ invert(h.T_BASE_CAM))[:3, 3], [5, 6, 0], atol=1e-9)
    wrong = PoseWithCovarianceStamped()
    wrong.header.frame_id = 'odom'
    wrong.pose.pose.orientation.w = 1.0
    node._on_initialpose(wrong)          # AMCL: only priors in map_frame are accepted
    assert node.stream.pending_prior is None
    assert call(reset, Trigger.Request()).success
    rig.diags.clear()
    assert h.wait_until(lambda: rig.last_diag().startswith('Not localized yet'), 3.0)


def test_lifecycle_twice_and_get_state(ctx):
    factory = h.fake_factory()
    node, probe = make_node(ctx, factory), Node('state_probe', context=ctx)
    spin = h.Spinner(ctx, node, probe)
    try:
        get_state = probe.create_client(GetState, '/nre_relocalization/get_state')
        assert get_state.wait_for_service(timeout_sec=3.0)
        for cycle in range(2):
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            fut = get_state.call_async(GetState.Request())
            assert h.wait_until(fut.done, 3.0) and fut.result().current_state.label == 'active'
            assert any(t.name == 'nre_worker' for t in threading.enumerate())
            assert len(node._active_entities) >= 7
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node._active_entities == [] and node.reloc is not None
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            assert node.reloc is None and node._worker is None and node._pose_pub is None
            assert factory.made[cycle].warmups == 1
        assert not [t for t in threading.enumerate() if t.name == 'nre_worker']  # joined
        assert len(factory.made) == 2
    finally:
        spin.stop()
        node.destroy_node()
        probe.destroy_node()


@pytest.mark.parametrize('map_path', ['', 'missing.nremap'])
def test_bad_map_path_fails_configure(ctx, map_path):
    node = make_node(ctx, h.fake_factory(), map_path=map_path)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[1] == 'unconfigured'
        assert node.reloc is None and node._worker is None
    finally:
        node.destroy_node()


def test_default_factory_fails_cleanly_on_missing_map(ctx, tmp_path):
    node = make_node(ctx, None, map_path=str(tmp_path / 'nope.nremap'))
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[1] == 'unconfigured'
    finally:
        node.destroy_node()


CHILD = """
import sys
import test_ros_helpers as h
from nre_ros.ros.node import main
sys.exit(main(sys.argv, relocalizer_factory=h.fake_factory()))
"""


SPIN_RAISES = """
import sys
import rclpy
import test_ros_helpers as h
from nre_ros.ros import node

def spin(self):
    if sys.argv[1] == 'shutdown':
        rclpy.shutdown()          # as rclpy's SIGINT handler does
    raise RuntimeError('publisher context is invalid')

node.SingleThreadedExecutor.spin = spin
sys.exit(node.main(sys.argv[1:], relocalizer_factory=h.fake_factory()))
"""


@pytest.mark.parametrize('case', ['shutdown', 'running'])
def test_main_treats_an_error_during_shutdown_as_a_stop(case):
    """An error out of spinning after the context was shut down (a SIGINT landing while a
    callback publishes) ends main with status 0; the same error while running is raised."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / 'test'), str(REPO)]))
    out = subprocess.run([sys.executable, '-c', SPIN_RAISES, case, '--ros-args', '-p',
                          'nre_relocalization:map_path:=fake.nremap'], env=env,
                         capture_output=True, text=True, timeout=60)
    if case == 'shutdown':
        assert out.returncode == 0, out.stderr
        assert 'stopped while shutting down (RuntimeError' in out.stderr
    else:
        assert out.returncode == 1 and 'RuntimeError: publisher context is invalid' in out.stderr


def test_main_with_params_file_autostart_and_sigint():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / 'test'), str(REPO)]))
    cmd = [sys.executable, '-c', CHILD, '--ros-args', '--params-file',
           str(REPO / 'config' / 'nre_ros.yaml'), '-p', 'nre_relocalization:autostart:=true',
           '-p', 'nre_relocalization:map_path:=fake.nremap']
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, '')),
                              daemon=True)
    reader.start()
    try:
        assert h.wait_until(lambda: any('Activated' in ln for ln in lines), 15.0), lines
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10.0) == 0, lines
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=2.0)
    text = ''.join(lines)
    assert 'Configured: map fake.nremap' in text and 'Traceback' not in text, text
