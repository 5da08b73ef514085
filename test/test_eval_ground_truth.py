"""``nre-ros evaluate`` finds the ground truth of a bag made by ``nre-ros make-bag`` by each pose
option (``--gt-topic`` on an offset clock, ``--gt-tf``, ``--gt-poses`` TUM file), offline and
``--live``, and reports what the exact-stamp ``/ground_truth`` of the same frames gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nre_ros.cli import main
from nre_ros.geometry import pose_error

REPO = Path(__file__).resolve().parents[1]
QUERIES = REPO / 'maps' / 'demo' / 'queries'
DEMO_MAP = REPO / 'maps' / 'demo' / 'fr1_rpy.nremap'
TUM = QUERIES / 'poses_T_world_cam.txt'
# ground-truth options on the bag with the truth 5 ms after the images, as a topic and as TF
OPTIONS = {'topic': ['--gt-topic', '/ground_truth'],
           'tf': ['--gt-tf', 'map', 'base_link'],
           'tum': ['--gt-poses', str(TUM)]}


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    """The 8 demo queries as a reference bag (/ground_truth at the image stamps) and as a bag
    with the truth as TF map -> odom and on /ground_truth 5 ms after each image."""
    root = tmp_path_factory.mktemp('gt_bags')
    ref, offset = root / 'ref', root / 'offset'
    assert main(['make-bag', str(QUERIES), str(ref), '--seed', '0']) == 0
    assert main(['make-bag', str(QUERIES), str(offset), '--seed', '0', '--poses-as', 'both',
                 '--pose-offset-ms', '5']) == 0
    return ref, offset


def _tum(path: Path) -> np.ndarray:
    return np.atleast_2d(np.loadtxt(path))


def _poses(rows: np.ndarray) -> list[np.ndarray]:
    from scipy.spatial.transform import Rotation
    out = []
    for r in rows:
        T = np.eye(4)
        T[:3, :3] = Rotation.from_quat(r[4:8]).as_matrix()
        T[:3, 3] = r[1:4]
        out.append(T)
    return out


def _evaluate(bag: Path, out: Path, extra: list[str]) -> dict:
    assert main(['evaluate', str(bag), '--out', str(out), '--no-progress', *extra]) == 0
    return json.loads((out / 'summary.json').read_text())['metrics']


def _same_truth(out: Path, ref_out: Path, tol_m: float = 5e-3, tol_deg: float = 0.5) -> None:
    """Same stamps, poses within the error of interpolating over 5 ms (frames 3 s apart)."""
    a, b = _tum(out / 'ground_truth.tum'), _tum(ref_out / 'ground_truth.tum')
    assert a.shape == b.shape == (8, 8)
    assert np.array_equal(a[:, 0], b[:, 0])                    # the image stamps
    for Ta, Tb in zip(_poses(a), _poses(b)):
        dt, dr = pose_error(Ta, Tb)
        assert dt < tol_m and dr < tol_deg, (dt, dr)


def test_offline_ground_truth_by_each_option(bags, tmp_path):
    """Oracle localizer (noise seeded): the same frames with ground truth, the same truth
    (interpolated 5 ms away, within 5 mm) and the same recall by every option; without an
    option the offset bag has no truth at the image stamps."""
    ref, offset = bags
    oracle = ['--oracle', '0.1', '2.0']
    ref_metrics = _evaluate(ref, tmp_path / 'ref', oracle)
    assert ref_metrics['num_with_ground_truth'] == 8
    for name, flags in OPTIONS.items():
        m = _evaluate(offset, tmp_path / name, oracle + flags)
        assert m['num_with_ground_truth'] == 8, name
        _same_truth(tmp_path / name, tmp_path / 'ref')
        for key in ('num_frames', 'num_fixes', 'recall_25cm_2deg', 'recall_50cm_5deg'):
            assert m[key] == ref_metrics[key], (name, key)
    bare = _evaluate(offset, tmp_path / 'bare', oracle)
    assert bare['num_with_ground_truth'] == 0


@pytest.mark.slow
def test_offline_real_pipeline_same_recall_by_each_option(bags, tmp_path):
    """The relocalizer on the demo map: the same recall and ATE (within 2 mm) whichever way the bag carries the ground truth."""
    ref, offset = bags
    common = ['--map', str(DEMO_MAP), '--param', 'min_consistent_fixes:=1']
    ref_metrics = _evaluate(ref, tmp_path / 'ref', common)
    assert ref_metrics['num_fixes'] >= 6
    ref_est = _tum(tmp_path / 'ref' / 'estimate.tum')
    for name, flags in OPTIONS.items():
        m = _evaluate(offset, tmp_path / name, common + flags)
        assert m['recall_25cm_2deg'] == ref_metrics['recall_25cm_2deg'], name
        assert m['num_fixes'] == ref_metrics['num_fixes'], name
        assert m['ate_rmse_m'] == pytest.approx(ref_metrics['ate_rmse_m'], abs=2e-3), name
        _same_truth(tmp_path / name, tmp_path / 'ref')
        assert np.array_equal(_tum(tmp_path / name / 'estimate.tum')[:, 0], ref_est[:, 0])


@pytest.mark.ros
def test_live_ground_truth_from_tf_with_the_map_transforms_held_back(bags, tmp_path):
    """--live on the bag whose truth is TF map -> odom (and an offset topic): the bag's map ->
    odom is not replayed to the node (it publishes its own), and the oracle node and the
    evaluation take the truth from --gt-tf: every image answered at the truth."""
    pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
    pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
    _, offset = bags
    out = tmp_path / 'live'
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    cmd = [sys.executable, '-m', 'nre_ros.cli', 'evaluate', str(offset), '--live', '--oracle',
           '0', '0', *OPTIONS['tf'], '--rate', '2', '--param', 'min_consistent_fixes:=1',
           '--param', 'tf_lookup_timeout:=2.0', '--param', 'queue_size:=5', '--settle', '8',
           '--out', str(out), '--no-progress', '--domain-id', str(150 + os.getpid() % 80)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / 'summary.json').read_text())
    m, live = summary['metrics'], summary['metrics']['live']
    assert m['num_with_ground_truth'] == 8 and live['poses_received'] == 8, live
    assert m['recall_25cm_2deg'] == 1.0 and m['num_false_fixes'] == 0
    assert live['tf_checked'] == 8 and live['tf_max_error_m'] < 1e-6


@pytest.mark.ros
def test_replay_drops_only_the_map_transforms_of_the_bag_tf(bags):
    pytest.importorskip('rclpy', reason='rclpy not installed (scripts/install_ros.sh)')
    pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not built (scripts/install_ros.sh)')
    from rosbags.rosbag2 import Reader

    from nre_ros.eval.bags import typestore
    from nre_ros.ros.replay import without_map_transforms
    ts = typestore('humble')
    _, offset = bags
    kept, dropped = [], 0
    with Reader(offset) as reader:
        conns = [c for c in reader.connections if c.topic == '/tf']
        for conn, _, raw in reader.messages(connections=conns):
            out = without_map_transforms(ts, raw, conn.msgtype)
            parents = {t.header.frame_id for t in ts.deserialize_cdr(raw, conn.msgtype).transforms}
            if out is None:
                dropped += 1
                assert parents == {'map'}
                continue
            if 'map' not in parents:
                assert out is raw                                 # untouched, byte for byte
            kept += [(t.header.frame_id, t.child_frame_id)
                     for t in ts.deserialize_cdr(out, conn.msgtype).transforms]
    assert dropped >= 8 and kept and set(kept) == {('odom', 'base_link')}
