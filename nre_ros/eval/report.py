"""Self-contained HTML report of a replayed run: tables plus plots embedded as base64 PNG.

Plots: trajectory top view (ground truth vs estimate coloured by error), error CDFs, latency
histogram per stage, predicted sigma vs actual error. No external files or scripts.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np

from nre_ros.eval import run_metrics as rm
from nre_ros.eval.metrics import THRESHOLDS

logger = logging.getLogger(__name__)

GT_COLOR = '#1f77b4'       # ground truth (blue); the screenshot test looks for it
FAIL_COLOR = '#d62728'     # failures / dropped frames (red)
EST_CMAP = 'viridis'


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode('ascii')


def _figure(*args, **kwargs):
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    return plt.subplots(*args, layout='constrained', **kwargs)


def top_view_axes(R_world_cam: np.ndarray) -> tuple[int, int, int]:
    """(a, b, up): the map axes of a top view and the up axis, from (N, 3, 3) camera rotations.

    Up is the map axis most opposed to the cameras' mean image-down direction (optical +y),
    i.e. z for a z-up map (REP 103) with level cameras; (a, b) follow it right-handed
    (x, y for z up), so the plot is seen from above."""
    down = np.asarray(R_world_cam, np.float64).reshape(-1, 3, 3)[:, :, 1].mean(axis=0)
    up = int(np.argmax(np.abs(down))) if np.any(down) else 2
    return (up + 1) % 3, (up + 2) % 3, up


def plot_trajectory(records) -> str:
    """Top view of the camera centres: the map's ground plane, seen from its up axis."""
    with_gt = [r for r in records if r.T_gt is not None]
    gt = np.array([rm.camera_centres(r.T_gt)[0] for r in with_gt])
    fixes = [r for r in records if r.status == 'fix']
    fig, ax = _figure(figsize=(6.5, 5.5))
    up = 2
    if gt.size:
        a, b, up = top_view_axes(np.array([_R_world_cam(r.T_gt) for r in with_gt]))
        ax.plot(gt[:, a], gt[:, b], '-o', color=GT_COLOR, ms=3, lw=1.5, label='ground truth')
        misses = np.array([rm.camera_centres(r.T_gt)[0] for r in records
                           if r.T_gt is not None and r.status != 'fix']).reshape(-1, 3)
        if len(misses):
            ax.plot(misses[:, a], misses[:, b], 'x', color=FAIL_COLOR, ms=7,
                    label='no fix (failure / dropped)')
        if fixes:
            c = rm.camera_centres(np.array([r.T_est for r in fixes]))
            err = np.array([r.errors()[0] for r in fixes])
            sc = ax.scatter(c[:, a], c[:, b], c=np.nan_to_num(err, nan=0.0), cmap=EST_CMAP,
                            s=30, edgecolors='k', linewidths=0.4, zorder=3, label='estimate')
            fig.colorbar(sc, ax=ax, label='translation error (m)')
        names = 'xyz'
        ax.set_xlabel(f'map {names[a]} (m)')
        ax.set_ylabel(f'map {names[b]} (m)')
        ax.set_aspect('equal', adjustable='datalim')
    ax.set_title(f'Camera centres, top view (map {"xyz"[up]} up, unaligned)')
    ax.legend(loc='best', fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _R_world_cam(T_cam_world: np.ndarray) -> np.ndarray:
    """(3, 3) camera-to-world rotation of a world-to-camera pose."""
    return np.asarray(T_cam_world)[:3, :3].T


def plot_error_cdfs(records) -> str:
    proc = [r for r in records if r.processed and r.T_gt is not None]
    err = np.array([r.errors() for r in proc]).reshape(-1, 2)
    fig, axes = _figure(1, 2, figsize=(10, 3.8))
    for k, (ax, unit, label) in enumerate(zip(axes, ('m', 'deg'), ('translation', 'rotation'))):
        e = np.sort(err[:, k])
        if e.size:
            y = np.arange(1, e.size + 1) / e.size
            finite = np.isfinite(e)
            ax.step(e[finite], y[finite], where='post', color=GT_COLOR, lw=2)
            for thr in sorted({t[k] for t in THRESHOLDS}):
                ax.axvline(thr, color='0.6', ls='--', lw=0.8)
            if finite.any() and e[finite].max() > 0:
                ax.set_xscale('log')
        ax.set_ylim(0, 1)
        ax.set_xlabel(f'{label} error ({unit})')
        ax.set_ylabel('fraction of processed frames')
        ax.set_title(f'{label} error CDF (failures never reach 1)')
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_latency(records) -> str:
    proc = [r for r in records if r.processed]
    fig, ax = _figure(figsize=(10, 3.8))
    series = {'measured': [r.latency_ms for r in proc]}
    for s in sorted({k for r in proc for k in r.timings_ms}):
        series[s] = [r.timings_ms[s] for r in proc if s in r.timings_ms]
    values = np.concatenate([np.asarray(v, float) for v in series.values()]) if proc else []
    values = np.asarray(values)[np.isfinite(values)] if len(values) else np.zeros(0)
    if values.size:
        bins = np.linspace(0, max(values.max(), 1e-3) * 1.05, 40)
        for i, (name, v) in enumerate(series.items()):
            ax.hist(v, bins=bins, alpha=0.55, label=name,
                    color=GT_COLOR if name == 'measured' else f'C{i + 1}')
    ax.set_xlabel('ms')
    ax.set_ylabel('frames')
    ax.set_title('Latency per stage (measured = processing time = publish - image stamp)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_sigma_vs_error(records) -> str:
    fixes = [r for r in records if r.status == 'fix' and r.T_gt is not None
             and r.covariance is not None]
    fig, axes = _figure(1, 2, figsize=(10, 4))
    for k, (ax, unit) in enumerate(zip(axes, ('m', 'deg'))):
        if fixes:
            sig = np.array([r.sigmas()[k] for r in fixes])
            err = np.array([r.errors()[k] for r in fixes])
            ax.scatter(sig, err, color=GT_COLOR, s=18, edgecolors='k', linewidths=0.3)
            lo = max(1e-6, min(sig.min(), err[err > 0].min() if np.any(err > 0) else sig.min()))
            hi = max(sig.max(), err.max(), lo * 10)
            xs = np.array([lo, hi])
            ax.plot(xs, xs, 'k-', lw=0.8, label='error = sigma')
            ax.plot(xs, 3 * xs, 'k--', lw=0.8, label='error = 3 sigma')
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.legend(fontsize=8)
        ax.set_xlabel(f'predicted sigma ({unit})')
        ax.set_ylabel(f'actual error ({unit})')
        ax.set_title(['camera centre', 'rotation'][k] + ': covariance vs error')
        ax.grid(alpha=0.3)
    return _png(fig)


# ----------------------------------------------------------------------------- HTML
_CSS = '''body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #bbb;padding:3px 8px;
text-align:right}th{background:#eef}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:6px 0 22px}.small{color:#666;font-size:0.9em}'''

_ROWS = [('frames (processed / fixes)', lambda m: f"{m['num_frames']} ({m['num_processed']} / "
          f"{m['num_fixes']})"),
         ('recall 0.25 m, 2°', lambda m: _pct(m['recall_25cm_2deg'])),
         ('recall 0.5 m, 5°', lambda m: _pct(m['recall_50cm_5deg'])),
         ('recall 5 m, 10°', lambda m: _pct(m['recall_5m_10deg'])),
         ('median error (m / °)', lambda m: f"{_f(m['median_t_m'], 3)} / "
          f"{_f(m['median_r_deg'], 2)}"),
         ('ATE RMSE, unaligned (m)', lambda m: _f(m['ate_rmse_m'], 4)),
         ('time to first fix (s)', lambda m: _f(m['time_to_first_fix_s'], 3)),
         ('availability (frames with a fix)', lambda m: _pct(m['availability'])),
         ('false-fix rate (> 5 m or > 10°)', lambda m: f"{_pct(m['false_fix_rate'])} "
          f"({m['num_false_fixes']})"),
         ('fixes per second', lambda m: _f(m['fixes_per_second'], 2)),
         ('latency p50 / p90 / p99 (ms)', lambda m: ' / '.join(
             _f(m['latency_ms'][p], 1) for p in ('p50', 'p90', 'p99'))),
         ('NEES mean / median (6 = consistent)', lambda m: f"{_f(m['nees_mean'], 2)} / "
          f"{_f(m['nees_median'], 2)}"),
         ('NEES within chi² 95 %', lambda m: _pct(m['nees_within_95'])),
         ('dropped busy / rate', lambda m: f"{m['num_dropped_busy']} / {m['num_dropped_rate']}")]


def _f(v, digits: int) -> str:
    return 'n/a' if v is None or not np.isfinite(v) else f'{v:.{digits}f}'


def _pct(v) -> str:
    return 'n/a' if v is None or not np.isfinite(v) else f'{100 * v:.1f} %'


def _cell(fn, m) -> str:
    try:
        return html.escape(fn(m))
    except (KeyError, TypeError):
        return 'n/a'


def _live_section(live: dict | None) -> str:
    """``evaluate --live``: what the node reported and the checks done on its output."""
    if not live:
        return ''
    node = live.get('node', {})
    rows = [('images sent / poses received', f"{live.get('images_sent')} / "
                                             f"{live.get('poses_received')}")]
    rows += [(k.replace('_', ' '), str(v)) for k, v in node.items()]
    rows += [('map->odom ∘ odom->base vs pose, max (m / °)',
              f"{_f(live.get('tf_max_error_m'), 9)} / {_f(live.get('tf_max_error_deg'), 6)} "
              f"({live.get('tf_checked')} checked, {live.get('tf_missing')} without TF)"),
             ('configure / activate (s)', f"{_f(live.get('configure_s'), 2)} / "
                                          f"{_f(live.get('activate_s'), 2)}"),
             ('node RSS start / end / peak (MB)', ' / '.join(
                 _f(live.get(k), 0) for k in ('rss_start_mb', 'rss_end_mb', 'rss_peak_mb'))),
             ('playback rate, /clock', f"{live.get('rate')}x, {live.get('clock')}"),
             ('node log', str(live.get('node_log')))]
    body = ''.join(f'<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>'
                   for k, v in rows)
    return (f'<h2>Live replay over ROS 2: node counters and checks</h2><table>{body}</table>'
            '<p class="small">Live: a frame without a pose (failed, gated or dropped: see the '
            'node counters) counts as a failure; latency = pose received - image '
            'published. The node p50/p90 are on its own clock: bag time under /clock, i.e. '
            'scaled by the playback rate.</p>')


STAGE_COLUMNS = ('mean', 'p50', 'p90', 'p99')


def _stages_then_sum(stages: dict[str, dict]) -> dict[str, dict]:
    """The stages (without 'total'), a 'sum of stages' row (means) and 'total' last."""
    rows = {k: v for k, v in stages.items() if k != 'total'}
    if 'total' in stages:
        rows['sum of stages'] = {'mean': sum(v.get('mean', float('nan')) for v in rows.values())}
        rows['total'] = stages['total']
    return rows


def render_html(records, metrics: dict, meta: dict, baselines: dict[str, dict]) -> str:
    names = ['this run'] + list(baselines)
    runs = [metrics] + list(baselines.values())
    head = ''.join(f'<th>{html.escape(n)}</th>' for n in names)
    rows = ''.join(f'<tr><td>{html.escape(label)}</td>'
                   + ''.join(f'<td>{_cell(fn, m)}</td>' for m in runs) + '</tr>'
                   for label, fn in _ROWS)
    stage_rows = ''.join(
        f'<tr><td>{html.escape(s)}</td>' + ''.join(f'<td>{_f(v.get(p, float("nan")), 1)}</td>'
                                                   for p in STAGE_COLUMNS) + '</tr>'
        for s, v in _stages_then_sum(metrics.get('stage_latency_ms', {})).items())
    reason_rows = ''.join(f'<tr><td>{html.escape(str(k))}</td><td>{v}</td></tr>'
                          for k, v in sorted(metrics.get('failure_reasons', {}).items()))
    failures_html = (f'<h2>Failure reasons</h2><table><tr><th>reason</th><th>frames</th></tr>'
                     f'{reason_rows}</table>' if reason_rows
                     else '<h2>Failure reasons</h2><p>No failures.</p>')
    meta_rows = ''.join(f'<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>'
                        for k, v in meta.items())
    live_html = _live_section(metrics.get('live'))
    plots = [('Trajectory', plot_trajectory(records)), ('Error CDFs', plot_error_cdfs(records)),
             ('Latency', plot_latency(records)),
             ('Predicted σ vs actual error', plot_sigma_vs_error(records))]
    imgs = ''.join(f'<h2>{t}</h2><img alt="{t}" src="data:image/png;base64,{b}">'
                   for t, b in plots)
    return f'''<!DOCTYPE html><html><head><meta charset="utf-8">
<title>nre_ros evaluation: {html.escape(str(meta.get('bag', '')))}</title><style>{_CSS}</style>
</head><body><h1>nre_ros relocalization evaluation</h1>
<table>{meta_rows}</table>
<h2>Metrics</h2><table><tr><th>metric</th>{head}</tr>{rows}</table>
<p class="small">Recall, medians and false fixes over processed frames with ground truth;
availability and fixes/s over all frames. Errors are unaligned (absolute map frame).</p>
<h2>Per-stage latency (ms)</h2><p>mean: over all processed frames (0 where a frame skipped
the stage); the stages are disjoint, so their means add up to the mean total.</p>
<table><tr><th>stage</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th>
</tr>{stage_rows}</table>
{failures_html}
{live_html}{imgs}</body></html>
'''


def write_report(path: str | Path, records, metrics: dict, meta: dict,
                 baselines: dict[str, dict]) -> Path:
    path = Path(path)
    path.write_text(render_html(records, metrics, meta, baselines), encoding='utf-8')
    logger.info('report written to %s', path)
    return path
