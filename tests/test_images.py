"""Reading images: pixels as stored (EXIF orientation ignored, or applied as PIL applies it
where asked), plain files only, no more pixels than the limit, checked from the header before
decoding, and deep pixels (16-bit, float) by one rule for files and PIL images."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from rcnn.data.images import (
    ImageDepthError,
    ImageTooLargeError,
    check_image_size,
    decode_image,
    exif_orientation,
    image_size,
    pil_to_rgb,
    read_image,
    upright,
    upright_copy,
)
from rcnn.errors import ConfigError, RcnnError
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


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_pixels_as_pil_exif_transpose_does(orientation, tmp_path):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "tagged.png"
    Image.fromarray(pixels).save(path, exif=exif.tobytes())  # lossless, tag kept
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))  # the oracle
    assert exif_orientation(path.read_bytes()) == orientation
    np.testing.assert_array_equal(upright(pixels, orientation), expected)
    copy = upright_copy(str(path), tmp_path / "copy.png")
    if orientation == 1:
        assert copy == str(path)
    else:
        np.testing.assert_array_equal(read_image(copy)[:, :, ::-1], expected)
        np.testing.assert_array_equal(pil_to_rgb(Image.open(path), exif=True), expected)
        np.testing.assert_array_equal(pil_to_rgb(Image.open(path)), pixels)


def test_a_pil_image_of_any_mode_reads_as_its_file(tmp_path):
    grey = (np.arange(48 * 40).reshape(40, 48) * 34 % 65536).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey)
    opened = Image.open(tmp_path / "grey16.png")
    assert opened.mode == "I;16"
    by_path = read_image(tmp_path / "grey16.png")
    np.testing.assert_array_equal(by_path[:, :, 0], grey >> 8)  # OpenCV's own 16-to-8 rule
    np.testing.assert_array_equal(pil_to_rgb(opened), by_path[:, :, ::-1])
    np.testing.assert_array_equal(pil_to_rgb(opened.convert("I")), by_path[:, :, ::-1])
    unit = np.random.default_rng(0).random((30, 20)).astype(np.float32)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tif")  # a file OpenCV read as nothing
    by_path = read_image(tmp_path / "unit.tif")
    np.testing.assert_array_equal(by_path[:, :, 1], np.round(unit.astype(float) * 255))
    np.testing.assert_array_equal(pil_to_rgb(Image.open(tmp_path / "unit.tif")), by_path)
    Image.fromarray(unit * 255, "F").save(tmp_path / "wide.tif")
    with pytest.raises(ImageDepthError, match=r"wide.tif: float pixels must lie in 0..1"):
        read_image(tmp_path / "wide.tif")
    with pytest.raises(ImageDepthError, match="mode F: float pixels must lie in 0..1"):
        pil_to_rgb(Image.open(tmp_path / "wide.tif"))
    closed = Image.open(tmp_path / "grey16.png")
    closed.close()
    with pytest.raises(RcnnError, match="mode I;16 could not be read.*closed"):
        pil_to_rgb(closed)
