"""End to end: cabinet map split -> bag (make-bag) -> build-map --builder bag -> the cabinet
queries localize as well as with the map built from the TUM folder (within one query)."""
from __future__ import annotations

import pytest

from nre_ros.eval import bags
from nre_ros.geometry import invert, pose_error

pytestmark = pytest.mark.slow

VARIANTS = {     # make-bag options, build-map options
    'raw': ([], ['--pose-topic', bags.TOPIC_GROUND_TRUTH]),
    'jpeg': (['--image-format', 'jpeg', '--storage', 'sqlite3'],
             ['--pose-topic', bags.TOPIC_GROUND_TRUTH]),
    'tf': (['--poses-as', 'tf'], ['--pose-tf', 'map', 'base_link']),
    'offset_5ms': (['--pose-offset-ms', '5'], ['--pose-topic', bags.TOPIC_GROUND_TRUTH]),
}
MAP_OPTS = ['--max-points', '600']


def _recall(map_path, seq) -> int:
    from nre_ros.pipeline import Relocalizer
    reloc = Relocalizer.from_config(map_path)
    hits = 0
    for f in seq.split('query'):
        out = reloc.localize(seq.load_rgb(f), seq.camera)
        if out.ok:
            dt, dr = pose_error(out.T_cam_world, invert(f.T_world_cam))
            hits += int(dt < 0.25 and dr < 2.0)
    return hits


@pytest.fixture(scope='module')
def tum_recall(cabinet, tmp_path_factory):
    from nre_ros.cli import main
    out = tmp_path_factory.mktemp('tum') / 'cabinet.nremap'
    assert main(['build-map', str(cabinet.root), str(out), '--split', 'map', *MAP_OPTS]) == 0
    return _recall(out, cabinet)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_bag_map_localizes_like_the_tum_map(cabinet, tum_recall, tmp_path, variant, capsys):
    from nre_ros.cli import main
    from nre_ros.maps import load_map
    bag_opts, pose_opts = VARIANTS[variant]
    bag = tmp_path / 'cabinet_bag'
    assert main(['make-bag', str(cabinet.root), str(bag), '--split', 'map', '--depth',
                 *bag_opts]) == 0
    image = bags.TOPIC_IMAGE + ('/compressed' if variant == 'jpeg' else '')
    out = tmp_path / 'bag.nremap'
    assert main(['build-map', str(bag), str(out), '--builder', 'bag', '--image-topic', image,
                 '--depth-topic', bags.TOPIC_DEPTH, *pose_opts, *MAP_OPTS]) == 0
    printed = capsys.readouterr().out
    assert 'keyframes' in printed and 'no_pose 0' in printed
    m = load_map(out)
    assert m.metadata.map_frame == 'map' and m.num_keyframes >= 40
    recall = _recall(out, cabinet)
    print(f'{variant}: {m.num_keyframes} keyframes, recall {recall}/14 (TUM map {tum_recall}/14)')
    assert abs(recall - tum_recall) <= 1 and tum_recall >= 11
