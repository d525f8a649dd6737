"""Reading images: the one way every stage decodes them.

BGR uint8 as OpenCV gives it (converted to RGB where a network sees it), from plain files
only (a FIFO or a device such as ``/dev/zero`` behind an image name is refused, not read), and
with the pixels as stored: an EXIF orientation tag is ignored, as the VOC devkit, PIL and
torchvision's ``read_image`` ignore it, so that the sizes and boxes of the annotations, which
annotation tools record on the stored pixels, fit the image.

The size an image's header declares is checked before it is decoded, as PIL's
decompression-bomb guard does: a PNG of 875 KB declaring 30000x30000 pixels decodes to 2.7 GB,
and `rcnn detect` took 6.3 GB and a minute over it. An image of more pixels than
:func:`max_image_pixels` is refused with :class:`ImageTooLargeError`, and one whose header PIL
cannot read is not decoded at all (nothing would bound what it decodes to).
"""

from __future__ import annotations

import io
import os
import threading

import cv2
import numpy as np

from rcnn.errors import ConfigError, RcnnError
from rcnn.files import read_regular_file

# OpenCV rotates by the EXIF tag unless told not to.
_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION

# PIL's default limit (PIL.Image.MAX_IMAGE_PIXELS, about 9459 x 9459): a decoded BGR image of
# 256 MB, far larger than the photos a detector is run on (VOC's are 500 x 375).
MAX_IMAGE_PIXELS = 89_478_485
PIXELS_VARIABLE = "RCNN_MAX_IMAGE_PIXELS"

_PIL_GUARD = threading.Lock()


class ImageTooLargeError(RcnnError):
    """An image's header declares more pixels than :func:`max_image_pixels`."""


def max_image_pixels() -> int:
    """The most pixels an image may have: ``$RCNN_MAX_IMAGE_PIXELS``, else
    :data:`MAX_IMAGE_PIXELS` (read on every call)."""
    value = os.environ.get(PIXELS_VARIABLE, "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ConfigError(f"{PIXELS_VARIABLE} must be a whole number of pixels > 0, got {value!r}")
    return limit


def check_image_size(data: bytes, name="image") -> tuple[int, int] | None:
    """``(width, height)`` from the header of encoded image bytes (``None`` when it cannot be
    read), refused above the pixel limit.

    Raises:
        ImageTooLargeError: the header declares more than :func:`max_image_pixels` pixels;
            the message names ``name``.
    """
    size = image_size(data)
    limit = max_image_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise ImageTooLargeError(
            f"{name}: {size[0]}x{size[1]} pixels, more than the limit of {limit:,} (set "
            f"{PIXELS_VARIABLE} to allow more)"
        )
    return size


def decode_image(data: bytes, name="image") -> np.ndarray | None:
    """A BGR uint8 image from encoded bytes; ``None`` when they are empty or undecodable, or
    their header cannot be read.

    Raises:
        ImageTooLargeError: more pixels than the limit (see :func:`check_image_size`).
    """
    if not data:
        return None  # OpenCV asserts on an empty buffer instead of failing politely
    if check_image_size(data, name) is None:
        return None  # PIL cannot read the header: nothing bounds what it would decode to
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _FLAGS)
    except cv2.error:
        return None


def read_image(path) -> np.ndarray | None:
    """The BGR uint8 image in the plain file ``path``; ``None`` when it cannot be decoded.

    Raises:
        OSError: the file is missing, unreadable, or not a plain file.
        ImageTooLargeError: more pixels than the limit (see :func:`check_image_size`).
    """
    return decode_image(read_regular_file(path), path)


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of encoded image bytes from their header alone (no decoding), or
    ``None`` when the header cannot be read."""
    from PIL import Image, UnidentifiedImageError

    # PIL refuses even to open an image of more than twice its own limit; reading a header
    # decodes nothing, and the limit that applies here is this module's. The lock keeps
    # threads from restoring each other's lifted guard.
    with _PIL_GUARD:
        guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except (UnidentifiedImageError, OSError, ValueError):
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = guard
