"""Bayer and YUV 4:2:2 images through the one decoder (``messages.image_to_rgb``), on synthetic
images whose colours are known exactly."""
from types import SimpleNamespace

import numpy as np
import pytest

from nre_ros import messages as msgs
from nre_ros.errors import InputError


def _blocks(h: int = 48, w: int = 64, block: int = 8, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 RGB of flat ``block``-pixel squares of random, saturated colours."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // block, w // block, 3)).astype(np.uint8)
    return np.repeat(np.repeat(small, block, axis=0), block, axis=1)


def _interior(block: int = 8, margin: int = 2):
    """Mask of pixels at least ``margin`` from a block edge (demosaicing mixes at edges)."""
    r = np.arange(48) % block
    c = np.arange(64) % block
    return ((r >= margin) & (r < block - margin))[:, None] & ((c >= margin) & (c < block - margin))


def _msg(arr: np.ndarray, encoding: str, padding: int = 0):
    f = msgs.encode_image(arr, encoding, padding=padding)
    return SimpleNamespace(height=f.height, width=f.width, encoding=f.encoding,
                           is_bigendian=f.is_bigendian, step=f.step, data=f.data.tobytes())


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample ``rgb`` with a Bayer filter; ``pattern`` = colours of the top-left 2x2, row-major."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, 'rgb'.index(colour)]
    return out


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
@pytest.mark.parametrize('bits', [8, 16])
def test_bayer_demosaics_to_the_true_colours(pattern, bits):
    rgb = _blocks()
    raw = _mosaic(rgb, pattern)
    if bits == 16:
        raw = raw.astype(np.uint16) * 257             # full 16-bit range, high byte = 8-bit value
    out = msgs.image_to_rgb(_msg(raw, f'bayer_{pattern}{bits}', padding=4))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    inner = _interior()
    err = np.abs(out[inner].astype(int) - rgb[inner].astype(int))
    assert err.max() <= 1, f'max error {err.max()}'
    # the pattern matters: read as another one, red and blue trade places
    other = {'rggb': 'bggr', 'bggr': 'rggb', 'gbrg': 'grbg', 'grbg': 'gbrg'}[pattern]
    wrong = msgs.image_to_rgb(_msg(raw, f'bayer_{other}{bits}'))
    assert np.abs(wrong[inner].astype(int) - rgb[inner].astype(int)).mean() > 20


def _rgb_to_yuv601(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y'CbCr (Y 16-235, U/V 16-240) of (..., 3) uint8 RGB."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return np.clip(np.round(np.stack([y, u, v], -1)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('encoding', ['yuv422', 'yuv422_yuy2'])
def test_yuv422_converts_to_the_true_colours(encoding):
    rgb = _blocks(seed=1)
    yuv = _rgb_to_yuv601(rgb)
    packed = np.zeros(rgb.shape[:2] + (2,), np.uint8)
    chroma = np.where((np.arange(rgb.shape[1]) % 2 == 0)[None, :], yuv[..., 1], yuv[..., 2])
    if encoding == 'yuv422':                   # UYVY: U0 Y0 V0 Y1
        packed[..., 0], packed[..., 1] = chroma, yuv[..., 0]
    else:                                      # YUY2: Y0 U0 Y1 V0
        packed[..., 0], packed[..., 1] = yuv[..., 0], chroma
    out = msgs.image_to_rgb(_msg(packed, encoding, padding=6))
    err = np.abs(out.astype(int) - rgb.astype(int))
    print(f'{encoding}: max |RGB error| {err.max()} (8-bit BT.601 rounding)')
    assert out.shape == rgb.shape and err.max() <= 3
    with pytest.raises(InputError, match='odd width'):
        msgs.image_to_rgb(_msg(packed[:, :63], encoding))


def test_new_encodings_are_listed_as_colour():
    for enc in ('bayer_rggb8', 'bayer_grbg16', 'yuv422', 'yuv422_yuy2'):
        assert enc in msgs.COLOR_ENCODINGS and enc not in msgs.DEPTH_ENCODINGS
