"""Reading images: the one way every stage decodes them.

BGR uint8 as OpenCV gives it (converted to RGB where a network sees it), from plain files
only (a FIFO or a device such as ``/dev/zero`` behind an image name is refused, not read), and
with the pixels as stored: an EXIF orientation tag is ignored, as the VOC devkit, PIL and
torchvision's ``read_image`` ignore it, so that the sizes and boxes of the annotations, which
annotation tools record on the stored pixels, fit the image.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from rcnn.files import read_regular_file

# OpenCV rotates by the EXIF tag unless told not to.
_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def decode_image(data: bytes) -> np.ndarray | None:
    """A BGR uint8 image from encoded bytes; ``None`` when they are empty or undecodable."""
    if not data:
        return None  # OpenCV asserts on an empty buffer instead of failing politely
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _FLAGS)
    except cv2.error:
        return None


def read_image(path) -> np.ndarray | None:
    """The BGR uint8 image in the plain file ``path``; ``None`` when it cannot be decoded.

    Raises:
        OSError: the file is missing, unreadable, or not a plain file.
    """
    return decode_image(read_regular_file(path))


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of encoded image bytes from their header alone (no decoding), or
    ``None`` when the header cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
