"""Training loop: NRE heads on frozen XFeat features with the Eq. 10 loss.

Plain torch, deterministic (the batch of step k is drawn from a generator seeded by
(seed, k), so a resumed run draws exactly what an uninterrupted one would), tqdm progress,
resumable safetensors checkpoints (heads + Adam state + step; no pickle), metrics to
``metrics.csv`` / ``val.csv`` (and TensorBoard when importable), validation = NRE pose accuracy
on held-out fr1 pairs with ``nre_ros.solver.solve``. Multi-process with ``torchrun`` (DDP, gloo
on CPU, nccl on GPU): every rank takes a slice of the step's pairs.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from nre_ros.models.xfeat_nre import NreHeads, save_heads
from nre_training.features import FeatureCache
from nre_training.pairs import PairLoss, TrainPair, cached_features, to_train_pairs

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: str = 'runs/xfeat-ms-nre'
    steps: int = 600
    batch: int = 8                 # pairs per step (over all ranks)
    points: int = 96               # points per pair per step
    lr: float = 1e-3
    weight_decay: float = 0.0      # AdamW decay of the head weights: pulls the heads to identity
    decay_every: int = 100         # lr *= exp(-0.1) every this many steps (paper: per epoch)
    seed: int = 0
    hidden: int = 64
    window: int = 16               # fine window side (fine cells), as the pipeline
    jitter: float = 4.0            # window centre offset from the truth, +- fine cells
    fine_weight: float = 1.0
    fine_fraction: float = 0.5     # share of each batch drawn from pairs with fine supervision
    ckpt_every: int = 100
    val_every: int = 200
    val_pairs_per_split: int = 4
    max_pairs: int = 600           # mined fr1 pairs
    synthetic: int = 40
    synthetic_fine: int = 40       # synthetic pairs that also get fine supervision
    textures: int = 10             # images the synthetic planes are textured with
    keypoints: bool = True         # RGB-D / synthetic points at XFeat keypoints (as maps)
    train_temperature: bool = True  # False: temperatures stay at 20 (heads only)
    colmap: bool = True
    threads: int = 2
    cache_dir: str = '~/.cache/nre_training'
    progress: bool = True
    validate: bool = True


def draw_batch(pairs: list[TrainPair], step: int, cfg: TrainConfig, rank: int = 0,
               world: int = 1) -> list[tuple[TrainPair, Tensor, Tensor]]:
    """The step's (pair, point indices, jitter) for this rank; a pure function of (seed, step).
    ``cfg.fine_fraction`` of the batch comes from the pairs with fine supervision."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    fine_ids = torch.tensor([i for i, p in enumerate(pairs) if p.fine], dtype=torch.long)
    n_fine = int(round(cfg.batch * cfg.fine_fraction)) if len(fine_ids) else 0
    which = torch.cat([fine_ids[torch.randint(len(fine_ids), (n_fine,), generator=g)]
                       if n_fine else torch.zeros(0, dtype=torch.long),
                       torch.randint(len(pairs), (cfg.batch - n_fine,), generator=g)])
    items = []
    for k, i in enumerate(which.tolist()):
        p = pairs[i]
        idx = torch.randperm(len(p.uv_src), generator=g)[:cfg.points]
        jitter = (torch.rand(len(idx), 2, generator=g) * 2 - 1) * cfg.jitter
        if k % world == rank:
            items.append((p, idx, jitter))
    return items


def lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * math.exp(-0.1 * step / cfg.decay_every)


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, heads: NreHeads, opt: torch.optim.Optimizer, step: int,
                    cfg: TrainConfig) -> Path:
    """heads + Adam state + step in one safetensors file (written atomically)."""
    from safetensors.torch import save_file
    path = Path(path)
    tensors = {f'model.{k}': v.detach().clone().contiguous()
               for k, v in heads.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd['state'].items():
        for name, v in st.items():
            tensors[f'optim.{pid}.{name}'] = torch.as_tensor(v).clone().contiguous()
    meta = {'step': str(step), 'param_groups': json.dumps(sd['param_groups']),
            'config': json.dumps(asdict(cfg)), 'heads_config': json.dumps(heads.config)}
    tmp = path.with_suffix('.tmp')
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, heads: NreHeads, opt: torch.optim.Optimizer) -> int:
    """Restore heads and optimizer from ``save_checkpoint``; returns the step."""
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    heads.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith('model.')})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith('optim.'):
            _, pid, name = k.split('.', 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({'state': state, 'param_groups': json.loads(meta['param_groups'])})
    return int(meta['step'])


# ---------------------------------------------------------------------------- setup
def distributed() -> tuple[int, int]:
    """(rank, world size); initializes torch.distributed when launched by torchrun."""
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    return dist.get_rank(), dist.get_world_size()


class Metrics:
    """CSV writer (+ TensorBoard when installed)."""

    def __init__(self, path: Path, fields: list[str], resume: bool) -> None:
        self.path, self.fields = path, fields
        if not (resume and path.exists()):
            with open(path, 'w', newline='') as f:
                csv.writer(f).writerow(fields)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(path.parent / 'tb'))
        except Exception:  # tensorboard not installed
            self.tb = None

    def write(self, row: dict) -> None:
        with open(self.path, 'a', newline='') as f:
            csv.writer(f).writerow([row.get(k, '') for k in self.fields])
        if self.tb is not None:
            for k, v in row.items():
                if k != 'step' and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f'{self.path.stem}/{k}', v, row['step'])


@dataclass
class TrainState:
    heads: NreHeads
    opt: torch.optim.Optimizer
    step: int = 0
    history: list[dict] = field(default_factory=list)


def make_state(cfg: TrainConfig) -> TrainState:
    torch.manual_seed(cfg.seed)
    heads = NreHeads(hidden=cfg.hidden)
    heads.log_inv_temperature.requires_grad_(cfg.train_temperature)
    weights = [p for n, p in heads.named_parameters() if n != 'log_inv_temperature']
    opt = torch.optim.AdamW([{'params': weights, 'weight_decay': cfg.weight_decay},
                             {'params': [heads.log_inv_temperature], 'weight_decay': 0.0}],
                            lr=cfg.lr)
    return TrainState(heads, opt)


def train_steps(state: TrainState, pairs: list[TrainPair], cache: FeatureCache,
                cfg: TrainConfig, until: int, rank: int = 0, world: int = 1,
                on_step=None) -> TrainState:
    """Run optimizer steps state.step .. until-1 (in place)."""
    module: nn.Module = PairLoss(state.heads, cache, cfg.window, cfg.fine_weight)
    if world > 1 or dist.is_initialized():
        module = nn.parallel.DistributedDataParallel(module)
    bar = tqdm(range(state.step, until), initial=state.step, total=until,
               disable=not (cfg.progress and rank == 0), desc='train')
    for step in bar:
        for group in state.opt.param_groups:
            group['lr'] = lr_at(step, cfg)
        items = draw_batch(pairs, step, cfg, rank, world)
        loss, parts = module(items)
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        state.opt.step()
        state.step = step + 1
        row = {'step': state.step, 'loss': float(loss.detach()), 'coarse': float(parts[0]),
               'fine': float(parts[1]), 'lr': lr_at(step, cfg)}
        tc, tf = state.heads.inv_temperatures()
        row.update(inv_temp_coarse=tc, inv_temp_fine=tf)
        state.history.append(row)
        bar.set_postfix(loss=f'{row["loss"]:.3f}', c=f'{row["coarse"]:.2f}',
                        f=f'{row["fine"]:.2f}')
        if on_step is not None:
            on_step(state, row)
    return state


def run(cfg: TrainConfig, resume: bool = True) -> TrainState:
    """Full training run: sets, cached features, loop, checkpoints, validation, export."""
    from nre_training.evaluate import eval_pairs, evaluate, mean_losses
    from nre_training.sets import keypoint_points, training_set, validation_set
    torch.set_num_threads(cfg.threads)
    rank, world = distributed()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'config.json').write_text(json.dumps(asdict(cfg), indent=2))
    t_start = time.perf_counter()
    tset = training_set(cfg.seed, cfg.max_pairs, cfg.synthetic, cfg.colmap,
                        textures=cfg.textures, synthetic_fine=cfg.synthetic_fine)
    cache = cached_features(f'train-s{cfg.seed}-p{cfg.max_pairs}-y{cfg.synthetic}'
                            f'-f{cfg.synthetic_fine}-t{cfg.textures}-c{int(cfg.colmap)}', tset,
                            cfg.cache_dir, rank)
    if cfg.keypoints:
        keypoint_points(tset, cache, seed=cfg.seed)
    pairs = to_train_pairs(tset)
    val = None
    if cfg.validate and rank == 0:
        vset = validation_set(cfg.val_pairs_per_split, cfg.seed)
        vcache = cached_features(f'val-s{cfg.seed}-{cfg.val_pairs_per_split}', vset, cfg.cache_dir)
        val = {'fr1_val': (eval_pairs(vset, vcache), vcache)}
        val_loss_pairs = to_train_pairs(keypoint_points(vset, vcache, seed=cfg.seed))
    logger.info('%d training pairs (%d with fine), features in %.0f s', len(pairs),
                sum(p.fine for p in pairs), time.perf_counter() - t_start)
    state = make_state(cfg)
    ckpt = out / 'checkpoint.safetensors'
    if resume and ckpt.exists():
        state.step = load_checkpoint(ckpt, state.heads, state.opt)
        logger.info('resumed from %s at step %d', ckpt, state.step)
    fields = ['step', 'loss', 'coarse', 'fine', 'lr', 'inv_temp_coarse', 'inv_temp_fine',
              'wall_s']
    metrics = Metrics(out / 'metrics.csv', fields, resume) if rank == 0 else None
    vfields = ['step', 'pairs', 'recall_25cm_2deg', 'recall_50cm_5deg', 'recall_5m_10deg',
               'median_t_m', 'median_r_deg', 'coarse_loss', 'fine_loss']
    best = {'loss': math.inf, 'step': -1}
    vmetrics = Metrics(out / 'val.csv', vfields, resume) if val else None

    def validate(step: int) -> None:
        """Pose accuracy and Eq. 10 on the held-out fr1 pairs; the heads with the lowest
        validation coarse loss are kept as ``best.safetensors`` (early stopping)."""
        row = [r for r in evaluate({'heads': state.heads}, val) if r['split'] == 'all'][0]
        c, f = mean_losses(state.heads, val_loss_pairs, val['fr1_val'][1], cfg.window)
        state.heads.train()
        vmetrics.write({'step': step, 'pairs': row['n'], 'recall_25cm_2deg': row['recall'][0],
                        'recall_50cm_5deg': row['recall'][1],
                        'recall_5m_10deg': row['recall'][2], 'median_t_m': row['median_t'],
                        'median_r_deg': row['median_r_deg'], 'coarse_loss': c,
                        'fine_loss': f})
        if c < best['loss']:
            best.update(loss=c, step=step)
            save_heads(state.heads, out / 'best.safetensors', {'step': step, 'val_coarse': c})

    if val and state.step == 0:
        validate(0)

    def on_step(st: TrainState, row: dict) -> None:
        if rank != 0:
            return
        row['wall_s'] = round(time.perf_counter() - t_start, 1)
        metrics.write(row)
        if st.step % cfg.ckpt_every == 0 or st.step == cfg.steps:
            save_checkpoint(ckpt, st.heads, st.opt, st.step, cfg)
        if val and (st.step % cfg.val_every == 0 or st.step == cfg.steps):
            validate(st.step)

    state.heads.train()
    train_steps(state, pairs, cache, cfg, cfg.steps, rank, world, on_step)
    if rank == 0:
        tc, tf = state.heads.inv_temperatures()
        prov = {'steps': state.step, 'pairs': len(pairs), 'config': asdict(cfg),
                'best_val_step': best['step'], 'best_val_coarse_loss': best['loss'],
                'wall_s': round(time.perf_counter() - t_start, 1),
                'inv_temperature': [tc, tf],
                'data': 'fr1_rpy hard_map minus query splits (first 85% in time), synthetic '
                        'planes, Sacre-Coeur COLMAP minus held-out images'}
        # The last heads are the result; best.safetensors (lowest validation coarse loss) is
        # kept beside them for early stopping by hand (validation is 12 pairs: noisy).
        save_heads(state.heads, out / 'xfeat-ms-nre.safetensors', prov)
    if dist.is_initialized():
        dist.barrier()
    return state
