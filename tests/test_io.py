"""Image reading: every odd input is either converted correctly or refused by name."""

import struct

import cv2
import numpy as np
import pytest

from conftest import write_image
from hloc_hndesc.io import MAX_DECODE_PIXELS, ImageReadError, list_images, read_image


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_rgb_png_roundtrip_is_rgb_order(tmp_path, rgb):
    out = read_image(write_image(tmp_path / "a.png", rgb))
    assert out.dtype == np.float32 and out.shape == (48, 64, 3)
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-6)


def test_grayscale_file_expands_to_rgb(tmp_path, rgb):
    grey = rgb[..., 0]
    out = read_image(write_image(tmp_path / "g.png", grey))
    assert out.shape == (48, 64, 3)
    np.testing.assert_allclose(out[..., 2], grey / 255.0, atol=1e-6)
    assert read_image(tmp_path / "g.png", grayscale=True).shape == (48, 64)


def test_rgba_drops_alpha(tmp_path, rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    out = read_image(write_image(tmp_path / "r.png", rgba))
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-6)


def test_16bit_uses_full_range(tmp_path):
    img = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    out = read_image(write_image(tmp_path / "d.png", img), grayscale=True)
    np.testing.assert_allclose(out, img / 65535.0, atol=1e-6)
    assert out.max() == pytest.approx(1.0)


def exif_rotated_jpeg(path, image, orientation=6):
    """A JPEG whose EXIF orientation tag asks for a rotation."""
    ok, enc = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    data = enc.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    return path


def test_exif_rotation_applied(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:10, :10] = 255  # white top-left corner
    out = read_image(exif_rotated_jpeg(tmp_path / "e.jpg", img))
    assert out.shape == (60, 40, 3)  # orientation 6: rotate 90 degrees clockwise
    assert out[:10, -10:].mean() > 0.9 and out[:10, :10].mean() < 0.1


def test_truncated_jpeg_refused(tmp_path, rgb):
    data = cv2.imencode(".jpg", rgb)[1].tobytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"t\.jpg: truncated JPEG"):
        read_image(tmp_path / "t.jpg")


def test_truncated_png_refused(tmp_path, rgb):
    data = cv2.imencode(".png", rgb)[1].tobytes()
    (tmp_path / "t.png").write_bytes(data[:-20])
    with pytest.raises(ImageReadError, match=r"t\.png: truncated PNG"):
        read_image(tmp_path / "t.png")


def test_corrupt_and_empty_files_refused(tmp_path):
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff" + b"garbage" * 50 + b"\xff\xd9")
    with pytest.raises(ImageReadError, match=r"c\.jpg: not a readable image"):
        read_image(tmp_path / "c.jpg")
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"z\.png: empty file"):
        read_image(tmp_path / "z.png")
    with pytest.raises(ImageReadError, match=r"missing\.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_huge_image_refused_before_decoding(tmp_path):
    data = bytearray(cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", 30000, 30000)  # header claims 30000 x 30000
    (tmp_path / "huge.png").write_bytes(bytes(data))
    assert 30000 * 30000 > MAX_DECODE_PIXELS
    with pytest.raises(ImageReadError, match=r"huge\.png: image of 30000x30000 px exceeds"):
        read_image(tmp_path / "huge.png")


def test_list_images(tmp_path, rgb):
    with pytest.raises(FileNotFoundError, match="no images found"):
        list_images(tmp_path)
    write_image(tmp_path / "b" / "x.png", rgb)
    write_image(tmp_path / "a.JPG", rgb)
    (tmp_path / "notes.txt").write_text("x")
    assert list_images(tmp_path) == ["a.JPG", "b/x.png"]
