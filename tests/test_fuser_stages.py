"""The public fusion pipeline: FusionOptions (frozen, checked, replaced per call), the stages composed by hand
against Fuser (the same bytes), the alignment mask carried by the stage result (images and video), and the
package-wide rules the stages rely on (one size grammar, one rule for float arrays, typed errors)."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from cddfuse import data
from cddfuse.cli.main import main
from cddfuse.errors import InputTooLarge, SizeMismatch, UsageError
from cddfuse.fusion import Fuser, FusionOptions
from cddfuse.fusion.stages import align, colour, normalise, prepare
from cddfuse.io.image import check_array, read_image, write_image
from cddfuse.options import parse_size


# ------------------------------------------------------------------------------------------- FusionOptions
def test_fusion_options_are_frozen_and_checked_on_replace():
    options = FusionOptions(color="gray", max_memory="1G", tile=96)
    assert options.max_memory == 2**30 and options.tile == 96
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.color = "auto"  # type: ignore[misc]
    changed = dataclasses.replace(options, normalize="none")
    assert (changed.normalize, changed.color, changed.max_memory) == ("none", "gray", 2**30)
    assert options.normalize == "minmax" and changed != options and options.replace(normalize="none") == changed
    for bad in ({"normalize": "stretch"}, {"tile": 2}, {"max_memory": "100M"}, {"max_pixels": 0},
                {"align": "rigid"}, {"align_min_confidence": 1.5}, {"precision": "fp16"}, {"chroma": "hsv"}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            dataclasses.replace(options, **bad)


def test_fuser_takes_options_or_keywords_and_with_options_shares_the_network(tiny_weights):
    by_keywords = Fuser(weights=tiny_weights, device="cpu", color="gray", normalize="none", tile=64)
    by_options = Fuser(weights=tiny_weights, device="cpu", options=FusionOptions(color="gray", normalize="none",
                                                                                  tile=64))
    assert by_keywords.options == by_options.options
    assert (by_keywords.color, by_keywords.normalize, by_keywords.tile) == ("gray", "none", 64)
    with pytest.raises(UsageError, match="not both.*color"):
        Fuser(method="max", color="gray", options=FusionOptions())
    with pytest.raises(AttributeError):
        by_keywords.color = "auto"  # type: ignore[misc]  # options change with with_options, never in place
    colour_job = by_keywords.with_options(color="auto", chroma="ycbcr")
    assert colour_job.model is by_keywords.model and colour_job.info is by_keywords.info
    assert (colour_job.color, colour_job.chroma, colour_job.tile) == ("auto", "ycbcr", 64)
    assert by_keywords.color == "gray"  # the original is unchanged
    with pytest.raises(UsageError, match="tf32"):
        by_keywords.with_options(precision="tf32")  # checked against the device (CPU here)
    lite_rule = Fuser(method="max").with_options(FusionOptions(normalize="none"))
    assert lite_rule.method == "max" and lite_rule.normalize == "none"

    class Held(Fuser):
        pass

    assert type(Held(method="max").with_options(color="gray")) is Held


# ------------------------------------------------------------------------------------------- the stages
@pytest.mark.parametrize("sample", ["roadscene", "mri-pet"])
def test_stages_composed_by_hand_give_the_same_bytes_as_fuser(tiny_weights, sample):
    ir, vis = data.paths(sample)
    fuser = Fuser(weights=tiny_weights, task=data.task(sample), device="cpu")
    pair = align(prepare(ir, vis, fuser.options), fuser.options)
    assert pair.uncovered is None and pair.alignment is None
    raw = fuser.fuse_luminance(pair.a.y, pair.b.y)
    done = normalise(raw, pair, fuser.options)
    image = colour(done.luminance, pair, fuser.options, fuser.task)
    expected = fuser.fuse_detailed(ir, vis)
    assert image.image.dtype == np.float32 and image.image.ndim == 3  # a colour source: RGB out
    assert image.image.tobytes() == expected.image.tobytes()
    assert done.luminance.tobytes() == expected.luminance.tobytes() and image.chroma_from == expected.chroma_from
    assert raw.tobytes() == expected.raw.tobytes()


def test_prepare_refuses_different_sizes_with_a_typed_error(tmp_path):
    a, b = np.zeros((10, 12), np.uint8), np.zeros((10, 14), np.uint8)
    with pytest.raises(SizeMismatch) as caught:
        prepare(a, b, FusionOptions())
    assert (caught.value.size_a, caught.value.size_b) == ("12x10", "14x10")
    pa, pb = write_image(tmp_path / "a.png", a), write_image(tmp_path / "b.png", b)
    with pytest.raises(SizeMismatch, match="12x10 vs 14x10"):  # from the headers, before decoding
        prepare(pa, pb, FusionOptions())
    assert prepare(a, b, FusionOptions(), resize=True).b.shape == (10, 12)
    with pytest.raises(InputTooLarge) as large:
        prepare(pa, pb, FusionOptions(max_pixels=100))
    assert (large.value.size, large.value.limit, large.value.path) == ("12x10", 100, str(pa))


def _shifted_roadscene() -> tuple[np.ndarray, np.ndarray]:
    """RoadScene's infrared image starting 12 pixels into the visible one (so 12 columns are not covered)."""
    ir, vis = (read_image(p, keep_integer=True) for p in data.paths("roadscene"))
    return np.ascontiguousarray(ir[:, 12:]), vis


@pytest.mark.slow
def test_the_alignment_mask_travels_in_the_stage_result():
    a, b = _shifted_roadscene()
    fuser = Fuser(method="mean", align="translation")
    pair = fuser.prepare(a, b)
    assert pair.alignment is not None and pair.alignment.accepted
    assert pair.uncovered is not None and pair.uncovered.shape == b.shape[:2] and pair.uncovered[:, :8].all()
    result = fuser.fuse_detailed(a, b)
    assert result.alignment is not None and fuser.last_alignment is result.alignment
    np.testing.assert_array_equal(result.luminance[pair.uncovered], pair.b.y[pair.uncovered])
    assert not [name for name in vars(fuser) if "uncovered" in name]  # no side channel on the Fuser
    cancel = threading.Event()
    cancel.set()  # an error between the stages leaves nothing behind: the next pair is as from a fresh Fuser
    net = Fuser(task="ivf", device="cpu", align="translation")
    from cddfuse.engine import FusionCancelled

    with pytest.raises(FusionCancelled):
        net.fuse(a, b, cancel=cancel)
    assert net.fuse(a, b).tobytes() == Fuser(task="ivf", device="cpu", align="translation").fuse(a, b).tobytes()


# ------------------------------------------------------------------------------------------- video with align
@pytest.mark.slow
def test_video_with_align_fuses_each_frame_as_an_aligned_pair(tmp_path, capsys):
    pytest.importorskip("av")
    from cddfuse.fusion.video import fuse_sequences

    a, b = _shifted_roadscene()
    frames_a, frames_b = [a, np.ascontiguousarray(a[:, ::-1])], [b, np.ascontiguousarray(b[:, ::-1])]
    fuser = Fuser(method="mean", align="translation")
    written: list[np.ndarray] = []
    stats = fuse_sequences(fuser, iter(frames_a), iter(frames_b), written.append, normalize="frame")
    assert stats.frames == 2
    for fa, fb, out in zip(frames_a, frames_b, written):
        assert out.shape == fb.shape  # in the second source's frame
        np.testing.assert_array_equal(out, fuser.fuse(fa, fb))  # the image pipeline, frame by frame
    for side, frames in (("ir", frames_a), ("vi", frames_b)):
        (tmp_path / side).mkdir()
        for i, frame in enumerate(frames):
            write_image(tmp_path / side / f"{i:03d}.png", frame.astype(np.float32) / 255)
    common = ["fuse", str(tmp_path / "ir"), str(tmp_path / "vi"), "--method", "mean", "--temporal", "ema", "-q"]
    assert main([*common, "-o", str(tmp_path / "out"), "--align", "translation"]) == 0
    assert [read_image(p).shape for p in sorted((tmp_path / "out").iterdir())] == [b.shape, b.shape]
    capsys.readouterr()
    assert main([*common, "-o", str(tmp_path / "out2"), "--align", "translation", "--resize"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resize and --align exclude each other" in err[0]
    assert not (tmp_path / "out2").exists()
    assert main([*common, "-o", str(tmp_path / "out3")]) == 1  # sizes differ, neither aligned nor resized
    assert "differ in size" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- shared rules
def test_one_size_grammar():
    assert parse_size("3G") == 3 * 2**30 and parse_size("512m") == parse_size("512MB") == parse_size("512MiB")
    assert parse_size(" 1.5 K ") == 1536 and parse_size("10") == 10 and parse_size(123) == 123
    for bad in ("lots", "-1", "1e3", "", "0", "0.5", True, "9" * 400 + "G"):
        with pytest.raises(ValueError, match="as a size|at least one byte|larger than any"):
            parse_size(bad)  # type: ignore[arg-type]
    from cddfuse.engine.memory import parse_memory
    from cddfuse.serve.app import parse_size as serve_parse_size

    assert serve_parse_size is parse_size and parse_memory("2T") == parse_size("2T") and parse_memory(None) is None


def test_one_rule_for_float_arrays():
    from cddfuse.align import estimate

    good = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    scaled = good * 255  # a 0..255 float image: refused everywhere, never clipped
    assert check_array(good, "a").dtype == np.float32
    for call in (lambda: check_array(scaled, "a"), lambda: Fuser(method="max").fuse(scaled, good),
                 lambda: estimate(scaled, good, "translation")):
        with pytest.raises(UsageError, match=r"float images must be in \[0, 1\]"):
            call()


@pytest.mark.parametrize("key, value", [("task", "rgb"), ("normalize", "stretch"), ("residual", "ir")])
def test_weights_info_holds_only_known_choices(tiny_weights, tmp_path, key, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cddfuse.errors import CheckpointError
    from cddfuse.models.weights import load_weights

    _, info = load_weights(tiny_weights)
    assert (info.task, info.residual, info.normalize) == ("ivf", "vis", "minmax")
    with safe_open(str(tiny_weights), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(tmp_path / "w.safetensors"), metadata={**meta, key: value})
    with pytest.raises(CheckpointError, match=f"bad .*{value!r} in metadata"):
        load_weights(tmp_path / "w.safetensors")
