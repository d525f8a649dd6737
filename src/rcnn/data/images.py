"""Reading images: the one way every stage decodes them.

BGR uint8 (converted to RGB where a network sees it), from plain files only (a FIFO or a
device such as ``/dev/zero`` behind an image name is refused, not read), and with the pixels
as stored: an EXIF orientation tag is ignored, as the VOC devkit, PIL and torchvision's
``read_image`` ignore it, so that the sizes and boxes of the annotations, which annotation
tools record on the stored pixels, fit the image. The detector's inputs are turned upright
first where asked (:func:`upright_copy`, PIL's ``ImageOps.exif_transpose`` convention).

Pixels deeper than 8 bits become 8-bit by one rule, :func:`to_uint8`, for a file and for a PIL
image alike: 16-bit values keep their high byte (as OpenCV converts them), floats in 0..1 are
scaled by 255, anything else is refused with :class:`ImageDepthError`.

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
from rcnn.files import atomic_write_bytes, read_regular_file

# The pixels as stored, of any depth (converted by to_uint8) and channels (by as_bgr): OpenCV
# rotates by the EXIF tag unless told not to.
_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION
EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 is upright, 2..8 a flip and/or a rotation

# PIL's default limit (PIL.Image.MAX_IMAGE_PIXELS, about 9459 x 9459): a decoded BGR image of
# 256 MB, far larger than the photos a detector is run on (VOC's are 500 x 375).
MAX_IMAGE_PIXELS = 89_478_485
PIXELS_VARIABLE = "RCNN_MAX_IMAGE_PIXELS"

_PIL_GUARD = threading.Lock()


class ImageTooLargeError(RcnnError):
    """An image's header declares more pixels than :func:`max_image_pixels`."""


class ImageDepthError(RcnnError):
    """An image's pixels have a type or range that has no 8-bit reading (see
    :func:`to_uint8`)."""


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
    """A BGR uint8 image ``[H, W, 3]`` from encoded bytes; ``None`` when they are empty or
    undecodable, or their header cannot be read.

    Raises:
        ImageTooLargeError: more pixels than the limit (see :func:`check_image_size`).
        ImageDepthError: pixels with no 8-bit reading (see :func:`to_uint8`).
    """
    if not data:
        return None  # OpenCV asserts on an empty buffer instead of failing politely
    if check_image_size(data, name) is None:
        return None  # PIL cannot read the header: nothing bounds what it would decode to
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _FLAGS)
    except cv2.error:
        return None
    return None if pixels is None else as_bgr(to_uint8(pixels, name))


def to_uint8(pixels: np.ndarray, name="image") -> np.ndarray:
    """8-bit pixels of the same shape: ``uint8`` as they are; ``uint16`` (and ``int32`` in
    0..65535, which PIL's mode ``I`` holds a 16-bit file as) by their high byte, as OpenCV
    reads a 16-bit file as 8-bit; floats in 0..1 times 255, rounded.

    Raises:
        ImageDepthError: naming ``name``, for floats outside 0..1 (or not finite) and other
            types.
    """
    if not pixels.dtype.isnative:  # PIL's I;16B
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    kind = pixels.dtype
    if kind == np.uint8:
        return pixels
    if kind == np.uint16 or (kind == np.int32 and _within(pixels, 0, 65535)):
        return (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    if kind.kind == "f":
        if not _within(pixels, 0.0, 1.0):
            low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0, 0)
            raise ImageDepthError(
                f"{name}: float pixels must lie in 0..1, these lie in {low:g}..{high:g}; scale "
                "them to 0..1 (or give 8-bit pixels)"
            )
        return np.round(pixels.astype(np.float64) * 255).astype(np.uint8)
    raise ImageDepthError(
        f"{name}: {kind} pixels have no 8-bit reading; give 8-bit, 16-bit or 0..1 float pixels"
    )


def _within(pixels: np.ndarray, low, high) -> bool:
    return not pixels.size or bool(pixels.min() >= low and pixels.max() <= high)


def as_bgr(pixels: np.ndarray) -> np.ndarray:
    """BGR ``[H, W, 3]`` of 8-bit pixels as decoded: grey ``[H, W]`` (or ``[H, W, 1]``)
    repeated, an alpha channel dropped (as OpenCV's colour reading drops it)."""
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[:, :, :3])
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    return cv2.cvtColor(pixels.reshape(pixels.shape[:2]), cv2.COLOR_GRAY2BGR)


# PIL's modes whose pixels are deeper than 8 bits: read through to_uint8, as a file is.
_DEEP_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def pil_to_rgb(image, exif: bool = False) -> np.ndarray:
    """The RGB uint8 pixels ``[H, W, 3]`` of a PIL image of any mode, by the rules a file of
    the same pixels is read by (:func:`to_uint8`); with ``exif``, turned upright by its EXIF
    orientation (``ImageOps.exif_transpose``).

    Raises:
        RcnnError: the image is closed or its pixels cannot be converted.
    """
    from PIL import ImageOps

    try:
        if exif:
            image = ImageOps.exif_transpose(image)
        if image.mode in _DEEP_MODES:
            grey = to_uint8(np.asarray(image), f"a PIL image of mode {image.mode}")
            return np.repeat(grey[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))
    except (ValueError, AttributeError, OSError) as err:
        if isinstance(err, RcnnError):
            raise
        raise RcnnError(
            f"a PIL image of mode {getattr(image, 'mode', '?')} could not be read ({err}); "
            "is it closed?"
        ) from None


def read_image(path) -> np.ndarray | None:
    """The BGR uint8 image in the plain file ``path``; ``None`` when it cannot be decoded.

    Raises:
        OSError: the file is missing, unreadable, or not a plain file.
        ImageTooLargeError: more pixels than the limit (see :func:`check_image_size`).
    """
    return decode_image(read_regular_file(path), path)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation of encoded image bytes: 1 (upright) when they carry none, or no
    valid one, or their header cannot be read."""
    from PIL import Image

    with _PIL_GUARD:
        guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as image:
                value = image.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # a damaged EXIF block is no reason to refuse the image
            return 1
        finally:
            Image.MAX_IMAGE_PIXELS = guard
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels ``[H, W, ...]`` turned as their EXIF ``orientation`` says (the turns of
    PIL's ``ImageOps.exif_transpose``): 6 and 8 give ``[W, H, ...]``."""
    turns = {
        2: lambda a: a[:, ::-1],  # mirrored
        3: lambda a: a[::-1, ::-1],  # upside down
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),  # mirrored along the main diagonal
        6: lambda a: np.rot90(a, -1),  # a quarter turn clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),  # a quarter turn anticlockwise
    }
    turn = turns.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def upright_copy(path: str, dest) -> str:
    """``path`` itself when its pixels are stored upright (no EXIF orientation, or 1) or it
    cannot be read (the detector names it then); otherwise the PNG ``dest`` (written here) of
    its pixels turned upright by :func:`upright`."""
    try:
        data = read_regular_file(path)
        orientation = exif_orientation(data)
        image = decode_image(data, path) if orientation != 1 else None
    except (OSError, RcnnError):
        return path
    if image is None:
        return path
    ok, png = cv2.imencode(".png", upright(image, orientation))
    if not ok:
        return path
    atomic_write_bytes(dest, png.tobytes())
    return str(dest)


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
