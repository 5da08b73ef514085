"""``~/load_map`` (nre_ros_interfaces/LoadMap.srv): skipped where the interfaces are not built."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
pytest.importorskip('nre_ros_interfaces.srv',
                    reason='nre_ros_interfaces not built (nre_ros_interfaces/build_wheel.sh)')
pytestmark = pytest.mark.ros

import test_ros_helpers as h  # noqa: E402
from nre_ros_interfaces.srv import LoadMap  # noqa: E402

from nre_ros.geometry import invert, make_transform  # noqa: E402
from nre_ros import messages as msgs  # noqa: E402
from nre_ros.ros import conversions as conv  # noqa: E402
from test_ros_node import S, ctx, now_ns, running  # noqa: E402,F401,F811


def _call(client, req):
    done = threading.Event()
    fut = client.call_async(req)
    fut.add_done_callback(lambda _f: done.set())
    assert done.wait(5.0)
    return fut.result()


def test_load_map_swaps_keeps_old_on_failure_and_rejects_concurrent(running):
    node, rig, factory = running()
    client = rig.create_client(LoadMap, '/nre_relocalization/load_map')
    assert client.wait_for_service(timeout_sec=3.0)
    rig.send_static()
    first = node.reloc
    # a map that does not load: failure answer, old map kept, node active
    res = _call(client, LoadMap.Request(map_path='missing.nremap'))
    assert not res.success and 'could not load missing.nremap' in res.message
    assert node.reloc is first and node.cfg.map_path == 'fake.nremap'
    assert not _call(client, LoadMap.Request(map_path='  ')).success
    # a second call while one runs is rejected
    node._load_lock.acquire()
    try:
        res = _call(client, LoadMap.Request(map_path='other.nremap'))
        assert not res.success and 'rejected' in res.message
    finally:
        node._load_lock.release()
    # success with a hint: new relocalizer, warmed up, hint = prior of the next frame
    hint = make_transform(np.eye(3), [4.0, 5.0, 0.0])
    res = _call(client, LoadMap.Request(map_path='other.nremap', use_hint=True,
                                        hint=conv.matrix_to_pose(hint)))
    assert res.success, res.message
    new = node.reloc
    assert new is factory.made[-1] and new is not first and new.warmups == 1
    assert node.cfg.map_path == 'other.nremap' and node.stats.map_id == 'other.nremap'
    t = now_ns(node) - S // 2
    rig.send_odom(t)
    rig.send_frame(t)
    assert h.wait_until(lambda: len(new.calls) == 1 and rig.poses, 3.0), node.stats
    prior = new.calls[0][3]
    T_map_base = invert(prior.T_cam_world) @ invert(h.T_BASE_CAM)
    np.testing.assert_allclose(T_map_base[:3, 3], [4.0, 5.0, 0.0], atol=1e-9)
    assert node._state_machine.current_state[1] == 'active'


def test_tf_keeps_flowing_while_load_map_holds_the_executor(running):
    """map->odom is republished by its own thread: a 2 s ~/load_map (which runs in the one
    executor thread, as in main()) leaves no gap in it. A blocked publisher would leave a gap
    of the whole 2 s; the bound (half of it) leaves room for a loaded machine's scheduling
    delays (20 Hz TF)."""
    import time
    node, rig, factory = running(publish_identity_until_localized=True)
    client = rig.create_client(LoadMap, '/nre_relocalization/load_map')
    assert client.wait_for_service(timeout_sec=3.0)

    def slow_factory(path, cfg):
        time.sleep(2.0)
        return factory(path, cfg)

    node._factory = slow_factory
    assert h.wait_until(lambda: len(rig.tfs) > 3)
    t0 = now_ns(node)
    assert _call(client, LoadMap.Request(map_path='other.nremap')).success
    t1 = now_ns(node)
    assert h.wait_until(lambda: any(msgs.stamp_to_ns(t.header.stamp) > t1 for t in rig.tfs))
    stamps = sorted(msgs.stamp_to_ns(t.header.stamp) for t in list(rig.tfs)
                    if t.child_frame_id == 'odom' and t.header.frame_id == 'map')
    window = [s for s in stamps if t0 <= s - int(0.2e9) <= t1]   # stamps carry +tolerance
    assert t1 - t0 > 1.9e9 and len(window) >= 10, (len(window), (t1 - t0) / 1e9)
    assert max(b - a for a, b in zip(window, window[1:])) < 1.0e9
