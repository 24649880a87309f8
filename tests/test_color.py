"""Colour handling: YCbCr round trip, luminance convention, hue preservation."""
from __future__ import annotations

import numpy as np
import pytest

from cddfuse.io.color import luminance, merge_luminance, rgb_to_ycbcr, split_luminance, ycbcr_to_rgb
from cddfuse.io.image import read_image


def test_known_values():
    rgb = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]], np.float32)
    ycc = rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(ycc[0, :, 0], [0.299, 0.587, 0.114, 1.0], atol=1e-6)
    np.testing.assert_allclose(ycc[0, 3, 1:], [0.5, 0.5], atol=1e-6)  # white has no chroma
    np.testing.assert_allclose(ycc[0, 0, 2], 0.5 + 0.713 * (1 - 0.299), atol=1e-3)  # red: Cr


def test_round_trip_within_one_level():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 32, 3)).astype(np.float32) / 255
    back = ycbcr_to_rgb(rgb_to_ycbcr(rgb))
    assert np.abs(back - rgb).max() < 1 / 255


@pytest.mark.parametrize("mode, levels", [("ycbcr", 1), ("saturation", 2)])
def test_split_merge_round_trip_integer_image(mode, levels):
    """Split and merged back unchanged, up to the luminance's rounding to the 8-bit grid (which at the gamut's
    edge the saturation mode answers by desaturating slightly rather than clipping one channel)."""
    rng = np.random.default_rng(2)
    rgb8 = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    s = split_luminance(rgb8)
    assert s.is_color
    error = np.abs(merge_luminance(s.y, s, mode) - rgb8 / 255.0)
    assert error.max() <= levels / 255 and np.median(error) < 0.5 / 255


def test_luminance_matches_authors_gray_read():
    import cv2

    rng = np.random.default_rng(3)
    rgb8 = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    theirs = np.round(cv2.cvtColor(rgb8[..., ::-1].astype(np.float32), cv2.COLOR_BGR2GRAY))
    assert np.array_equal(luminance(rgb8) * 255, theirs.astype(np.float32) * np.float32(1))  # exact
    g = rgb8[..., 0]
    assert np.array_equal(luminance(g), (g / 255.0).astype(np.float32))


@pytest.mark.parametrize("mode", ["ycbcr", "saturation"])
def test_pet_hue_is_kept(test_data, mode):
    """A fused luminance on a real PET image keeps the PET hue wherever the PET is coloured."""
    import cv2

    pet = read_image(test_data / "MRI_PET" / "PET" / "11.png", keep_integer=True)
    mri = read_image(test_data / "MRI_PET" / "MRI" / "11.png")
    s = split_luminance(pet)
    fused_y = np.clip(0.5 * s.y + 0.5 * mri, 0, 1)
    out = merge_luminance(fused_y, s, mode)
    ycc_in, ycc_out = rgb_to_ycbcr(pet / 255.0), rgb_to_ycbcr(out)
    chroma = np.hypot(ycc_in[..., 1] - 0.5, ycc_in[..., 2] - 0.5)
    unclipped = np.all((out > 0.002) & (out < 0.998), axis=-1)
    mask = (chroma > 0.05) & unclipped
    assert mask.sum() > 500
    hue_in = np.arctan2(ycc_in[..., 2] - 0.5, ycc_in[..., 1] - 0.5)[mask]
    hue_out = np.arctan2(ycc_out[..., 2] - 0.5, ycc_out[..., 1] - 0.5)[mask]
    diff = np.abs(np.angle(np.exp(1j * (hue_out - hue_in))))
    assert np.median(diff) < 0.01 and diff.max() < 0.2
    if mode == "saturation":  # no channel clipped: the fused luminance is kept exactly
        np.testing.assert_allclose(ycc_out[..., 0], fused_y, atol=2e-3)
    if mode == "ycbcr":  # the chroma itself (the colour map) is preserved
        assert np.abs(ycc_out[..., 1:][mask] - ycc_in[..., 1:][mask]).max() < 2 / 255
    else:  # the colour's saturation is preserved (HSV saturation is invariant to scaling RGB)
        sat_in = cv2.cvtColor((pet / 255.0).astype(np.float32), cv2.COLOR_RGB2HSV)[..., 1][mask]
        sat_out = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[..., 1][mask]
        assert np.median(np.abs(sat_out - sat_in)) < 0.01


def test_saturation_mode_known_values():
    """Scaling a colour by k is what the saturation mode does; out of gamut it desaturates at constant Y."""
    src = split_luminance(np.array([[[0.2, 0.1, 0.05], [0.5, 0.25, 0.0]]], dtype=np.float32))
    out = merge_luminance(np.array([[0.3, 0.9]], np.float32), src, "saturation")
    k = 0.3 / src.y[0, 0]
    np.testing.assert_allclose(out[0, 0], np.array([0.2, 0.1, 0.05]) * k, atol=2e-3)
    assert out[0, 1].max() <= 1.0 and abs(out[0, 1] @ np.array([0.299, 0.587, 0.114]) - 0.9) < 2e-3
    assert out[0, 1, 0] >= out[0, 1, 1] >= out[0, 1, 2]  # the hue order (orange) survives the desaturation
    red = merge_luminance(np.array([[0.3, 0.9]], np.float32), src, "ycbcr")[0, 0, 0]  # R = Y + 1.402 (Cr - 0.5)
    assert abs(red - (0.3 + 1.402 * (src.cr[0, 0] - 0.5))) < 2e-3
    with pytest.raises(ValueError, match="unknown chroma mode"):
        merge_luminance(np.zeros((1, 2), np.float32), src, "hsv")


@pytest.mark.parametrize("shape", [(5, 7), (1, 1)])
def test_gray_passthrough(shape):
    g = np.random.default_rng(0).random(shape).astype(np.float32)
    s = split_luminance(g)
    assert not s.is_color and np.array_equal(s.y, g)
    with pytest.raises(ValueError, match="gray"):
        merge_luminance(g, s)
