"""Folder fusion as library code (:func:`cddfuse.fusion.fuse_folders`): report, resume, failures, laziness."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.fusion import FolderReport, Fuser, fuse_folders
from cddfuse.io.image import read_image, write_image


def _pairs(root: Path, names, size=(12, 10)) -> tuple:
    rng = np.random.default_rng(0)
    for name in names:
        write_image(root / "a" / f"{name}.png", rng.random(size))
        write_image(root / "b" / f"{name}.png", rng.random(size))
    return root / "a", root / "b"


def test_fuses_every_pair_and_reports_by_name(tmp_path):
    a, b = _pairs(tmp_path, ["01", "02", "03"])
    write_image(a / "lonely.png", np.zeros((12, 10)))
    lines = []
    report = fuse_folders(Fuser(method="max"), a, b, tmp_path / "out", log=lines.append)
    assert isinstance(report, FolderReport) and report.ok
    assert report.done == ["01", "02", "03"] and report.skipped == [] and report.only_a == ["lonely"]
    assert report.summary() == f"3 fused, 0 already done (skipped), 0 failed, 1 unmatched -> {tmp_path / 'out'}"
    assert lines == [f"warning: 1 image(s) in {a} have no partner in {b}: lonely"]
    for stem in report.done:  # max rule on 8-bit sources, min-max normalised: a known answer
        fa, fb = read_image(a / f"{stem}.png"), read_image(b / f"{stem}.png")
        expected = np.maximum(fa, fb)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        np.testing.assert_allclose(read_image(tmp_path / "out" / f"{stem}.png"), expected, atol=0.5 / 255 + 1e-6)


def test_rerun_skips_done_outputs_and_never_builds_a_model(tmp_path):
    a, b = _pairs(tmp_path, ["01", "02"])
    out = tmp_path / "out"
    fuse_folders(Fuser(method="mean"), a, b, out)
    stale = out / ".01.png.x.cddfuse-tmp"  # what a SIGKILLed run of an older version left, hours ago
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))

    def no_model() -> Fuser:
        raise AssertionError("the fuser factory must not be called when every output exists")

    report = fuse_folders(no_model, a, b, out)
    assert report.skipped == ["01", "02"] and report.done == []
    assert not list(out.glob(".*cddfuse-tmp"))  # stale temporary file removed
    assert fuse_folders(lambda: Fuser(method="mean"), a, b, out, overwrite=True).done == ["01", "02"]


def test_a_failing_pair_does_not_stop_the_others(tmp_path):
    a, b = _pairs(tmp_path, ["01", "02", "03"])
    (a / "02.png").write_text("not an image")
    lines = []
    report = fuse_folders(Fuser(method="max"), a, b, tmp_path / "out", log=lines.append)
    assert not report.ok and list(report.failed) == ["02"] and report.done == ["01", "03"]
    assert "not a readable image" in report.failed["02"]
    assert lines == [f"error: 02: {report.failed['02']}"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["01.png", "03.png"]


@pytest.mark.slow
def test_batches_give_the_same_images(tmp_path, tiny_weights, monkeypatch):
    a, b = _pairs(tmp_path, ["01", "02", "03"], size=(9, 13))
    fuser = Fuser(weights=tiny_weights, device="cpu")
    one = fuse_folders(fuser, a, b, tmp_path / "one", ext=".npy", batch_size=1)
    batches = []
    real = fuser.fuse_batch
    monkeypatch.setattr(fuser, "fuse_batch", lambda pairs, **k: batches.append(len(pairs)) or real(pairs, **k))
    three = fuse_folders(fuser, a, b, tmp_path / "three", ext="npy", batch_size=3)
    assert batches == [3]  # one batch of three, not the one-by-one fallback
    assert one.done == three.done == ["01", "02", "03"]
    for stem in one.done:
        np.testing.assert_allclose(np.load(tmp_path / "three" / f"{stem}.npy"),
                                   np.load(tmp_path / "one" / f"{stem}.npy"), atol=1e-5)


def test_bad_arguments(tmp_path):
    a, b = _pairs(tmp_path, ["01"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        fuse_folders(Fuser(method="max"), a, b, tmp_path / "file")
    with pytest.raises(UsageError, match="cannot write .gif"):
        fuse_folders(Fuser(method="max"), a, b, tmp_path / "out", ext=".gif")
    with pytest.raises(UsageError, match="cannot hold 16-bit"):
        fuse_folders(Fuser(method="max"), a, b, tmp_path / "out", ext=".jpg", bit_depth=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CDDFuseError, match="no pairs"):
        fuse_folders(Fuser(method="max"), a, empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing created for a run that could not start
