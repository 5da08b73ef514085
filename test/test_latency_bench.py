"""benchmarks/latency.py bookkeeping (no model, no data): the competitor process it starts runs
only when asked and is gone afterwards; p50 / ratio / recall rows and the JSON keys."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope='module')
def lat():
    return load_benchmark('latency.py', 'latency_bench')


def _cpu_ticks(pid: int) -> int:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])          # utime + stime


@pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='needs /proc')
def test_competitor_burns_cpu_only_when_on_and_is_killed(lat):
    with lat.Competitor() as c:
        pid = c.proc.pid
        time.sleep(0.3)
        paused = _cpu_ticks(pid)
        time.sleep(0.4)
        assert _cpu_ticks(pid) == paused                 # stopped: no CPU at all
        c.set(True)
        time.sleep(0.6)
        assert _cpu_ticks(pid) > paused                  # running
        c.set(False)
    assert c.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_summary_rows(lat):
    class Q:
        def __init__(self, x):
            self.T_gt = np.eye(4)
            self.T_gt[0, 3] = x
    qs = [Q(0.0), Q(0.0), Q(0.0), Q(0.0)]
    near, far = np.eye(4), np.eye(4)
    far[0, 3] = 1.0
    rec = {'quiet': {'nre_ros': {'global': [(100, near, 'global'), (200, far, 'global'),
                                            (300, None, 'global'), (400, near, 'global')]}},
           'loaded': {'nre_ros': {'global': [(150, near, 'global'), (350, near, 'global'),
                                             (450, None, 'global'), (650, near, 'global')]}}}
    row = lat.summarize(rec, qs)['nre_ros']['global']
    assert row['quiet_p50_ms'] == 250 and row['loaded_p50_ms'] == 400
    assert row['ratio'] == pytest.approx(1.6)
    assert row['recall'] == 0.5 and row['loaded_recall'] == 0.75
