"""The network: parity with the authors' implementation, shapes, sizes, gradients."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cddfuse.models import CDDFuse, CDDFuseConfig, count_parameters, residual_image

from .helpers import TINY_SIZES, make_random_model

PARITY_KEYS = ("vi_base", "vi_detail", "vi_shallow", "ir_base", "ir_detail", "fused_base", "fused_detail",
               "out_vi_residual", "out_sum_residual", "out_no_residual", "out_vi_residual_minmax")


def test_paper_parameter_count():
    assert count_parameters(CDDFuse()) == 1_188_272


def test_state_dict_matches_authors_listing(reference_dir):
    """Every key and shape of the authors' checkpoint maps onto our network, and nothing else."""
    from cddfuse.models.weights import OFFICIAL_PARTS

    listing = json.loads((reference_dir / "official_state_dict_seed1.json").read_text())
    theirs = {OFFICIAL_PARTS[part] + k.removeprefix("module."): tuple(shape)
              for part, keys in listing.items() for k, shape in keys.items()}
    ours = {k: tuple(v.shape) for k, v in CDDFuse().state_dict().items()}
    assert theirs == ours


@pytest.mark.slow
@pytest.mark.parametrize("case", ["case0_", "case1_"])
def test_parity_with_authors_code(seed1_model, parity, case):
    ir = torch.from_numpy(parity[case + "ir"])[None, None]
    vi = torch.from_numpy(parity[case + "vi"])[None, None]
    with torch.inference_mode():
        vb, vd, vs = seed1_model.encode(vi)
        ib, idt, _ = seed1_model.encode(ir)
        fb, fd = seed1_model.fuse_features(ib, vb, idt, vd)
        out_vis = seed1_model.decode(fb, fd, vi)
        got = {
            "vi_base": vb, "vi_detail": vd, "vi_shallow": vs, "ir_base": ib, "ir_detail": idt,
            "fused_base": fb, "fused_detail": fd, "out_vi_residual": out_vis,
            "out_sum_residual": seed1_model.decode(fb, fd, ir + vi),
            "out_no_residual": seed1_model.decode(fb, fd, None),
            "out_vi_residual_minmax": (out_vis - out_vis.min()) / (out_vis.max() - out_vis.min()),
        }
    for key in PARITY_KEYS:
        ref = parity[case + key]
        err = float(np.abs(got[key].numpy() - ref).max())
        assert err <= 1e-5, f"{case}{key}: max abs error {err:.3g}"


@pytest.mark.parametrize("mode,key", [("vis", "out_vi_residual"), ("sum", "out_sum_residual"),
                                      ("none", "out_no_residual")])
def test_forward_equals_reference_per_residual_mode(seed1_model, parity, mode, key):
    ir = torch.from_numpy(parity["case0_ir"])[None, None]
    vi = torch.from_numpy(parity["case0_vi"])[None, None]
    with torch.inference_mode():
        out = seed1_model(ir, vi, residual=mode)
    assert float(np.abs(out.numpy() - parity["case0_" + key]).max()) <= 1e-5


@pytest.mark.parametrize("h,w", [(1, 1), (5, 3), (17, 31), (33, 20)])
def test_any_size(h, w):
    model = make_random_model(1, **TINY_SIZES)
    a, b = torch.rand(2, 1, h, w), torch.rand(2, 1, h, w)
    with torch.inference_mode():
        out = model(a, b)
    assert out.shape == (2, 1, h, w)
    assert torch.all((out > 0) & (out < 1))


def test_batch_encoding_equals_separate_calls():
    model = make_random_model(2, **TINY_SIZES)
    a, b = torch.rand(1, 1, 12, 9), torch.rand(1, 1, 12, 9)
    with torch.inference_mode():
        ba, da, _ = model.encode(a)
        bb, db, _ = model.encode(b)
        fb, fd = model.fuse_features(ba, bb, da, db)
        sep = model.decode(fb, fd, b)
        joint = model(a, b, residual="vis")
    torch.testing.assert_close(joint, sep, atol=1e-6, rtol=0)


def test_residual_image_modes():
    a, b = torch.ones(1, 1, 2, 2), 2 * torch.ones(1, 1, 2, 2)
    assert torch.equal(residual_image(a, b, "vis"), b)
    assert torch.equal(residual_image(a, b, "sum"), 3 * torch.ones(1, 1, 2, 2))
    assert residual_image(a, b, "none") is None
    with pytest.raises(ValueError, match="unknown residual mode"):
        residual_image(a, b, "ir")


def test_sources_of_different_shapes_are_refused():
    model = make_random_model(3, **TINY_SIZES)
    with pytest.raises(ValueError, match="same shape"):
        model(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5))


def test_sources_with_wrong_channel_count_are_refused():
    model = make_random_model(3, **TINY_SIZES)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))


def test_config_heads_must_divide_dim():
    with pytest.raises(ValueError, match="num_heads must divide dim"):
        CDDFuseConfig(dim=10, num_heads=4)


def test_config_from_dict_refuses_unknown_fields():
    with pytest.raises(ValueError, match="unknown model size"):
        CDDFuseConfig.from_dict({"dim": 8, "depth": 3})


def test_gradcheck_float64():
    sizes = dict(dim=4, num_heads=2, encoder_blocks=1, decoder_blocks=1, encoder_inn_layers=1)
    model = make_random_model(4, **sizes).double()
    a = torch.rand(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: model(x, y, residual="vis"), (a, b), eps=1e-6, atol=1e-5)


def test_device_follows_inputs_no_hardcoded_device():
    model = make_random_model(5, **TINY_SIZES).to(torch.float64)
    out = model(torch.rand(1, 1, 6, 6, dtype=torch.float64), torch.rand(1, 1, 6, 6, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_matches_cpu(seed1_model, parity):  # pragma: no cover - runs only where a GPU exists
    ir = torch.from_numpy(parity["case0_ir"])[None, None]
    vi = torch.from_numpy(parity["case0_vi"])[None, None]
    gpu = CDDFuse(seed1_model.config)
    gpu.load_state_dict(seed1_model.state_dict())
    gpu = gpu.cuda().eval()
    with torch.inference_mode():
        out = gpu(ir.cuda(), vi.cuda()).cpu()
    assert float((out - torch.from_numpy(parity["case0_out_vi_residual"])).abs().max()) <= 1e-3
