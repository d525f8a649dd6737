"""Reading images: pixels as stored (EXIF orientation ignored), plain files only, and no more
pixels than the limit, checked from the header before decoding."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from rcnn.data.images import (
    ImageTooLargeError,
    check_image_size,
    decode_image,
    image_size,
    read_image,
)
from rcnn.errors import ConfigError
from tests.helpers import png_declaring


def exif_rotated_jpeg(width=40, height=20) -> bytes:
    """A ``width`` x ``height`` JPEG whose EXIF tag says: show it rotated by 90 degrees."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_is_ignored_as_voc_pil_and_torchvision_do(tmp_path):
    data = exif_rotated_jpeg()
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    assert cv2.imread(str(path)).shape[:2] == (40, 20), "OpenCV alone would rotate it"
    assert read_image(path).shape[:2] == (20, 40)
    assert decode_image(data).shape[:2] == (20, 40)
    assert image_size(data) == (40, 20)  # from the header: width, height as stored


def test_undecodable_bytes():
    assert decode_image(b"") is None and decode_image(b"\xff\xd8 nope") is None
    assert image_size(b"nope") is None


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    # 900 million pixels declared in a few hundred bytes: decoded, 2.7 GB.
    data = png_declaring(30000, 30000)
    assert len(data) < 1000
    guard = Image.MAX_IMAGE_PIXELS  # PIL's own, which refuses to open this at all
    assert image_size(data) == (30000, 30000) and guard == Image.MAX_IMAGE_PIXELS
    with pytest.raises(
        ImageTooLargeError,
        match=r"image: 30000x30000 pixels, more than the "
        r"limit of 89,478,485 \(set RCNN_MAX_IMAGE_PIXELS to allow more\)",
    ):
        decode_image(data)
    (tmp_path / "bomb.png").write_bytes(data)
    with pytest.raises(ImageTooLargeError, match="bomb.png: 30000x30000 pixels"):
        read_image(tmp_path / "bomb.png")
    # A format whose header PIL cannot read is not decoded: nothing would bound it.
    ok, hdr = cv2.imencode(".hdr", np.zeros((4, 4, 3), np.float32))
    assert ok and cv2.imdecode(hdr, cv2.IMREAD_COLOR) is not None
    assert image_size(hdr.tobytes()) is None and decode_image(hdr.tobytes()) is None


def test_the_pixel_limit_is_read_from_the_environment(monkeypatch):
    data = exif_rotated_jpeg(40, 20)
    monkeypatch.setenv("RCNN_MAX_IMAGE_PIXELS", "799")
    with pytest.raises(ImageTooLargeError, match="40x20 pixels, more than the limit of 799"):
        decode_image(data)
    monkeypatch.setenv("RCNN_MAX_IMAGE_PIXELS", "800")
    assert decode_image(data).shape == (20, 40, 3)
    monkeypatch.setenv("RCNN_MAX_IMAGE_PIXELS", "1000000000")
    assert check_image_size(png_declaring(30000, 30000)) == (30000, 30000)
    for bad in ("lots", "0", "-5", "1e9"):
        monkeypatch.setenv("RCNN_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(ConfigError, match=f"RCNN_MAX_IMAGE_PIXELS must be .* got '{bad}'"):
            decode_image(data)
