"""CDDFuse-lite network and weights: any size, exact strips, ONNX = torch, round trip, mismatch errors,
bundled weights (when shipped) with their provenance."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cddfuse.errors import CDDFuseError, CheckpointError
from cddfuse.models import lite
from cddfuse.models.lite import CDDFuseLite, LiteConfig, create_lite
from cddfuse.models.weights import (
    load_any_weights,
    load_lite_weights,
    load_weights,
    save_lite_weights,
    weights_architecture,
)


def _trained_like(seed: int = 0, **sizes: int) -> CDDFuseLite:
    """A student with non-trivial random weights (the fresh one is nearly the mean rule)."""
    torch.manual_seed(seed)
    m = create_lite(LiteConfig(**sizes) if sizes else None)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def test_fresh_student_is_a_function_of_the_mean():
    a, b = torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)
    with torch.no_grad():
        out = create_lite().eval()(a, b)
    # coefficients start at 1, 1, -1; the detail path is silent and the coefficient slopes are small
    assert torch.allclose(out, torch.sigmoid(a + b - 1), atol=0.01)
    assert float(out.min()) > 0 and float(out.max()) < 1


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 300), (33, 31), (64, 64), (97, 130)])
def test_any_size_keeps_shape_and_is_finite(hw):
    m = _trained_like()
    a, b = torch.rand(2, 1, *hw), torch.rand(2, 1, *hw)
    with torch.no_grad():
        out = m(a, b)
    assert out.shape == (2, 1, *hw) and torch.isfinite(out).all()


def test_batch_items_are_independent():
    m = _trained_like()
    a, b = torch.rand(3, 1, 45, 70), torch.rand(3, 1, 45, 70)
    with torch.no_grad():
        whole = m(a, b)
        single = torch.cat([m(a[i:i + 1], b[i:i + 1]) for i in range(3)])
    assert torch.allclose(whole, single, atol=1e-6)


@pytest.mark.parametrize("hw", [(203, 77), (130, 257), (64, 1000)])
def test_strips_equal_the_whole_image(monkeypatch, hw):
    m = _trained_like()
    a, b = torch.rand(1, 1, *hw), torch.rand(1, 1, *hw)
    with torch.no_grad():
        whole = m(a, b)
        monkeypatch.setattr(lite, "STRIP_PIXELS", 3000)  # many strips of a few rows
        strips = m(a, b)
    assert torch.allclose(whole, strips, rtol=1e-6, atol=1e-5), float((whole - strips).abs().max())


@pytest.mark.parametrize("hw", [(203, 77), (130, 257), (61, 1000)])
def test_strip_stem_and_in_place_inference_give_the_same_bits(monkeypatch, hw):
    """Large-image inference (the patchify convolution in strips of rows, in-place activations and
    sums, each skip freed after use) computes exactly what training's graph-building pass computes."""
    m = _trained_like()
    a, b = torch.rand(1, 1, *hw), torch.rand(1, 1, *hw)
    with torch.enable_grad():
        graph = m.coefficients(a, b).detach()
    monkeypatch.setattr(lite, "STRIP_PIXELS", 3000)  # strips of a few rows; widths not a multiple of 32
    with torch.inference_mode():
        lean = m.coefficients(a, b)
    assert torch.equal(graph, lean)


def test_flops_are_within_the_budget():
    from torch.utils.flop_counter import FlopCounterMode

    a = torch.rand(1, 1, 480, 640)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        create_lite().eval()(a, a)
    assert fc.get_total_flops() <= 5e9  # CDDFuse: 1.1e12 at 640x480


def test_onnx_equals_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = _trained_like()
    path = tmp_path / "lite.onnx"
    ex = torch.rand(1, 1, 70, 93)
    axes = {2: "h", 3: "w"}
    torch.onnx.export(m, (ex, ex), str(path), input_names=["a", "b"], output_names=["fused"],
                      dynamic_axes={"a": axes, "b": axes, "fused": axes}, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in [(70, 93), (33, 257), (1, 1), (128, 128)]:
        a, b = torch.rand(1, 1, *hw), torch.rand(1, 1, *hw)
        got = sess.run(None, {"a": a.numpy(), "b": b.numpy()})[0]
        with torch.no_grad():
            want = m(a, b).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_weights_round_trip_and_metadata(tmp_path):
    m = _trained_like(3, width=8, head_width=4)
    p = save_lite_weights(m, tmp_path / "s.safetensors", task="mif", residual="vis",
                          provenance={"teacher": {"sha256": "ab"}})
    assert weights_architecture(p) == "lite"
    got, info = load_lite_weights(p)
    assert info.architecture == "lite" and info.task == "mif" and info.config == m.config
    assert info.provenance == {"teacher": {"sha256": "ab"}}
    assert all(torch.equal(v, got.state_dict()[k]) for k, v in m.state_dict().items())
    any_model, any_info = load_any_weights(p)
    assert isinstance(any_model, CDDFuseLite) and any_info.architecture == "lite"


def test_each_loader_refuses_the_other_kind_in_one_line(tmp_path, tiny_weights):
    p = save_lite_weights(_trained_like(), tmp_path / "s.safetensors", task="ivf", residual="vis")
    with pytest.raises(CheckpointError) as e:
        load_weights(p)
    msg = e.value.cli_message()
    assert "is CDDFuse-lite weights, not CDDFuse (exact) weights; use --method lite" in msg and "\n" not in msg
    with pytest.raises(CheckpointError) as e:
        load_lite_weights(tiny_weights)
    msg = e.value.cli_message()
    assert "is CDDFuse (exact) weights, not CDDFuse-lite weights; use --method cddfuse" in msg and "\n" not in msg
    assert weights_architecture(tiny_weights) == "cddfuse"


def test_lite_weights_that_do_not_fit_their_sizes_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    p = save_lite_weights(_trained_like(), tmp_path / "s.safetensors", task="ivf", residual="vis")
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(p))
    state.pop("coef.weight")
    meta["config"] = json.dumps({**json.loads(meta["config"])})
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"do not fit the CDDFuse-lite network.*missing \['coef.weight'\]"):
        load_lite_weights(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("task", ["ivf", "mif"])
def test_bundled_lite_weights(task):
    from cddfuse.models.pretrained import PRETRAINED_LITE, WEIGHTS_DIR, lite_pretrained_path, pretrained_path
    from cddfuse.train.distill_cache import file_sha256

    if not (WEIGHTS_DIR / PRETRAINED_LITE[task].filename).is_file():
        with pytest.raises(CDDFuseError) as e:
            lite_pretrained_path(task)
        assert "no bundled CDDFuse-lite weights" in str(e.value) and "\n" not in e.value.cli_message()
        pytest.skip(f"no bundled lite weights for {task} in this checkout (the error above is what users get)")
    path = pretrained_path(task, method="lite")
    model, info = load_lite_weights(path)
    assert info.task == task and info.architecture == "lite"
    teacher = info.provenance["teacher"]
    assert teacher["sha256"] == file_sha256(pretrained_path(task))  # distilled from the bundled exact model
    assert info.provenance["steps"] > 0 and info.provenance["hardware"]
    assert path.stat().st_size < 1_000_000
