"""The relocalization node over a real ROS 2 graph: a 30 Hz 640x480 camera for N seconds.

    .venv/bin/python benchmarks/ros_graph.py [--duration 120] [--hz 30] [--map MAP] [--json F]

Starts ``nre_relocalization`` in its own process (``python -m nre_ros.ros.node``,
config/nre_ros.yaml + ``map_path``, wall clock), drives its lifecycle like a lifecycle manager
(configure is timed: Nav2's ``service_timeout`` is 5 s), then from this process publishes the
demo bag's 640x480 rgb8 images in a loop at ``--hz`` with fresh stamps (wall time): Image +
CameraInfo + odom->base TF (odometry = the frame's ground truth, so fixes pass the consistency
gate) and the static base->camera TF. Both processes use the Fast DDS large shared-memory
profile (``nre_ros/ros/dds.py``), without which best-effort 640x480 frames are lost.

Measured: image-in -> pose-out latency (monotonic receive time of ``~/pose`` here - time just
before the image was published, matched by stamp), the node's own counters from /diagnostics
(received / processed / dropped while busy / skipped by ``max_rate`` / failures / gated),
node RSS after activation and at the end (/proc VmRSS, VmHWM), node CPU time, load average.
The machine is shared: numbers are upper bounds under whatever else runs (load is printed).
``--oracle`` replaces the pipeline by the ground-truth oracle to check the harness itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nre_ros.ros.dds import ensure_isolation, ensure_large_image_profile  # noqa: E402

DEMO_BAG = REPO / 'maps' / 'demo' / 'queries_bag'
DEMO_MAP = REPO / 'maps' / 'demo' / 'fr1_rpy.nremap'


def load_frames(bag: Path):
    """(rgb, camera, T_map_base) of every image in the bag (ground truth needed)."""
    from nre_ros.eval.bags import T_BASE_CAM, read_bag
    from nre_ros.geometry import invert
    frames = []
    for f in read_bag(bag, with_depth=False):
        if f.camera is None or f.T_world_cam is None:
            continue
        frames.append((f.rgb, f.camera, f.T_world_cam @ invert(T_BASE_CAM)))
    if not frames:
        raise SystemExit(f'no images with camera_info and ground truth in {bag}')
    return frames


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (s), NaN once it is gone."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, IndexError, ValueError):
        return float('nan')


def loadavg() -> str:
    return ' '.join(Path('/proc/loadavg').read_text().split()[:3])


def time_configure(args) -> int:
    """Configure service time of ``args.configure_runs`` fresh node processes."""
    ensure_isolation(domain_id=args.domain_id if args.domain_id is not None
                     else 100 + os.getpid() % 100)
    import rclpy

    from nre_ros.commands.evaluate import _parse_params
    from nre_ros.eval.live import NODE_NAME, NodeProcess, default_params_file, node_command
    from nre_ros.ros.replay import Recorder, Spinner
    cmd = node_command(args.map, params_file=default_params_file(),
                       params=_parse_params(args.param), use_sim_time=False)
    rows = []
    for i in range(args.configure_runs):
        load = loadavg()
        proc = NodeProcess(cmd, args.node_log, env=dict(os.environ))
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        rec = Recorder(ctx, NODE_NAME)
        spin = Spinner(ctx, rec.node)
        try:
            t = rec.ensure_active(lambda pred, timeout: Spinner.wait(pred, timeout), 600.0)
        finally:
            spin.stop()
            rec.node.destroy_node()
            rclpy.try_shutdown(context=ctx)
            proc.stop()
        line = [ln.split(']: ', 1)[-1] for ln in proc.log_path.read_text().splitlines()
                if 'Configured:' in ln]
        rows.append(t['configure_s'])
        print(f"run {i + 1}: configure {t['configure_s']:.2f} s, activate {t['activate_s']:.2f} s"
              f" (load before {load}); {line[0][:100] if line else ''}", flush=True)
    print(f'configure min / median / max: {min(rows):.2f} / {np.median(rows):.2f} / '
          f'{max(rows):.2f} s')
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--duration', type=float, default=120.0, help='stream length (s)')
    p.add_argument('--hz', type=float, default=30.0, help='camera rate')
    p.add_argument('--bag', default=str(DEMO_BAG), help='images to loop (make-bag output)')
    p.add_argument('--map', default=str(DEMO_MAP), help='map for the node')
    p.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                   help='node parameter override (repeatable)')
    p.add_argument('--oracle', action='store_true', help='ground-truth oracle in the node')
    p.add_argument('--settle', type=float, default=15.0, help='wait for the last pose (s)')
    p.add_argument('--domain-id', type=int, default=None)
    p.add_argument('--json', help='write the numbers here too')
    p.add_argument('--node-log', default='out/ros_graph_node.log')
    p.add_argument('--configure-runs', type=int, default=0, metavar='N',
                   help='only time configure: N fresh node processes, no stream')
    args = p.parse_args(argv)
    if args.configure_runs:
        return time_configure(args)

    ensure_isolation(domain_id=args.domain_id if args.domain_id is not None
                     else 100 + os.getpid() % 100)
    ensure_large_image_profile()
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from nre_ros.commands.evaluate import _parse_params
    from nre_ros.eval.bags import FRAME_BASE, FRAME_CAMERA, FRAME_ODOM, T_BASE_CAM
    from nre_ros.eval.live import (NODE_NAME, NodeProcess, default_params_file, node_command,
                                   node_counters)
    from nre_ros.eval.run_metrics import latency_percentiles
    from nre_ros.ros import conversions as conv
    from nre_ros.ros.replay import Recorder, Spinner
    from nre_ros.ros.tf import TfBroadcaster, make_transform_stamped

    frames = load_frames(Path(args.bag))
    images, infos = [], []
    for rgb, cam, _ in frames:
        images.append(conv.numpy_to_image(np.ascontiguousarray(rgb), 'rgb8'))
        infos.append(CameraInfo(width=cam.width, height=cam.height, k=cam.K.reshape(-1).tolist(),
                                distortion_model=cam.distortion_model,
                                d=cam.ros_distortion().tolist(),
                                p=np.hstack([cam.K, np.zeros((3, 1))]).reshape(-1).tolist()))
    h, w = images[0].height, images[0].width

    program = ([sys.executable, '-m', 'nre_ros.eval.oracle_node', args.bag, '0', '0']
               if args.oracle else None)
    cmd = node_command(args.map, params_file=default_params_file(),
                       params=_parse_params(args.param), use_sim_time=False,
                       image_topic='/camera/color/image_raw', program=program)
    load_before = loadavg()
    proc = NodeProcess(cmd, args.node_log, env=dict(os.environ))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    rec = Recorder(ctx, NODE_NAME)
    spin = Spinner(ctx, rec.node)
    out: dict = {'hz': args.hz, 'duration_s': args.duration, 'image': f'{w}x{h} rgb8',
                 'oracle': args.oracle, 'load_before': load_before}
    try:
        def wait(pred, timeout_s):
            def check():
                if not proc.alive():
                    raise SystemExit(f'node exited ({proc.proc.returncode}):\n{proc.log_tail()}')
                return pred()
            return Spinner.wait(check, timeout_s)
        out.update(rec.ensure_active(wait, 600.0))
        out['load_after_configure'] = loadavg()
        time.sleep(1.0)
        out['rss_start_mb'] = proc.status_kb('VmRSS') / 1024
        cpu0 = cpu_seconds(proc.pid)
        img_pub = rec.node.create_publisher(Image, '/camera/color/image_raw',
                                            qos_profile_sensor_data)
        info_pub = rec.node.create_publisher(CameraInfo, '/camera/color/camera_info',
                                             qos_profile_sensor_data)
        static, tf = TfBroadcaster(rec.node, static=True), TfBroadcaster(rec.node)
        static.send([make_transform_stamped(T_BASE_CAM, FRAME_BASE, FRAME_CAMERA, 1)])
        if not wait(lambda: img_pub.get_subscription_count() > 0
                    and rec.node.count_publishers(rec.pose_topic) > 0, 30.0):
            raise SystemExit('the node does not subscribe to the image topic')
        n = int(round(args.duration * args.hz))
        period = 1.0 / args.hz
        start = time.monotonic()
        late = 0
        rss_samples = []                        # (s since stream start, MB) every 10 s
        for k in range(n):
            if k % int(round(10 * args.hz)) == 0:
                rss_samples.append((round(time.monotonic() - start, 1),
                                    round(proc.status_kb('VmRSS') / 1024, 1)))
            target = start + k * period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1                      # this process could not keep up
            i = k % len(frames)
            stamp_ns = time.time_ns()
            stamp = conv.ns_to_stamp(stamp_ns)
            tf.send([make_transform_stamped(frames[i][2], FRAME_ODOM, FRAME_BASE, stamp_ns)])
            info, image = infos[i], images[i]
            info.header.stamp = image.header.stamp = stamp
            info.header.frame_id = image.header.frame_id = FRAME_CAMERA
            info_pub.publish(info)
            rec.mark_sent(stamp_ns)
            img_pub.publish(image)
        send_s = time.monotonic() - start
        out['rss_timeline_mb'] = rss_samples
        t_end = time.monotonic() + args.settle
        last = rec.num_poses()
        while time.monotonic() < t_end:        # the last frame in flight may still come back
            time.sleep(0.5)
            if rec.num_poses() == last and time.monotonic() > rec.rec.last_send_s + 5.0:
                break
            last = rec.num_poses()
        t_diag = time.monotonic()
        wait(lambda: rec.rec.diagnostics_recv_s > t_diag, 5.0)
        out['rss_end_mb'] = proc.status_kb('VmRSS') / 1024
        out['rss_peak_mb'] = proc.status_kb('VmHWM') / 1024
        out['node_cpu_s'] = cpu_seconds(proc.pid) - cpu0
        out['load_after'] = loadavg()
    finally:
        spin.stop()
        rec.node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        out['node_exit_code'] = proc.stop()
    r = rec.snapshot()
    lat = [1e3 * (recv - r.sent[s]) for s, (recv, _) in r.poses.items()]
    node = node_counters(r.diagnostics)
    out.update({'frames_sent': len(r.order), 'send_s': send_s,
                'send_rate_hz': len(r.order) / send_s, 'sends_late': late,
                'poses_received': len(r.poses), 'latency_ms': latency_percentiles(lat),
                'node': node})
    configured = [ln for ln in proc.log_path.read_text().splitlines() if 'Configured:' in ln]
    out['node_configured_line'] = configured[0].split(']: ', 1)[-1] if configured else ''

    sent, recv = out['frames_sent'], node.get('frames_received', float('nan'))
    proc_n = node.get('frames_processed', float('nan'))
    rows = [
        ('stream', f"{w}x{h} rgb8, {args.hz:g} Hz target, {send_s:.1f} s, achieved "
                   f"{out['send_rate_hz']:.1f} Hz ({late} sends > 1 period late)"),
        ('frames sent / received by node', f'{sent} / {recv} ({sent - recv} never reached the '
                                           'callback: best effort, depth 1)'),
        ('frames processed', f"{proc_n} ({node.get('fixes_published', '-')} poses published, "
                             f"{node.get('localization_failures', '-')} failures, "
                             f"{node.get('fixes_rejected', '-')} gated)"),
        ('frames dropped (busy / max_rate / unpaired)',
         f"{node.get('frames_dropped_busy', '-')} / {node.get('frames_skipped_rate', '-')} / "
         f"{node.get('frames_unpaired', '-')} = {sent - proc_n} of {sent} not processed "
         f'({100.0 * (sent - proc_n) / max(sent, 1):.1f} %)'),
        ('poses received here', f"{out['poses_received']} "
                                f"({out['poses_received'] / send_s:.2f} per s)"),
        ('latency image->pose p50 / p90 / p99 (ms)',
         f"{out['latency_ms']['p50']:.0f} / {out['latency_ms']['p90']:.0f} / "
         f"{out['latency_ms']['p99']:.0f}"),
        ('node-side latency p50 / p90 (ms, last 200)',
         f"{node.get('node_p50_ms', float('nan')):.0f} / "
         f"{node.get('node_p90_ms', float('nan')):.0f}"),
        ('configure / activate service time (s)',
         f"{out['configure_s']:.2f} / {out['activate_s']:.2f}"),
        ('node log', out['node_configured_line'][:90]),
        ('node RSS start / end / peak (MB)', f"{out['rss_start_mb']:.0f} / "
                                             f"{out['rss_end_mb']:.0f} / "
                                             f"{out['rss_peak_mb']:.0f}"),
        ('node RSS every 10 s (MB)', ' '.join(f'{mb:.0f}' for _, mb in out['rss_timeline_mb'])),
        ('node CPU during stream (s / wall s)', f"{out['node_cpu_s']:.0f} / {send_s:.0f}"),
        ('load average before / after configure / end',
         f"{out['load_before']} | {out['load_after_configure']} | {out['load_after']}"),
    ]
    width = max(len(k) for k, _ in rows)
    print('\n'.join(f'{k:<{width}}  {v}' for k, v in rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
