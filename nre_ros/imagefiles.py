"""Image files checked before decoding: a regular file whose header declares a sane size.

OpenCV decodes whatever a header claims (or aborts with ``cv2.error`` past its own limit); the
header is read first with Pillow (header only, no pixel data) so that a file claiming
100000 x 100000 pixels, a FIFO or a non-image is one clear ``InputError`` for that file.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from nre_ros.errors import InputError

MAX_IMAGE_PIXELS = 100_000_000         # 100 MP: far above any camera this node serves


def check_image_file(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) declared by the image file's header; InputError when the file is not a
    readable regular file, not an image Pillow can identify, or larger than ``max_pixels``."""
    import warnings

    from PIL import Image
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f'cannot read image {path} ({exc.strerror})') from exc
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f'image {path} is not a regular file')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None   # we check ourselves
            try:
                with Image.open(path) as im:
                    width, height = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f'cannot read image {path}: not an image file ({exc})') from exc
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise InputError(f'image {path} declares {width} x {height} pixels, more than the '
                         f'{max_pixels / 1e6:.0f} MP allowed (corrupt or not a camera image)')
    return width, height
