#!/usr/bin/env python3
"""Feature-network benchmark: ms/frame per backend and model at 640x480, and descriptor quality.

    python benchmarks/networks.py [--repeats 5] [--threads 2] [--quality] [--fine-paths]
                                  [--json]

Speed: median and IQR of ``--repeats`` runs after a warm-up, coarse and fine levels timed
separately, for every backend that can run here (torch CPU fp32 and bf16, ONNX Runtime CPU;
torch CUDA fp16, ONNX Runtime CUDA and TensorRT where present). The NRE paper's 15.5 + 7.2 ms (GTX 1080Ti,
coarse + fine) is printed for reference; it was not measured here.

Fine paths (--fine-paths): the fine network of each model with an integer upsampling in its
original layers (``NRE_ROS_FINE_PHASE=0``) and with XFeat's first block in phase form
(``NRE_ROS_FINE_PHASE=1``, nre_ros.models.xfeat_phase; by default the product runs it in bf16
and on CUDA only), timed interleaved (one run of each per repeat) on the torch backends, with
the largest difference between their descriptors.

Quality (--quality): median cosine-argmax reprojection error of co-visible points on the NRE
MegaDepth pair and on TUM fr1_rpy map/query pairs (nre_ros.models.quality), for the default model,
its bf16 networks (torch CPU, ``precision: bf16``), a randomly initialized network of the same
shape and DISK (when its wheel is installed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nre_ros  # noqa: E402,F401  (before torch: passive OpenMP waiting, as the product)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nre_ros.backends import BackendConfig, load_backend  # noqa: E402
from nre_ros.errors import BackendUnavailable  # noqa: E402
from nre_ros.models import load_model  # noqa: E402

PAPER_MS = {'coarse': 15.5, 'fine': 7.2}   # NRE paper, GTX 1080Ti, not measured here


def header(threads: int) -> dict:
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, text=True,
                                capture_output=True).stdout.strip()
    except OSError:
        commit = '?'
    versions = {'python': platform.python_version(), 'torch': torch.__version__}
    for mod in ('onnxruntime', 'tensorrt', 'kornia'):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, OSError):
            versions[mod] = 'absent'
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'
    return {'commit': commit, 'cpu': platform.processor() or platform.machine(), 'gpu': gpu,
            'threads': threads, 'versions': versions}


def backend_configs(threads: int) -> list[tuple[str, BackendConfig]]:
    out = [('torch-cpu', BackendConfig(backend='torch', device='cpu', threads=threads)),
           ('torch-cpu-bf16', BackendConfig(backend='torch', device='cpu', precision='bf16',
                                            threads=threads)),
           ('onnxruntime-cpu', BackendConfig(backend='onnxruntime', device='cpu',
                                             threads=threads))]
    if torch.cuda.is_available():
        out += [('torch-cuda-fp16', BackendConfig(backend='torch', device='cuda', fp16=True)),
                ('onnxruntime-cuda', BackendConfig(backend='onnxruntime', device='cuda')),
                ('tensorrt-fp16', BackendConfig(backend='tensorrt', device='cuda'))]
    return out


def time_level(model, image: np.ndarray, level: str, repeats: int) -> tuple[float, float]:
    """(median, IQR) ms of one level's network on ``image`` (padding included)."""
    from nre_ros.models.xfeat import pad_image
    runner = model.runner
    x = pad_image(image, model.pad_multiple, runner.device, runner.input_dtype)
    runner(level, x)                                     # warm-up (and CUDA kernel selection)
    times = []
    for _ in range(repeats):
        if runner.device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner(level, x)
        if runner.device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return float(med), float(q3 - q1)


def speed(models: list[str], repeats: int, threads: int) -> list[dict]:
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    rows = []
    for name in models:
        for label, cfg in backend_configs(threads):
            cfg = BackendConfig(**{**cfg.__dict__, 'model': name})
            try:
                model = load_backend(cfg)
            except BackendUnavailable as exc:
                rows.append({'model': name, 'backend': label, 'skipped': str(exc)})
                continue
            row = {'model': name, 'backend': label}
            for level in model.runner.levels():
                med, iqr = time_level(model, image, level, repeats)
                row[f'{level}_ms'], row[f'{level}_iqr_ms'] = med, iqr
            rows.append(row)
    return rows


def load_with_phase(name: str, phase: bool):
    """Model ``name`` whose fine network always (``phase``) or never runs the phase form."""
    previous = os.environ.get('NRE_ROS_FINE_PHASE')
    os.environ['NRE_ROS_FINE_PHASE'] = '1' if phase else '0'
    try:
        return load_model(name)
    finally:
        if previous is None:
            del os.environ['NRE_ROS_FINE_PHASE']
        else:
            os.environ['NRE_ROS_FINE_PHASE'] = previous


def fine_paths(models: list[str], repeats: int, threads: int) -> list[dict]:
    """Fine network ms of the original layers vs the phase form, interleaved, torch backends."""
    from nre_ros.models.xfeat import pad_image
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    rows = []
    for name in models:
        phase_model = load_with_phase(name, True)
        if getattr(getattr(phase_model, 'fine_net', None), 'phase_block1', None) is None:
            rows.append({'model': name, 'skipped': 'no phase form (no integer fine upsampling)'})
            continue
        original_model = load_with_phase(name, False)
        for label, cfg in backend_configs(threads):
            if not label.startswith('torch'):
                continue
            cfg = BackendConfig(**{**cfg.__dict__, 'model': name})
            try:
                pair = {'original': load_backend(cfg, model=original_model),
                        'phase': load_backend(cfg, model=phase_model)}
            except BackendUnavailable as exc:
                rows.append({'model': name, 'backend': label, 'skipped': str(exc)})
                continue
            runner = pair['phase'].runner
            x = pad_image(image, phase_model.pad_multiple, runner.device, runner.input_dtype)
            out = {k: m.runner('fine', x)[0] for k, m in pair.items()}   # warm-up
            times = {k: [] for k in pair}
            for _ in range(repeats):
                for k, m in pair.items():
                    if runner.device.type == 'cuda':
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    m.runner('fine', x)
                    if runner.device.type == 'cuda':
                        torch.cuda.synchronize()
                    times[k].append(1e3 * (time.perf_counter() - t0))
            row = {'model': name, 'backend': label,
                   'max_abs_diff': float((out['phase'] - out['original']).abs().max())}
            for k, ts in times.items():
                q1, med, q3 = np.percentile(ts, [25, 50, 75])
                row[f'{k}_ms'], row[f'{k}_iqr_ms'] = float(med), float(q3 - q1)
            rows.append(row)
    return rows


def quality(n_tum_pairs: int) -> list[dict]:
    from nre_ros.datasets import TumSequence
    from nre_ros.models import quality as Q
    data = REPO.parent / 'shared' / 'data'
    sets = {'megadepth': [Q.megadepth_pair(data / 'nre_megadepth_pair')],
            'tum_fr1_rpy': Q.tum_pairs(TumSequence(data / 'tum_rgbd_fr1_rpy'), n_tum_pairs)}
    candidates = [('xfeat-ms', True, 'fp32'), ('xfeat-ms', True, 'bf16'),
                  ('xfeat-ms', False, 'fp32'), ('disk', True, 'fp32')]
    rows = []
    for name, pretrained, precision in candidates:
        try:
            model = load_model(name, pretrained=pretrained)
            if precision == 'bf16':
                model = load_backend(BackendConfig(model=name, backend='torch',
                                                   precision='bf16', threads=0), model=model)
        except BackendUnavailable as exc:
            rows.append({'model': name, 'skipped': str(exc)})
            continue
        label = name if pretrained else f'{name} (random init)'
        label += ' bf16' if precision == 'bf16' else ''
        for set_name, pairs in sets.items():
            sc = model.spec.coarse_stride
            ec = Q.evaluate_level(model, pairs, 'coarse')
            ef = Q.evaluate_level(model, pairs, 'fine')
            ew = Q.evaluate_level(model, pairs, 'fine', window_half=8, window_jitter_px=sc)
            rows.append({'model': label, 'set': set_name, 'points': int(ec.size),
                         'coarse_median_px': float(np.median(ec)),
                         'coarse_within_cell_pct': float(100 * np.mean(ec <= sc)),
                         'fine_median_px': float(np.median(ef)),
                         'fine_within_2px_pct': float(100 * np.mean(ef <= 2)),
                         'fine_window_median_px': float(np.median(ew)),
                         'fine_window_within_2px_pct': float(100 * np.mean(ew <= 2))})
    return rows


def print_fine_paths(rows: list[dict]) -> None:
    print('\n| model | backend | fine ms original layers (IQR) | fine ms phase form (IQR) | '
          'original / phase | max abs diff |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        if 'skipped' in r:
            print(f"| {r['model']} | {r.get('backend', '')} | skipped: {r['skipped'][:60]} "
                  '| | | |')
            continue
        print(f"| {r['model']} | {r['backend']} | {r['original_ms']:.1f} "
              f"({r['original_iqr_ms']:.1f}) | {r['phase_ms']:.1f} ({r['phase_iqr_ms']:.1f}) | "
              f"{r['original_ms'] / r['phase_ms']:.2f} | {r['max_abs_diff']:.1e} |")


def print_tables(head: dict, speed_rows: list[dict], quality_rows: list[dict]) -> None:
    v = head['versions']
    print(f"# networks benchmark  commit {head['commit']}  cpu {head['cpu']}  gpu {head['gpu']}  "
          f"threads {head['threads']}")
    print('# ' + '  '.join(f'{k} {val}' for k, val in v.items()))
    print('\n| model | backend | coarse ms (IQR) | fine ms (IQR) | 640x480 |')
    print('|---|---|---|---|---|')
    for r in speed_rows:
        if 'skipped' in r:
            print(f"| {r['model']} | {r['backend']} | skipped: {r['skipped'][:60]} | | |")
            continue
        cells = [f"{r[f'{lv}_ms']:.1f} ({r[f'{lv}_iqr_ms']:.1f})" if f'{lv}_ms' in r else '-'
                 for lv in ('coarse', 'fine')]
        print(f"| {r['model']} | {r['backend']} | {cells[0]} | {cells[1]} | measured |")
    print(f"| NRE paper | GTX 1080Ti | {PAPER_MS['coarse']} | {PAPER_MS['fine']} | "
          'reference (paper, not measured) |')
    if quality_rows:
        print('\n| model | set | points | coarse median px | coarse within 1 cell | '
              'fine median px | fine <= 2 px | fine window median px | fine window <= 2 px |')
        print('|---|---|---|---|---|---|---|---|---|')
        for r in quality_rows:
            if 'skipped' in r:
                print(f"| {r['model']} | skipped: {r['skipped'][:70]} |")
                continue
            print(f"| {r['model']} | {r['set']} | {r['points']} | {r['coarse_median_px']:.1f} | "
                  f"{r['coarse_within_cell_pct']:.0f}% | {r['fine_median_px']:.1f} | "
                  f"{r['fine_within_2px_pct']:.0f}% | {r['fine_window_median_px']:.1f} | "
                  f"{r['fine_window_within_2px_pct']:.0f}% |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['xfeat-ms', 'nre-paper'])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--quality', action='store_true', help='also measure descriptor quality')
    parser.add_argument('--no-speed', action='store_true')
    parser.add_argument('--fine-paths', action='store_true',
                        help='also time the fine network in its original layers vs phase form')
    parser.add_argument('--tum-pairs', type=int, default=4)
    parser.add_argument('--json', action='store_true', help='print one JSON object instead')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head = header(args.threads)
    speed_rows = [] if args.no_speed else speed(args.models, args.repeats, args.threads)
    quality_rows = quality(args.tum_pairs) if args.quality else []
    path_rows = fine_paths(args.models, args.repeats, args.threads) if args.fine_paths else []
    if args.json:
        print(json.dumps({'header': head, 'speed': speed_rows, 'quality': quality_rows,
                          'fine_paths': path_rows, 'paper_reference_ms': PAPER_MS}, indent=1))
    else:
        print_tables(head, speed_rows, quality_rows)
        if path_rows:
            print_fine_paths(path_rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
