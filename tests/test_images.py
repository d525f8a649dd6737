"""Reading images: pixels as stored (EXIF orientation ignored), plain files only."""

import io

import cv2
import numpy as np
from PIL import Image

from rcnn.data.images import decode_image, image_size, read_image


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
