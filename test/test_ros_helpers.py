"""Shared helpers of the ROS tests (no tests here): isolation, fake relocalizer, rig node.

Imported by test_ros_*.py and by node subprocesses (with ``test/`` on PYTHONPATH).
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

# Isolation must be set before rclpy.init(): a private DDS domain on localhost only.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))

from nre_ros.geometry import Sim3, make_transform, so3_exp  # noqa: E402
from nre_ros.results import Failure, Result  # noqa: E402

# A camera pose in the map and a solver covariance that the fake relocalizer returns.
T_MAP_CAM = make_transform(so3_exp([0.1, -0.2, 0.3]), [1.0, 2.0, 0.5])
COV_XI = np.diag([1e-3, 2e-3, 3e-3, 1e-4, 2e-4, 3e-4])
COV_XI[0, 4] = COV_XI[4, 0] = 2e-4
# base -> camera optical: camera 0.2 m ahead, 0.3 m up, z forward (REP 103).
T_BASE_CAM = make_transform(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
                            [0.2, 0.0, 0.3])


class FakeRelocalizer:
    """Stands in for nre_ros.pipeline.Relocalizer: returns a fixed pose (or a Failure)."""

    def __init__(self, T_map_cam=T_MAP_CAM, cov=COV_XI, map_T_model=None, fail: str = '',
                 delay_s: float = 0.0, map_=None, support=None):
        self.T_cam_world = np.linalg.inv(T_map_cam)
        if map_ is not None:             # what the node's RViz outputs read (points, keyframes)
            self.map = map_
        self.support = support
        self.cov, self.fail, self.delay_s = cov, fail, delay_s
        self.map_T_model = map_T_model or Sim3.identity()
        self.map_frame_id = 'map'
        self.calls: list[tuple] = []
        self.depths: list = []           # the depth argument of each call
        self.warmups = 0

    def warmup(self) -> None:
        self.warmups += 1

    def localize(self, image, camera, prior=None, depth=None):
        self.calls.append((image.shape, image.dtype, camera, prior))
        self.depths.append(depth)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            return Failure(self.fail, 'fake failure', {'total': 1.0})
        return Result(self.T_cam_world, self.cov, cost=10.0, mean_cost=0.5, num_points=20,
                      num_supported=18, iterations=3, timings_ms={'total': 1.0},
                      support=self.support)


def fake_factory(**kwargs):
    """relocalizer_factory that records the relocalizers it made (``factory.made``)."""
    made: list[FakeRelocalizer] = []

    def factory(map_path, cfg):
        if 'missing' in map_path:
            from nre_ros.errors import MapFormatError
            raise MapFormatError(f'map file {map_path} does not exist')
        made.append(FakeRelocalizer(**kwargs))
        return made[-1]

    factory.made = made
    return factory


def wait_until(pred, timeout: float = 5.0, period: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(period)
    return bool(pred())


class Spinner:
    """A SingleThreadedExecutor (what the node's main() runs) spinning some nodes in a
    background thread."""

    def __init__(self, context, *nodes):
        from rclpy.executors import SingleThreadedExecutor
        self.executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - context shut down under us at teardown
            pass

    def stop(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
