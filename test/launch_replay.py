"""Helper of test_launch.py / test_colcon.py (run as a script in a fresh process): wait until a
launched node is ``active`` on its own (autostart), read some of its parameters back, replay
the demo bag through it and print one JSON line with what came back.

    python test/launch_replay.py NODE BAG OUT --param NAME ... [--timeout S] [--rate R]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wait_active_and_read(node_name: str, names: list[str], timeout_s: float) -> dict:
    """Poll ``get_state`` until active (no transition is requested), then get_parameters."""
    import rclpy
    from lifecycle_msgs.srv import GetState
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters
    rclpy.init()
    node = rclpy.create_node('launch_replay_probe')
    try:
        get_state = node.create_client(GetState, f'{node_name}/get_state')
        t0, states = time.monotonic(), []
        while time.monotonic() - t0 < timeout_s:
            if get_state.wait_for_service(timeout_sec=1.0):
                fut = get_state.call_async(GetState.Request())
                rclpy.spin_until_future_complete(node, fut, timeout_sec=5.0)
                if fut.done():
                    label = fut.result().current_state.label
                    if not states or states[-1] != label:
                        states.append(label)
                    if label == 'active':
                        break
            time.sleep(0.2)
        out = {'states_seen': states, 'active_after_s': round(time.monotonic() - t0, 2)}
        get_params = node.create_client(GetParameters, f'{node_name}/get_parameters')
        get_params.wait_for_service(timeout_sec=10.0)
        fut = get_params.call_async(GetParameters.Request(names=names))
        rclpy.spin_until_future_complete(node, fut, timeout_sec=10.0)
        field = {ParameterType.PARAMETER_BOOL: 'bool_value',
                 ParameterType.PARAMETER_INTEGER: 'integer_value',
                 ParameterType.PARAMETER_DOUBLE: 'double_value',
                 ParameterType.PARAMETER_STRING: 'string_value'}
        out['params'] = {n: getattr(v, field[v.type]) if v.type in field else None
                         for n, v in zip(names, fut.result().values)}
        return out
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('node')
    ap.add_argument('bag')
    ap.add_argument('out')
    ap.add_argument('--param', action='append', default=[])
    ap.add_argument('--timeout', type=float, default=120.0)
    ap.add_argument('--rate', type=float, default=1.0)
    ap.add_argument('--settle', type=float, default=10.0)
    args = ap.parse_args()
    from nre_ros.ros.dds import ensure_large_image_profile
    ensure_large_image_profile()
    result = wait_active_and_read(args.node, args.param, args.timeout)
    if result['states_seen'][-1:] != ['active']:
        print(json.dumps(result))
        return 1
    from nre_ros.eval.live import LiveOptions, run_live
    live = run_live(args.bag, '', args.out, LiveOptions(
        rate=args.rate, attach=True, node_name=args.node, settle_s=args.settle,
        startup_timeout_s=30.0), show_progress=False)
    errors = [r.errors() for r in live.records if r.status == 'fix']
    result.update({k: live.live[k] for k in ('initial_state', 'images_sent', 'poses_received',
                                              'unmatched_poses', 'tf_checked')},
                  max_t_err_m=max((e[0] for e in errors), default=None),
                  max_r_err_deg=max((e[1] for e in errors), default=None),
                  statuses=[r.status for r in live.records])
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
