"""The optimised paths compute the same function as the straightforward one (forward and backward)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cddfuse.engine import FastWeights, fused_ops_available, tiled_fuse
from cddfuse.models.reference import ReferenceCDDFuse, reference_from

from .helpers import SHARED, make_random_model
from .helpers import need as _need

TINY = dict(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1, encoder_inn_layers=1)
OPS = ["plain"] + (["fused"] if fused_ops_available() else [])



_random_model = make_random_model  # reproducible random weights (tests/helpers.py)


@pytest.fixture(scope="module")
def seed1_model():
    from cddfuse.models.weights import load_weights

    model, _ = load_weights(_need(SHARED / "reference" / "official_format_seed1.pth"))
    return model


@pytest.fixture(scope="module")
def parity():
    return np.load(_need(SHARED / "reference" / "parity_seed1.npz"))


def _pair(h, w, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


@pytest.mark.parametrize("ops", OPS)
@pytest.mark.parametrize("residual", ["vis", "sum", "none"])
def test_fast_path_equals_reference_tiny(ops, residual):
    model = _random_model(1, **TINY)
    ref = reference_from(model)
    a, b = _pair(21, 34, n=2, seed=1)
    with torch.inference_mode():
        want = ref(a, b, residual)
    got = tiled_fuse(model, a, b, residual, ops=ops)  # one tile: the optimised whole-image path
    assert float((got - want).abs().max()) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("ops", OPS)
def test_fast_path_equals_reference_full_size(seed1_model, ops):
    ref = reference_from(seed1_model)
    a, b = _pair(40, 56, seed=2)
    with torch.inference_mode():
        want = ref(a, b, "vis")
    for tile in (None, 24):
        got = tiled_fuse(seed1_model, a, b, "vis", tile=tile, ops=ops)
        assert float((got - want).abs().max()) <= 1e-4, tile


@pytest.mark.slow
@pytest.mark.parametrize("case", ["case0_", "case1_"])
def test_fast_path_matches_authors_vectors(seed1_model, parity, case):
    ir = torch.from_numpy(parity[case + "ir"])[None, None]
    vi = torch.from_numpy(parity[case + "vi"])[None, None]
    for residual, key in (("vis", "out_vi_residual"), ("sum", "out_sum_residual"), ("none", "out_no_residual")):
        got = tiled_fuse(seed1_model, ir, vi, residual)
        assert float(np.abs(got.numpy() - parity[case + key]).max()) <= 1e-5, key


def test_composed_lite_attention_convolution():
    """qkv2(qkv1(x)) (1x1 then 3x3, zero padding, no bias) is one 3x3 convolution."""
    model = _random_model(3, **TINY)
    fw = FastWeights.from_model(model)
    attn = model.encoder.baseFeature.attn
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        want = attn.qkv2(attn.qkv1(x))
        w = torch.cat((fw.lt_enc.wc_qk, fw.lt_enc.wc_v), 0)
        got = torch.nn.functional.conv2d(x, w, padding=1)
    assert float((got - want).abs().max()) <= 1e-5


def test_module_forward_and_backward_equal_reference():
    """The module's forward (fused LayerNorm, composed convolution) and its gradients equal the
    literal implementation's, so training gets the same function faster."""
    model = _random_model(4, **dict(TINY, encoder_blocks=2)).train()
    ref = ReferenceCDDFuse(model.config).train()
    ref.load_state_dict(model.state_dict())
    a, b = _pair(17, 23, n=2, seed=4)
    out_m = model(a, b, "vis")
    out_r = ref(a, b, "vis")
    assert float((out_m - out_r).detach().abs().max()) <= 1e-5
    g = torch.randn_like(out_m)
    (out_m * g).sum().backward()
    (out_r * g).sum().backward()
    params_r = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        pr = params_r[name]
        scale = float(pr.grad.abs().max()) + 1e-8
        assert float((p.grad - pr.grad).abs().max()) <= 1e-4 * scale + 1e-7, name


def test_channels_last_module_matches():
    model = _random_model(5, **TINY)
    a, b = _pair(16, 20, seed=5)
    with torch.inference_mode():
        want = model(a, b)
        cl = model.to(memory_format=torch.channels_last)
        got = cl(a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last))
    assert float((got - want).abs().max()) <= 1e-5


def test_bfloat16_engine_is_close():
    model = _random_model(6, **TINY)
    a, b = _pair(24, 24, seed=6)
    with torch.inference_mode():
        want = model(a, b)
    got = tiled_fuse(model, a, b, dtype=torch.bfloat16, ops="plain")
    assert got.dtype == torch.bfloat16
    assert float((got.float() - want).abs().max()) <= 5e-2


def test_fuser_batches_same_size_pairs(tmp_path):
    from cddfuse.fusion import Fuser
    from cddfuse.models.weights import save_weights

    path = tmp_path / "tiny.safetensors"
    save_weights(_random_model(7, **TINY), path, task="ivf", residual="vis")
    fuser = Fuser(weights=path, device="cpu")
    ya, yb = (x[:, 0].numpy() for x in _pair(19, 26, n=3, seed=7))
    batch = fuser.fuse_luminance(ya, yb)
    assert batch.shape == (3, 19, 26)
    for i in range(3):
        assert float(np.abs(batch[i] - fuser.fuse_luminance(ya[i], yb[i])).max()) <= 1e-5


@pytest.mark.slow
def test_onnx_backend_matches_torch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cddfuse.engine.onnx import OnnxFuser, export_onnx

    model = _random_model(8, **TINY)
    path = export_onnx(model, tmp_path / "tiny.onnx", residual="sum")
    a, b = _pair(23, 31, seed=8)
    with torch.inference_mode():
        want = model(a, b, "sum")[0, 0].numpy()
    got = OnnxFuser(path, threads=1).fuse_luminance(a[0, 0].numpy(), b[0, 0].numpy())
    assert float(np.abs(got - want).max()) <= 1e-4
