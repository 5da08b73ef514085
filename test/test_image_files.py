"""Image files: headers are checked before decoding; one bad file never aborts a run."""
from __future__ import annotations

import os
import struct
import zlib

import pytest

from nre_ros.datasets import load_depth, load_rgb
from nre_ros.errors import InputError
from nre_ros.paths import shared_file


def _png_claiming(path, width, height):
    """A PNG whose header declares width x height with (almost) no pixel data."""
    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
                     + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))
    return path


def test_huge_header_is_a_clear_input_error(tmp_path):
    bomb = _png_claiming(tmp_path / 'bomb.png', 100000, 100000)
    with pytest.raises(InputError, match='declares 100000 x 100000'):
        load_rgb(bomb)
    with pytest.raises(InputError, match='declares 100000 x 100000'):
        load_depth(bomb, 1000.0)


def test_fifo_and_non_images_are_input_errors(tmp_path):
    os.mkfifo(tmp_path / 'pipe.png')
    with pytest.raises(InputError, match='not a regular file'):
        load_rgb(tmp_path / 'pipe.png')
    (tmp_path / 'text.png').write_text('hello')
    with pytest.raises(InputError, match='not an image'):
        load_rgb(tmp_path / 'text.png')


def test_localize_command_reports_a_bad_image_and_goes_on(tmp_path, capsys):
    from nre_ros.cli import main
    from nre_ros.datasets import TumSequence
    seq = TumSequence(shared_file('maps/demo/queries'))
    bomb = _png_claiming(tmp_path / 'bomb.png', 100000, 100000)
    good = seq.frames[0].rgb_path
    rc = main(['localize', '--map', str(shared_file('maps/demo/fr1_rpy.nremap')), '--camera',
               str(shared_file('maps/demo/queries/camera.yaml')), str(bomb), str(good)])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'bomb.png' in out and 'declares 100000 x 100000' in out
    assert f'{good.name}' in out and 'localized' in out.split(good.name)[1].splitlines()[0]
