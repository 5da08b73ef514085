"""``nre-ros demo``: relocalize the shipped demo queries against the shipped demo map."""
from __future__ import annotations

import argparse
import time

import numpy as np

from nre_ros.datasets import TumSequence
from nre_ros.eval.metrics import errors, summarize
from nre_ros.eval.run_metrics import predicted_sigmas
from nre_ros.geometry import invert
from nre_ros.paths import shared_file
from nre_ros.pipeline import PipelineConfig, Relocalizer

NAME = 'demo'
HELP = 'relocalize the shipped demo images against the shipped demo map and print a table'
ORDER = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--map', default=None, help='map directory (default: the demo map)')
    parser.add_argument('--queries', default=None,
                        help='query folder in the TUM layout (default: the shipped demo queries)')
    parser.add_argument('--config', default=None, help='pipeline YAML (default: built-in)')


def run(args: argparse.Namespace) -> int:
    map_path = args.map or shared_file('maps/demo/fr1_rpy.nremap')
    queries = args.queries or shared_file('maps/demo/queries')
    config = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    t0 = time.perf_counter()
    reloc = Relocalizer.from_config(map_path, config)
    reloc.warmup()
    seq = TumSequence(queries)
    print(f'map {map_path}: {reloc.map.num_keyframes} keyframes, {reloc.map.num_points} points, '
          f'model {reloc.model.spec.name} (loaded in {1e3 * (time.perf_counter() - t0):.0f} ms)')
    print(f'{len(seq)} held-out query images from {queries}\n')
    print(f'{"image":<26} {"status":<20} {"x":>7} {"y":>7} {"z":>7} {"err m":>7} {"err deg":>7} '
          f'{"sigma m":>7} {"ms":>6}')
    estimates, ms = [], []
    for frame in seq.frames:
        out = reloc.localize(seq.load_rgb(frame), seq.camera)
        ms.append(out.timings_ms.get('total', float('nan')))
        estimates.append(out.T_cam_world if out.ok else None)
        if out.ok:
            t_err, r_err = errors([out.T_cam_world], invert(frame.T_world_cam)[None])
            c = out.T_world_cam[:3, 3]
            sigma = predicted_sigmas(out.covariance)[0]
            print(f'{frame.name:<26} {"localized":<20} {c[0]:7.3f} {c[1]:7.3f} {c[2]:7.3f} '
                  f'{t_err[0]:7.3f} {r_err[0]:7.2f} {sigma:7.3f} {ms[-1]:6.0f}')
        else:
            print(f'{frame.name:<26} {"failed: " + out.reason:<20} {"":>7} {"":>7} {"":>7} '
                  f'{"":>7} {"":>7} {"":>7} {ms[-1]:6.0f}')
    gt = np.stack([invert(f.T_world_cam) for f in seq.frames])
    s = summarize(*errors(estimates, gt), ms=np.array(ms))
    print(f'\nlocalized {s.num_published}/{s.num_queries}; recall (0.25 m, 2 deg) '
          f'{s.recall[0]:.2f}, (0.5 m, 5 deg) {s.recall[1]:.2f}, (5 m, 10 deg) {s.recall[2]:.2f}; '
          f'median error {100 * s.median_t_m:.1f} cm / {s.median_r_deg:.2f} deg; '
          f'{s.ms_p50:.0f} ms per image (p50)')
    return 0
