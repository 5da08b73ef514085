"""``nre-ros train``: offline NRE training of the 'xfeat-ms-nre' heads (package nre_training).

The training package is imported inside ``run`` only: the node never imports it.
"""
from __future__ import annotations

import argparse
import shutil

NAME = 'train'
HELP = ('train NRE heads on frozen XFeat features with the NRE loss (offline; torchrun for '
        'DDP), or --eval-only to compare pretrained vs trained on held-out pairs')
ORDER = 80

_FIELDS = ('steps', 'batch', 'points', 'lr', 'weight_decay', 'decay_every', 'seed', 'hidden',
           'window',
           'jitter', 'fine_weight', 'fine_fraction', 'ckpt_every', 'val_every', 'max_pairs',
           'synthetic', 'synthetic_fine', 'textures', 'threads', 'cache_dir')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', '-o', default='runs/xfeat-ms-nre',
                        help='run folder (checkpoint, metrics.csv, val.csv, weights)')
    defaults = {'steps': 600, 'batch': 8, 'points': 96, 'lr': 1e-3, 'weight_decay': 0.0,
                'decay_every': 100,
                'seed': 0, 'hidden': 64, 'window': 16, 'jitter': 4.0, 'fine_weight': 1.0,
                'fine_fraction': 0.5,
                'ckpt_every': 100, 'val_every': 200, 'max_pairs': 600, 'synthetic': 40,
                'synthetic_fine': 40, 'textures': 10,
                'threads': 2, 'cache_dir': '~/.cache/nre_training'}
    for name in _FIELDS:
        d = defaults[name]
        parser.add_argument('--' + name.replace('_', '-'), type=type(d), default=d,
                            help=f'(default {d})')
    parser.add_argument('--no-colmap', action='store_true', help='skip the COLMAP pairs')
    parser.add_argument('--no-val', action='store_true', help='skip pose validation')
    parser.add_argument('--fixed-temperature', action='store_true',
                        help='keep the inverse temperatures at 20 (train the heads only)')
    parser.add_argument('--random-points', action='store_true',
                        help='train on random pixels instead of XFeat keypoints')
    parser.add_argument('--fresh', action='store_true', help='ignore an existing checkpoint')
    parser.add_argument('--install', action='store_true',
                        help='copy the trained weights to nre_ros/weights/ (model xfeat-ms-nre)')
    parser.add_argument('--eval-only', action='store_true',
                        help='only run the held-out evaluation of --weights')
    parser.add_argument('--weights', default=None, help='heads file for --eval-only')


def run(args: argparse.Namespace) -> int:
    if args.eval_only:
        from nre_training.evaluate import format_table, held_out_eval
        print(format_table(held_out_eval(args.weights, args.cache_dir)))
        return 0
    from nre_training.train import TrainConfig
    from nre_training.train import run as train_run
    cfg = TrainConfig(out=args.out, colmap=not args.no_colmap, validate=not args.no_val,
                      keypoints=not args.random_points,
                      train_temperature=not args.fixed_temperature,
                      **{k: getattr(args, k) for k in _FIELDS})
    state = train_run(cfg, resume=not args.fresh)
    weights = f'{args.out}/xfeat-ms-nre.safetensors'
    print(f'trained {state.step} steps; weights: {weights}')
    if args.install:
        from nre_ros.models.xfeat_nre import WEIGHTS_FILE
        WEIGHTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, WEIGHTS_FILE)
        print(f'installed as {WEIGHTS_FILE}')
    return 0

