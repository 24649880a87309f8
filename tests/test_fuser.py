"""The Python fusion API: inputs of every kind, the authors' protocol, colour, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.fusion import Fuser, fuse, minmax_normalize
from cddfuse.io.image import read_image


@pytest.fixture(scope="module")
def tiny_fuser(tiny_weights):
    return Fuser(weights=tiny_weights, device="cpu")


@pytest.mark.slow
def test_authors_protocol_on_a_real_crop(seed1_checkpoint, test_data, tmp_path):
    """Fuser == the authors' test_IVF.py steps: cv2 gray read, /255, model, min-max, x255."""
    import cv2

    from cddfuse.models.weights import load_weights

    ir8 = cv2.imread(str(test_data / "TNO/ir/01.png"))[200:248, 300:364]
    vi8 = cv2.imread(str(test_data / "TNO/vi/01.png"))[200:248, 300:364]
    cv2.imwrite(str(tmp_path / "ir.png"), ir8)
    cv2.imwrite(str(tmp_path / "vi.png"), vi8)
    model, _ = load_weights(seed1_checkpoint)

    def gray(bgr):
        return np.round(cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY)) / 255.0

    with torch.inference_mode():
        ref = model(torch.tensor(gray(ir8), dtype=torch.float32)[None, None],
                    torch.tensor(gray(vi8), dtype=torch.float32)[None, None], residual="vis")[0, 0].numpy()
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    out = Fuser(weights=seed1_checkpoint, device="cpu").fuse(tmp_path / "ir.png", tmp_path / "vi.png")
    assert out.shape == (48, 64)
    assert np.abs(out - ref).max() <= 1e-5


@pytest.mark.slow
def test_inputs_paths_arrays_pil_agree(tiny_fuser, test_data):
    ir_p, vi_p = test_data / "RoadScene/ir/FLIR_00977.jpg", test_data / "RoadScene/vi/FLIR_00977.jpg"
    from_paths = tiny_fuser.fuse(ir_p, vi_p)
    ir8, vi8 = read_image(ir_p, keep_integer=True), read_image(vi_p, keep_integer=True)
    from_arrays = tiny_fuser.fuse(ir8, vi8)
    from_pil = tiny_fuser.fuse(Image.open(ir_p), Image.open(vi_p))
    assert from_paths.shape == ir8.shape + (3,)  # the visible image is colour -> colour result
    assert np.array_equal(from_paths, from_arrays)
    assert np.array_equal(from_paths, from_pil)


@pytest.mark.slow
def test_float_and_uint16_inputs(tiny_fuser):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    b8 = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    out8 = tiny_fuser.fuse(a8, b8)
    out16 = tiny_fuser.fuse(a8.astype(np.uint16) * 257, b8.astype(np.uint16) * 257)
    outf = tiny_fuser.fuse(a8 / 255.0, b8 / 255.0)
    np.testing.assert_allclose(out8, out16, atol=1e-5)
    np.testing.assert_allclose(out8, outf, atol=1e-5)


def test_color_output_keeps_chroma_and_gray_option(tiny_weights, test_data):
    pet, mri = test_data / "MRI_PET/PET/11.png", test_data / "MRI_PET/MRI/11.png"
    res = Fuser(weights=tiny_weights, device="cpu").fuse_detailed(pet, mri)
    assert res.image.shape == (256, 256, 3) and res.chroma_from == "a"
    gray = Fuser(weights=tiny_weights, device="cpu", color="gray").fuse(pet, mri)
    assert gray.shape == (256, 256)
    np.testing.assert_allclose(gray, res.luminance, atol=0)


@pytest.mark.slow
def test_normalize_modes(tiny_weights, test_data):
    ir, vi = test_data / "TNO/ir/07.png", test_data / "TNO/vi/07.png"
    raw = Fuser(weights=tiny_weights, device="cpu", normalize="none").fuse_detailed(ir, vi)
    mm = Fuser(weights=tiny_weights, device="cpu").fuse_detailed(ir, vi)
    assert np.array_equal(raw.raw, mm.raw)
    assert mm.image.min() == 0.0 and mm.image.max() == 1.0
    np.testing.assert_allclose(raw.image, raw.raw, atol=0)
    np.testing.assert_allclose(mm.image, minmax_normalize(raw.raw), atol=0)


def test_baseline_rules(test_data):
    ir, vi = test_data / "MRI_CT/CT/11.png", test_data / "MRI_CT/MRI/11.png"
    a, b = read_image(ir), read_image(vi)
    mean = Fuser(method="mean", normalize="none").fuse(ir, vi)
    mx = Fuser(method="max", normalize="none").fuse(ir, vi)
    np.testing.assert_allclose(mean, (a + b) / 2, atol=1e-7)
    np.testing.assert_array_equal(mx, np.maximum(a, b))


def test_size_mismatch_and_resize(tiny_fuser):
    a, b = np.zeros((20, 30), np.uint8), np.full((10, 15), 200, np.uint8)
    with pytest.raises(CDDFuseError, match=r"differ in size \(30x20 vs 15x10\).*resize=True") as info:
        tiny_fuser.fuse(a, b)
    assert "--resize" in info.value.cli_message() and "resize=True" not in info.value.cli_message()
    assert tiny_fuser.fuse(a, b, resize=True).shape == (20, 30)


def test_bad_arguments(tiny_weights):
    with pytest.raises(UsageError, match="unknown method"):
        Fuser(method="avg")
    with pytest.raises(UsageError, match="unknown task"):
        Fuser(weights=tiny_weights, task="rgb")
    with pytest.raises(UsageError, match="only used with method=.cddfuse."):
        Fuser(weights=tiny_weights, method="max")
    f = Fuser(method="max")
    with pytest.raises(UsageError, match="must be in \\[0, 1\\]"):
        f.fuse(np.full((4, 4), 2.0), np.zeros((4, 4)))
    with pytest.raises(UsageError, match="expected a file path"):
        f.fuse(123, np.zeros((4, 4)))


def test_no_weights_is_an_error_not_random_weights(tmp_path, monkeypatch):
    import cddfuse.models.pretrained as P

    monkeypatch.setattr(P, "WEIGHTS_DIR", tmp_path)  # an installation without bundled weights
    for task in ("ivf", "mif"):
        with pytest.raises(CDDFuseError, match="no bundled weights"):
            Fuser(task=task)


def test_one_call_function(tiny_weights):
    a = np.random.default_rng(0).random((9, 11)).astype(np.float32)
    assert np.array_equal(fuse(a, a, weights=tiny_weights, device="cpu"),
                          Fuser(weights=tiny_weights, device="cpu").fuse(a, a))
