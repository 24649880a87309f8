"""Checkpoints: the authors' format, our safetensors format, and every way a file can be wrong."""
from __future__ import annotations

import json

import pytest
import torch

from cddfuse.errors import CheckpointError
from cddfuse.fusion import resolve_residual
from cddfuse.models import CDDFuse, CDDFuseConfig
from cddfuse.models.weights import load_weights, save_weights, state_dict_to_official

from .helpers import TINY_SIZES, make_random_model


def _same(m1, m2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_official_checkpoint_loads(seed1_checkpoint):
    model, info = load_weights(seed1_checkpoint)
    assert info.source_format == "official"
    assert info.config == CDDFuseConfig()
    assert (info.task, info.residual) == ("ivf", "vis")
    assert not model.training


def test_official_names_choose_their_residual(seed1_checkpoint, tmp_path):
    sd = torch.load(seed1_checkpoint, map_location="cpu", weights_only=True)
    mif = tmp_path / "CDDFuse_MIF.pth"
    torch.save(sd, mif)
    _, info = load_weights(mif)
    assert (info.task, info.residual) == ("mif", "none")
    assert resolve_residual("auto", "mif", info) == "none"
    _, ivf = load_weights(seed1_checkpoint)
    assert resolve_residual("auto", "ivf", ivf) == "vis"
    assert resolve_residual("auto", "mif", ivf) == "sum"  # the authors' IVF weights on medical pairs
    assert resolve_residual("none", "ivf", ivf) == "none"  # an explicit choice always wins


def test_safetensors_round_trip_is_exact(seed1_checkpoint, tmp_path):
    model, _ = load_weights(seed1_checkpoint)
    path = save_weights(model, tmp_path / "m.safetensors", task="mif", residual="none",
                        provenance={"data": "x", "steps": 3})
    again, info = load_weights(path)
    assert _same(model, again)
    assert (info.task, info.residual, info.normalize, info.source_format) == ("mif", "none", "minmax", "cddfuse")
    assert info.provenance == {"data": "x", "steps": 3}


def test_tiny_sizes_round_trip(tmp_path):
    model = make_random_model(7, **TINY_SIZES)
    again, info = load_weights(save_weights(model, tmp_path / "t.safetensors", task="ivf", residual="vis"))
    assert info.config == model.config and _same(model, again)


def test_official_round_trip_via_authors_layout(tmp_path):
    model = make_random_model(8, **TINY_SIZES)
    path = tmp_path / "theirs.pth"
    torch.save(state_dict_to_official(model.state_dict()), path)
    again, info = load_weights(path)
    assert info.config == model.config and _same(model, again)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_weights(tmp_path / "nope.pth")


@pytest.mark.parametrize("cut", [100, 10_000])
def test_truncated_pth(seed1_checkpoint, tmp_path, cut):
    bad = tmp_path / "cut.pth"
    bad.write_bytes(seed1_checkpoint.read_bytes()[:cut])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_weights(bad)


def test_truncated_safetensors(tmp_path):
    good = save_weights(make_random_model(0, **TINY_SIZES), tmp_path / "g.safetensors", task="ivf", residual="vis")
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(good.read_bytes()[:-500])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_weights(bad)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(CheckpointError):
        load_weights(junk)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"DIDF_Encoder": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_weights(path)


def test_missing_part_is_named(seed1_checkpoint, tmp_path):
    sd = torch.load(seed1_checkpoint, map_location="cpu", weights_only=True)
    del sd["DetailFuseLayer"]
    path = tmp_path / "three_parts.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing part\(s\) \['DetailFuseLayer'\]"):
        load_weights(path)


def test_missing_and_unexpected_keys_are_named(seed1_checkpoint, tmp_path):
    sd = torch.load(seed1_checkpoint, map_location="cpu", weights_only=True)
    del sd["DIDF_Decoder"]["module.reduce_channel.weight"]
    sd["BaseFuseLayer"]["module.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad_keys.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    assert "decoder.reduce_channel.weight" in str(e.value)
    assert "base_fuse.extra.weight" in str(e.value)


def test_shape_mismatch_is_named(tmp_path):
    model = make_random_model(0, **TINY_SIZES)
    path = save_weights(model, tmp_path / "m.safetensors", task="ivf", residual="vis")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    state["decoder.reduce_channel.weight"] = torch.zeros(8, 15, 1, 1)
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError,
                       match=r"decoder.reduce_channel.weight: file \(8, 15, 1, 1\) vs model \(8, 16, 1, 1\)"):
        load_weights(path)


def test_foreign_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="without cddfuse metadata"):
        load_weights(path)


def test_save_validates_arguments(tmp_path):
    model = CDDFuse(CDDFuseConfig(**TINY_SIZES))
    with pytest.raises(ValueError, match="task"):
        save_weights(model, tmp_path / "x.safetensors", task="rgb", residual="vis")
    with pytest.raises(ValueError, match="residual"):
        save_weights(model, tmp_path / "x.safetensors", task="ivf", residual="ir")
    assert not (tmp_path / "x.safetensors").exists()


def test_metadata_is_readable_json(tmp_path):
    from safetensors import safe_open

    path = save_weights(make_random_model(0, **TINY_SIZES), tmp_path / "m.safetensors", task="ivf",
                        residual="vis", provenance={"hardware": "cpu"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "cddfuse" and meta["task"] == "ivf" and meta["residual"] == "vis"
    assert json.loads(meta["config"])["dim"] == TINY_SIZES["dim"]
    assert json.loads(meta["provenance"]) == {"hardware": "cpu"}


def test_medical_model_trained_with_vis_keeps_vis(tmp_path):
    path = save_weights(make_random_model(0, **TINY_SIZES), tmp_path / "m.safetensors", task="mif", residual="vis")
    _, info = load_weights(path)
    assert resolve_residual("auto", "mif", info) == "vis"
