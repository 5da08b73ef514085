"""num_threads: auto from affinity and cgroup quotas, one count for torch / ORT / OpenCV, passive
OpenMP waiting (checked in fresh interpreters, where torch loads its OpenMP after nre_ros)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nre_ros.errors import ConfigError
from nre_ros.threads import (available_cpus, cgroup_cpu_limit, check_threads,
                             prefer_passive_openmp, resolve_threads)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_on_the_path(tmp_path):
    _write(tmp_path / 'cpu.max', 'max 100000\n')
    _write(tmp_path / 'robot.slice' / 'cpu.max', '300000 100000\n')
    _write(tmp_path / 'robot.slice' / 'nre.service' / 'cpu.max', '150000 100000\n')
    limit = cgroup_cpu_limit(tmp_path, '0::/robot.slice/nre.service\n')
    assert limit == pytest.approx(1.5)
    assert cgroup_cpu_limit(tmp_path, '0::/\n') is None                 # 'max' = unlimited
    assert cgroup_cpu_limit(tmp_path, '0::/robot.slice\n') == pytest.approx(3.0)


def test_cgroup_v1_cfs_quota(tmp_path):
    _write(tmp_path / 'cpu,cpuacct' / 'docker' / 'abc' / 'cpu.cfs_quota_us', '200000\n')
    _write(tmp_path / 'cpu,cpuacct' / 'docker' / 'abc' / 'cpu.cfs_period_us', '100000\n')
    _write(tmp_path / 'cpu,cpuacct' / 'cpu.cfs_quota_us', '-1\n')
    _write(tmp_path / 'cpu,cpuacct' / 'cpu.cfs_period_us', '100000\n')
    proc = '12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n'
    assert cgroup_cpu_limit(tmp_path, proc) == pytest.approx(2.0)
    assert cgroup_cpu_limit(tmp_path, '4:cpu,cpuacct:/\n') is None       # -1 = unlimited
    assert cgroup_cpu_limit(tmp_path / 'missing', proc) is None


def test_auto_is_the_usable_cpus_and_counts_are_checked():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert resolve_threads('auto') == resolve_threads(None) == available_cpus()
    assert resolve_threads(3) == 3
    for bad in (0, -1, 257, '4', 'all', 2.0, True):
        with pytest.raises(ConfigError, match='num_threads'):
            check_threads(bad)


def test_pipeline_and_node_settings_take_auto_or_a_count():
    from nre_ros.pipeline import PipelineConfig
    from nre_ros.ros.params import NodeConfig
    from nre_ros.stream.config import coerce
    from nre_ros.ros.params import PARAMETERS
    assert PipelineConfig().num_threads == 'auto'
    assert PipelineConfig.from_dict({'num_threads': 3}).num_threads == 3
    with pytest.raises(ConfigError, match='num_threads'):
        PipelineConfig.from_dict({'num_threads': 'many'})
    param = next(p for p in PARAMETERS if p.name == 'num_threads')
    assert param.default == 'auto' and coerce(param, 4) == 4 and coerce(param, 'auto') == 'auto'
    with pytest.raises(ConfigError, match='num_threads'):
        coerce(param, 1.5)
    for ok in ('auto', 0, 4):
        assert NodeConfig(map_path='m', num_threads=ok).validate().num_threads == ok
    with pytest.raises(ConfigError, match='num_threads'):
        NodeConfig(map_path='m', num_threads='many').validate()


def test_user_wait_policy_is_kept():
    env = {'OMP_WAIT_POLICY': 'ACTIVE'}
    assert not prefer_passive_openmp(env) and env == {'OMP_WAIT_POLICY': 'ACTIVE'}
    env = {}
    assert prefer_passive_openmp(env) and env == {'OMP_WAIT_POLICY': 'PASSIVE'}


def _fresh_python(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('OMP_', 'GOMP_'))}
    env.update(PYTHONPATH=str(REPO), OMP_DISPLAY_ENV='VERBOSE', **env_overrides)
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)


@pytest.mark.parametrize('user_policy, spincount', [(None, "'0'"), ('ACTIVE', None)])
def test_torch_openmp_waits_passively_unless_the_user_chose(user_policy, spincount):
    """libgomp prints its settings when torch loads it: spin count 0 = passive waiting."""
    code = ('import nre_ros, torch; from nre_ros.threads import apply_threads; n = apply_threads(3);'
            ' torch.ones(1 << 16).sum(); '
            'print(n, torch.get_num_threads(), torch.get_num_interop_threads())')
    env = {'OMP_WAIT_POLICY': user_policy} if user_policy else {}
    run = _fresh_python(code, **env)
    assert 'ATen' not in run.stdout and run.stdout.split() == ['3', '3', '1']
    line = next(ln for ln in run.stderr.splitlines() if 'GOMP_SPINCOUNT' in ln)
    if spincount:
        assert line.split('=')[1].strip() == spincount
    else:
        assert line.split('=')[1].strip() != "'0'"


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity'), reason='needs sched_setaffinity')
def test_auto_follows_a_pinned_process():
    """A process pinned to one CPU (taskset -c N) runs torch on one thread under auto."""
    cpu = min(os.sched_getaffinity(0))
    code = ('import os, nre_ros, torch; os.sched_setaffinity(0, {%d}); '
            'from nre_ros.threads import apply_threads; '
            'print(apply_threads("auto"), torch.get_num_threads())' % cpu)
    assert _fresh_python(code).stdout.split() == ['1', '1']


@pytest.mark.skipif(os.environ.get('NRE_ROS_NUMBA') == '0', reason='compiled kernels disabled')
def test_compiled_kernels_keep_torchs_thread_count():
    """Starting numba's pool (OpenMP layer: torch's runtime) resets the runtime's default count
    to numba's; nre_ros.compiled restores torch's, and sizes numba's pool like it."""
    pytest.importorskip('numba')
    code = ('import nre_ros, torch; torch.set_num_threads(1); torch.ones(9).sum()\n'
            'from nre_ros import compiled; assert compiled.warmup()\n'
            'import numba; print(torch.get_num_threads(), numba.get_num_threads(),'
            ' numba.threading_layer())')
    out = _fresh_python(code).stdout.split()
    assert out[:2] == ['1', '1']
    assert out[2] in ('omp', 'tbb', 'workqueue')
