"""Held-out evaluation of NRE training: pretrained XFeat heads vs NRE-trained heads.

Same pairs, same points, same solver (``nre_ros.solver.solve``: MSAC + GNC coarse, then fine
windows), one run. Test data is never trained on: fr3 cabinet keyframe pairs (12 per
easy/medium/hard tercile of viewpoint change, co-visibility >= 0.5) and the NRE MegaDepth
pair (translation in SfM units). Training used fr1_rpy (see nre_training/sets.py).

Usage: ``python benchmarks/training_eval.py [--weights FILE] [--no-fine] [--json OUT]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import nre_ros  # noqa: F401  (before torch: passive OpenMP waiting, as the product)
import torch

from nre_training.evaluate import format_table, held_out_eval


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', default=None,
                        help='trained heads (default nre_ros/weights/xfeat-ms-nre.safetensors)')
    parser.add_argument('--per-split', type=int, default=12)
    parser.add_argument('--no-fine', action='store_true', help='coarse level only')
    parser.add_argument('--val', action='store_true', help='also the fr1 validation pairs')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--json', default=None, help='write the rows as JSON here')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = held_out_eval(args.weights, per_split=args.per_split, fine=not args.no_fine,
                         include_val=args.val)
    print(format_table(rows))
    print(f'\n{time.perf_counter() - t0:.0f} s', file=sys.stderr)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
