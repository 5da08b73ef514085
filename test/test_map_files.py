"""Map files are read safely: into memory, regular files inside the map folder, bounded JSON."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nre_ros.errors import MapFormatError
from nre_ros.maps import load_map
from nre_ros.maps.format import METADATA_FILE, TENSORS_FILE
from nre_ros.paths import shared_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def demo(tmp_path):
    return Path(shutil.copytree(shared_file('maps/demo/fr1_rpy.nremap'), tmp_path / 'm.nremap'))


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a SIGBUS or a hang must not take pytest down)."""
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_map_file_truncated_or_replaced_after_loading_changes_nothing(demo):
    code = f'''
import os, numpy as np
from nre_ros.maps import load_map
m = load_map({str(demo)!r})
before = {{k: np.array(v) for k, v in m.tensors().items()}}
assert m.changed_on_disk() is None
t = os.path.join({str(demo)!r}, {TENSORS_FILE!r})
with open(t, "r+b") as f:
    f.truncate(100)                       # SIGBUS on the next read of a memory map
after = m.tensors()
assert all(np.array_equal(before[k], after[k]) for k in before)
print("CHANGED:", m.changed_on_disk())
'''
    res = _python(code)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert 'CHANGED:' in res.stdout and 'modified' in res.stdout


def test_replaced_map_file_is_reported(demo):
    m = load_map(demo)
    x = np.array(m.points_world)
    tmp = demo / 'new.tmp'
    shutil.copy(demo / TENSORS_FILE, tmp)
    os.replace(tmp, demo / TENSORS_FILE)
    assert 'replaced' in m.changed_on_disk()
    assert np.array_equal(m.points_world, x)


def test_metadata_fifo_is_refused_without_hanging(demo):
    (demo / METADATA_FILE).unlink()
    os.mkfifo(demo / METADATA_FILE)
    res = _python(f'''
from nre_ros.errors import MapFormatError
from nre_ros.maps import load_map
try:
    load_map({str(demo)!r})
except MapFormatError as exc:
    print("REFUSED:", exc)
''', timeout=30)
    assert 'REFUSED:' in res.stdout and 'not a regular file' in res.stdout


def test_metadata_link_to_dev_zero_is_refused(demo):
    (demo / METADATA_FILE).unlink()
    os.symlink('/dev/zero', demo / METADATA_FILE)
    res = _python(f'''
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))   # a regression must not eat the RAM
from nre_ros.errors import MapFormatError
from nre_ros.maps import load_map
try:
    load_map({str(demo)!r})
except MapFormatError as exc:
    print("REFUSED:", exc)
''', timeout=30)
    assert 'REFUSED:' in res.stdout and 'outside the map folder' in res.stdout


def test_device_file_inside_the_map_folder_is_refused(demo):
    from nre_ros.maps.files import read_map_file
    with pytest.raises(MapFormatError, match='not a regular file'):
        read_map_file(Path('/dev'), 'zero')


def test_deeply_nested_metadata_is_a_format_error(demo):
    (demo / METADATA_FILE).write_text('[' * 100000 + ']' * 100000)
    with pytest.raises(MapFormatError, match='nested too deeply'):
        load_map(demo)
    meta = {'format': 'nre_ros.map', 'version': 1, 'provenance': {}}
    node = meta['provenance']
    for _ in range(200):                  # under the recursion limit, over the nesting limit
        node['x'] = {}
        node = node['x']
    (demo / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(MapFormatError, match='nested too deeply'):
        load_map(demo)


def test_oversized_metadata_is_refused(demo, monkeypatch):
    import nre_ros.maps.format as fmt
    monkeypatch.setattr(fmt, 'MAX_JSON_BYTES', 1000)
    with pytest.raises(MapFormatError, match='more than the 1000 allowed'):
        load_map(demo)


def test_tensor_file_symlinked_out_of_the_folder_is_refused(demo, tmp_path):
    outside = tmp_path / 'elsewhere.safetensors'
    shutil.move(demo / TENSORS_FILE, outside)
    os.symlink(outside, demo / TENSORS_FILE)
    with pytest.raises(MapFormatError, match='outside the map folder'):
        load_map(demo)


def test_symlink_inside_the_folder_is_accepted(demo):
    shutil.move(demo / TENSORS_FILE, demo / 'real.safetensors')
    os.symlink('real.safetensors', demo / TENSORS_FILE)
    assert load_map(demo).num_points > 0


def _edit_spec(demo, **changes):
    meta = json.loads((demo / METADATA_FILE).read_text())
    meta['model_spec'].update(changes)
    (demo / METADATA_FILE).write_text(json.dumps(meta))


def test_spec_with_wrong_types_is_a_format_error(demo):
    _edit_spec(demo, coarse_stride='eight')
    with pytest.raises(MapFormatError, match='coarse_stride'):
        load_map(demo)


def test_info_does_not_call_an_unloadable_spec_validated(demo, capsys):
    from nre_ros.cli import main
    _edit_spec(demo, name='no-such-model')
    assert main(['info', str(demo)]) == 1
    out = capsys.readouterr().out
    assert 'validated' not in out and 'NOT usable' in out and 'no-such-model' in out
    shutil.copytree(shared_file('maps/demo/fr1_rpy.nremap'), demo, dirs_exist_ok=True)
    _edit_spec(demo, coarse_dim=65)       # a known name, but no model makes 65-d descriptors
    assert main(['info', str(demo)]) == 1
    assert 'validated' not in capsys.readouterr().out


def test_relocalizer_logs_a_changed_map_file_once(demo, caplog):
    from nre_ros.pipeline import Relocalizer
    m = load_map(demo)
    reloc = Relocalizer.__new__(Relocalizer)          # the map check needs no model
    reloc.map, reloc._map_checked_at, reloc._map_change = m, 0.0, None
    assert reloc.check_map_file(every_s=0.0) is None
    with open(demo / TENSORS_FILE, 'ab') as f:
        f.write(b'x')
    with caplog.at_level('WARNING'):
        assert 'modified' in reloc.check_map_file(every_s=0.0)
        reloc.check_map_file(every_s=0.0)
    assert sum('map file changed on disk' in r.message for r in caplog.records) == 1


def test_read_map_file_holds_one_copy_and_hashes_on_the_way(tmp_path):
    """The file is read straight into one buffer: the peak RSS grows by ~ the file size
    (reading chunks and joining them held two copies), whether hashed whole (sequentially) or
    per block on several threads; the digests equal hashlib's over the file (and hash_file's)."""
    import hashlib
    from nre_ros.maps.files import hash_file, read_map_file
    size = 70 * 2**20 + 12345                 # more than one read chunk of any chunking
    rng = np.random.default_rng(0)
    with open(tmp_path / 'big.bin', 'wb') as f:
        f.write(rng.integers(0, 256, 2**20, dtype=np.uint8).tobytes())
        f.truncate(size)                      # sparse tail: zeros
    raw = (tmp_path / 'big.bin').read_bytes()
    block = 16 * 2**20
    blocks = tuple(hashlib.sha256(raw[b:b + block]).hexdigest() for b in range(0, size, block))
    assert hash_file(tmp_path / 'big.bin', block) == (hashlib.sha256(raw).hexdigest(), blocks)
    for kwargs in ({'file_sha256': True}, {'block_bytes': block, 'threads': 3}):
        content = read_map_file(tmp_path, 'big.bin', **kwargs)
        data = content.data
        assert len(data) == size == content.stamp.size and not data.flags.writeable
        assert bytes(data) == raw
        if 'file_sha256' in kwargs:
            assert content.sha256 == hashlib.sha256(raw).hexdigest()
        else:
            assert content.block_sha256 == blocks and len(blocks) == 5
        res = _python(f"""
from pathlib import Path
from nre_ros.maps.files import read_map_file
def hwm():
    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]
    return int(line.split()[1]) * 1024
before = hwm()
content = read_map_file(Path({str(tmp_path)!r}), 'big.bin', **{kwargs!r})
print('GROWTH', (hwm() - before) / {size})
""")
        growth = float(res.stdout.split('GROWTH')[1])
        assert 0.9 < growth < 1.3, f'{kwargs}: peak RSS grew {growth:.2f}x the file'


def test_block_hashes_name_the_modified_block(demo):
    """A map written now lists per-block digests; one flipped byte is refused, naming the
    block; a map with only the whole-file digest (older maps) still loads and is checked."""
    from nre_ros.maps.format import HASH_BLOCK_BYTES
    m = load_map(demo)
    m.save(demo)
    meta = json.loads((demo / METADATA_FILE).read_text())
    size = (demo / TENSORS_FILE).stat().st_size
    assert meta['tensors_sha256_blocks']['block_bytes'] == HASH_BLOCK_BYTES
    assert len(meta['tensors_sha256_blocks']['sha256']) == -(-size // HASH_BLOCK_BYTES)
    with open(demo / TENSORS_FILE, 'r+b') as f:
        f.seek(size - 100)
        byte = f.read(1)
        f.seek(size - 100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(MapFormatError, match='block 0 .*truncated or was modified'):
        load_map(demo)
    del meta['tensors_sha256_blocks']
    (demo / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(MapFormatError, match='hashes to .*truncated or was modified'):
        load_map(demo)
    with open(demo / TENSORS_FILE, 'r+b') as f:
        f.seek(size - 100)
        f.write(byte)
    assert load_map(demo).num_points == m.num_points
    meta['tensors_sha256_blocks'] = {'block_bytes': 0, 'sha256': []}
    (demo / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(MapFormatError, match='tensors_sha256_blocks must be'):
        load_map(demo)


def test_count_nonfinite_is_exact_on_every_float16_bit_pattern():
    """The bit-pattern check (exponent all ones) against np.isfinite: all 65,536 float16
    values (both signs of inf, every NaN payload, subnormals, +-65504), and float32/64
    specials; blocks smaller than the array exercise the block loop, on 1 and 3 threads."""
    from nre_ros.maps.format import count_nonfinite
    every = np.arange(2**16, dtype=np.uint16).view(np.float16)
    for threads in (1, 3):
        assert count_nonfinite(every, block=1000, threads=threads) == \
            int(np.sum(~np.isfinite(every))) == 2 * 1024
    assert count_nonfinite(every[np.isfinite(every)].reshape(-1, 4), block=999) == 0
    assert count_nonfinite(every.astype('>f2')) == 2 * 1024           # byte order respected
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.normal(size=(1000, 7)).astype(dtype)
        x.flat[[3, 500, 6999]] = [np.inf, -np.nan, -np.inf]
        x.flat[10] = np.finfo(dtype).max
        x.flat[11] = np.finfo(dtype).smallest_subnormal
        assert count_nonfinite(x, block=64) == 3


def test_nonfinite_float16_descriptors_are_refused(tmp_path):
    from dataclasses import replace
    m = load_map(shared_file('maps/demo/fr1_rpy.nremap'))
    for bad in (np.inf, -np.inf, np.nan):
        fine = np.array(m.obs_fine)
        assert fine.dtype == np.float16
        fine[7, 3] = bad
        with pytest.raises(MapFormatError, match="'obs_fine' has 1 non-finite"):
            replace(m, obs_fine=fine).save(tmp_path / 'bad.nremap')
    coarse = np.array(m.obs_coarse)
    coarse[-1, :] = np.float16(np.nan)
    with pytest.raises(MapFormatError, match=f"'obs_coarse' has {coarse.shape[1]} non-finite"):
        replace(m, obs_coarse=coarse).save(tmp_path / 'bad.nremap')
