"""Reading and writing images: formats, modes, bit depths, atomicity."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cddfuse.errors import ImageReadError, UsageError
from cddfuse.io.image import read_image, write_image


@pytest.fixture
def rgb8():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_lossless_rgb_formats(tmp_path, rgb8, ext):
    path = tmp_path / f"x{ext}"
    Image.fromarray(rgb8).save(path)
    assert np.array_equal(read_image(path, keep_integer=True), rgb8)
    np.testing.assert_allclose(read_image(path), rgb8 / 255.0, atol=1e-7)


def test_jpeg_reads(tmp_path, rgb8):
    Image.fromarray(rgb8).save(tmp_path / "x.jpg", quality=95)
    img = read_image(tmp_path / "x.jpg")
    assert img.shape == (13, 17, 3) and img.dtype == np.float32


def test_gray_rgba_palette(tmp_path, rgb8):
    gray = rgb8[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png", keep_integer=True), gray)
    rgba = np.dstack([rgb8, np.full(gray.shape, 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png", keep_integer=True), rgb8)  # alpha ignored
    pal = Image.fromarray(rgb8).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png", keep_integer=True), np.asarray(pal.convert("RGB")))
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png", keep_integer=True), gray)


def test_equal_channels_read_as_gray(tmp_path, rgb8):
    g = np.repeat(rgb8[..., :1], 3, axis=2)
    Image.fromarray(g).save(tmp_path / "g3.png")
    assert read_image(tmp_path / "g3.png").shape == (13, 17)


def test_sixteen_bit_scaled_by_dtype_range(tmp_path):
    import cv2

    g16 = np.array([[0, 1000, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    np.testing.assert_allclose(read_image(tmp_path / "g16.png"), g16 / 65535.0, atol=1e-7)
    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[..., 0] = 65535  # pure red
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    img = read_image(tmp_path / "rgb16.png")
    assert img.shape == (2, 2, 3) and img[0, 0, 0] == 1.0 and img[0, 0, 1] == 0.0


def test_write_round_trips(tmp_path):
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    write_image(tmp_path / "o.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "o.png", keep_integer=True), np.rint(img * 255))
    write_image(tmp_path / "o16.png", img, bit_depth=16)
    np.testing.assert_allclose(read_image(tmp_path / "o16.png"), img, atol=1 / 65535)
    write_image(tmp_path / "o16.tif", img, bit_depth=16)
    assert read_image(tmp_path / "o16.tif", keep_integer=True).dtype == np.uint16
    write_image(tmp_path / "o.npy", img)
    assert np.array_equal(np.load(tmp_path / "o.npy"), img)
    rgb = np.stack([img, 1 - img, img * 0.5], -1)
    write_image(tmp_path / "c.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), rgb, atol=0.5 / 255 + 1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_errors(tmp_path):
    img = np.zeros((4, 4), np.float32)
    with pytest.raises(UsageError, match="cannot hold 16-bit"):
        write_image(tmp_path / "x.jpg", img, bit_depth=16)
    with pytest.raises(UsageError, match="cannot write .gif"):
        write_image(tmp_path / "x.gif", img)
    assert list(tmp_path.iterdir()) == []


def test_read_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(tmp_path / "empty.png")


def test_truncated_png(tmp_path, rgb8):
    Image.fromarray(rgb8).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(tmp_path / "cut.png")
