"""Training data: luminance reading, the paper's patches, bad data, caches, random crops, sampler, config."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cddfuse.cli.main import main as cli
from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.train import config as C
from cddfuse.train import data as D
from cddfuse.train import datasets as DS

from .helpers import link_pairs

REPO = Path(__file__).resolve().parents[1]



def _textured(h, w, seed):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) * 200 + 30).astype(np.uint8)


def _write_pairs(root: Path, stems, size=(80, 96), names=("thermal", "rgb")):
    da, db = root / names[0], root / names[1]
    da.mkdir(parents=True, exist_ok=True)
    db.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(stems):
        h, w = size if not isinstance(size, dict) else size[s]
        cv2.imwrite(str(da / f"{s}.png"), _textured(h, w, i))
        cv2.imwrite(str(db / f"{s}.jpg"), np.dstack([_textured(h, w, 100 + i)] * 3))
    return da, db


# ------------------------------------------------------------------------------------ reading
def test_read_luminance_gray_color_16bit_alpha(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 100, 200  # B, G, R
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    y = D.read_luminance(tmp_path / "c.png")
    assert y.dtype == np.float32 and y.shape == (4, 5)
    assert np.allclose(y, (0.299 * 200 + 0.587 * 100 + 0.114 * 10) / 255, atol=1e-6)
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((3, 3), 65535, np.uint16))
    assert np.allclose(D.read_luminance(tmp_path / "g16.png"), 1.0)
    bgra = np.dstack([bgr, np.full((4, 5), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert np.allclose(D.read_luminance(tmp_path / "a.png"), y)
    cv2.imwrite(str(tmp_path / "g.png"), np.full((2, 2), 51, np.uint8))
    assert np.allclose(D.read_luminance(tmp_path / "g.png"), 0.2)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(CDDFuseError, match="not a readable image"):
        D.read_luminance(tmp_path / "bad.png")


# ------------------------------------------------------------------------------------ patches
def test_patch_grid_and_contrast_rule():
    assert D.patch_origins(480, 640, 128, 200) == [(y, x) for y in (0, 200) for x in (0, 200, 400)]
    assert D.patch_origins(128, 128, 128, 200) == [(0, 0)]
    assert D.patch_origins(100, 300, 128, 200) == []
    assert D.is_low_contrast(np.full((8, 8), 0.5))
    assert D.is_low_contrast(np.zeros((8, 8)))  # p90 = 0 counts as low contrast
    ramp = np.linspace(0, 1, 100).reshape(10, 10)
    assert not D.is_low_contrast(ramp)
    # (p90 - p10) / p90 just below / above 0.1
    lo = np.concatenate([np.full(50, 0.95), np.full(50, 1.0)])
    p10, p90 = np.percentile(lo, [10, 90])
    assert (p90 - p10) / p90 < 0.1 and D.is_low_contrast(lo)
    assert not D.is_low_contrast(lo, threshold=0.04)


def test_extract_patches_drops_low_contrast(tmp_path):
    da, db = _write_pairs(tmp_path, ["p0", "p1"], size=(80, 96))
    flat = np.full((80, 96), 128, np.uint8)  # flat left half in A for p1 -> its left patch is dropped
    img = cv2.imread(str(da / "p1.png"), cv2.IMREAD_UNCHANGED)
    img[:, :40] = flat[:, :40]
    cv2.imwrite(str(da / "p1.png"), img)
    pairs = D.find_pairs(da, db)
    ps = D.extract_patch_pairs(pairs, size=32, stride=50)
    # origins per image: H=80 -> y 0 only (80-32=48 < 50); W=96 -> x 0 and 50
    assert ps.info["pairs"] == 2 and ps.info["dropped_low_contrast"] == 1
    assert ps.a.shape == (3, 1, 32, 32) and ps.b.shape == ps.a.shape and ps.a.dtype == np.float32
    assert [tuple(o) for o in ps.origin] == [(0, 0, 0), (0, 0, 50), (1, 0, 50)]
    a0 = D.read_luminance(da / "p0.png")
    assert np.array_equal(ps.a[1, 0], a0[0:32, 50:82])


# ----------------------------------------------------------------------------------- bad data
def test_empty_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(CDDFuseError, match="no images"):
        D.find_pairs(tmp_path / "a", tmp_path / "b")
    assert cli(["prepare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c.h5")]) == 1


def test_missing_folder(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        D.find_pairs(tmp_path / "nope", tmp_path)


def test_unmatched_names_are_reported(tmp_path, capsys):
    da, db = _write_pairs(tmp_path, ["x1", "x2", "x3"])
    (da / "x3.png").rename(da / "lonely.png")
    with pytest.raises(CDDFuseError) as e:
        D.find_pairs(da, db)
    msg = str(e.value)
    assert "lonely" in msg and "x3" in msg and "skip" in msg
    warnings = []
    pairs = D.find_pairs(da, db, unmatched="skip", warn=warnings.append)
    assert [p[0] for p in pairs] == ["x1", "x2"] and "lonely" in warnings[0]
    out = tmp_path / "c.npz"
    assert cli(["prepare", str(da), str(db), "-o", str(out), "--patch-size", "32"]) == 1
    assert "lonely" in capsys.readouterr().err
    assert cli(["prepare", str(da), str(db), "-o", str(out), "--patch-size", "32", "--skip-unmatched", "-q"]) == 0
    assert out.exists()


def test_no_common_names(tmp_path):
    da, db = _write_pairs(tmp_path, ["a1"])
    (db / "a1.jpg").rename(db / "b1.jpg")
    with pytest.raises(CDDFuseError, match="no image .* has a partner"):
        D.find_pairs(da, db)


def test_images_smaller_than_the_patch(tmp_path, capsys):
    da, db = _write_pairs(tmp_path, ["big", "tiny"], size={"big": (64, 64), "tiny": (20, 30)})
    pairs = D.find_pairs(da, db)
    with pytest.raises(CDDFuseError) as e:
        D.extract_patch_pairs(pairs, size=32, stride=32)
    msg = str(e.value)
    assert "tiny (30x20)" in msg and "--patch-size" in msg and "--skip-small" in msg
    ps = D.extract_patch_pairs(pairs, size=32, stride=32, small_images="skip")
    assert ps.info["skipped_small"] == 1 and ps.info["pairs"] == 1
    with pytest.raises(CDDFuseError, match="smaller than the 32x32 crop"):
        D.load_image_pairs(pairs, crop_size=32)
    # all images too small: an error even with skip
    with pytest.raises(CDDFuseError, match="2 of 2"):
        D.extract_patch_pairs(pairs, size=100, stride=100, small_images="skip")
    assert cli(["prepare", str(da), str(db), "-o", str(tmp_path / "c.h5"), "--patch-size", "32", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tiny" in err  # one line, no traceback


def test_pair_size_mismatch(tmp_path):
    da, db = _write_pairs(tmp_path, ["m"], size=(40, 40))
    cv2.imwrite(str(db / "m.jpg"), _textured(41, 40, 0))
    with pytest.raises(CDDFuseError, match="differ in size"):
        D.extract_patch_pairs(D.find_pairs(da, db), size=32, stride=32)


# ------------------------------------------------------------------------------------- caches
@pytest.mark.parametrize("ext", [".h5", ".npz"])
def test_cache_roundtrip(tmp_path, ext):
    da, db = _write_pairs(tmp_path, ["c0", "c1"], size=(70, 70))
    pairs = D.find_pairs(da, db)
    ps = D.extract_patch_pairs(pairs, size=32, stride=30)
    desc = D.describe(ps, {"a": str(da), "b": str(db)})
    D.write_cache(tmp_path / f"p{ext}", ps, desc)
    back, meta = D.read_cache(tmp_path / f"p{ext}")
    assert np.array_equal(back.a, ps.a) and np.array_equal(back.b, ps.b) and np.array_equal(back.origin, ps.origin)
    assert back.stems == ["c0", "c1"] and meta["samples"] == len(ps.a) and meta["stems_sha1"] == desc["stems_sha1"]
    ims = D.load_image_pairs(pairs, crop_size=32)
    D.write_cache(tmp_path / f"i{ext}", ims, D.describe(ims, {}))
    back, meta = D.read_cache(tmp_path / f"i{ext}")
    assert meta["mode"] == "random_crop" and len(back.a) == 2 and np.array_equal(back.b[1], ims.b[1])
    assert not [p for p in tmp_path.iterdir() if "cddfuse-tmp" in p.name]


def test_cache_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        D.read_cache(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(CDDFuseError, match="not a readable"):
        D.read_cache(tmp_path / "junk.h5")


def test_prepare_cli_on_real_pairs(tmp_path, capsys):
    a, b = link_pairs(tmp_path, 0, 3, "Harvard/MRI_CT", ("CT", "MRI"))
    out = tmp_path / "ct.h5"
    assert cli(["prepare", str(a), str(b), "-o", str(out), "--patch-size", "64", "--stride", "64", "-q"]) == 0
    assert "patches of 64x64 from 3 pairs" in capsys.readouterr().out
    data, meta = D.read_cache(out)
    assert meta["pairs"] == 3 and 0 < meta["samples"] <= 48 and meta["samples"] + meta["dropped_low_contrast"] == 48
    assert float(data.a.min()) >= 0 and float(data.a.max()) <= 1
    assert cli(["prepare", str(a), str(b), "-o", str(out)]) == 2  # exists, no --overwrite


# ------------------------------------------------------------------------ datasets and sampler
def test_random_crop_dataset_is_deterministic(tmp_path):
    da, db = _write_pairs(tmp_path, ["r0", "r1"], size=(60, 70))
    ims = D.load_image_pairs(D.find_pairs(da, db), crop_size=24)
    ds = DS.RandomCropDataset(ims, crop=24, crops_per_image=3, flips=True, seed=5)
    assert len(ds) == 6
    ds.set_epoch(2)
    first = [ds[i] for i in range(6)]
    again = DS.RandomCropDataset(ims, crop=24, crops_per_image=3, flips=True, seed=5)
    again.set_epoch(2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(first, [again[i] for i in range(6)]))
    ds.set_epoch(3)
    assert not all(torch.equal(x[0], ds[i][0]) for i, x in enumerate(first))
    a, b = first[4]
    assert a.shape == (1, 24, 24) and b.shape == (1, 24, 24)


def test_sampler_ranks_and_resume():
    ds = list(range(21))
    one = DS.ResumableDistributedSampler(ds, 1, 0, seed=3)
    one.set_position(4)
    order = list(one)
    assert sorted(order) == ds
    g = torch.Generator()
    g.manual_seed(3 + 4)
    assert order == torch.randperm(21, generator=g).tolist()
    r0 = DS.ResumableDistributedSampler(ds, 2, 0, seed=3)
    r1 = DS.ResumableDistributedSampler(ds, 2, 1, seed=3)
    r0.set_position(4)
    r1.set_position(4)
    l0, l1 = list(r0), list(r1)
    for s in range(2):  # global batch 8 = 2 ranks x 4
        assert sorted(l0[4 * s:4 * s + 4] + l1[4 * s:4 * s + 4]) == sorted(order[8 * s:8 * s + 8])
    one.set_position(4, start=8)
    assert list(one) == order[8:] and len(one) == 13


# ------------------------------------------------------------------------------------- config
def test_config_unknown_keys_and_values(tmp_path):
    cfg = C.default_config()
    with pytest.raises(UsageError, match="did you mean optim.lr"):
        C.apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        C.apply_overrides(cfg, ["optim.lr"])
    C.apply_overrides(cfg, ["optim.lr=2e-4", "data.a=x", "data.b=y", "phase1.parts=[encoder]"])
    assert cfg["optim"]["lr"] == 2e-4 and cfg["phase1"]["parts"] == ["encoder"]
    C.validate(cfg)
    bad = dict(C.default_config(), task="x")
    with pytest.raises(UsageError, match="task must be one of"):
        C.validate(bad)
    cfg["train"]["batch_size"] = 0
    with pytest.raises(UsageError, match="train.batch_size must be >= 1"):
        C.validate(cfg)
    cfg = C.default_config()
    with pytest.raises(UsageError, match="no training data"):
        C.validate(cfg)
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lr: 1e-3\n  momentum: 0.9\n")
    with pytest.raises(UsageError, match="optim.momentum"):
        C.load_config(y)
    y.write_text("optim:\n  lr: 1e-3\n")
    assert C.load_config(y)["optim"]["lr"] == 1e-3


@pytest.mark.parametrize("name", ["paper_msrs.yaml", "medical.yaml", "small_cpu.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = C.load_config(REPO / "configs" / name)
    if cfg["data"]["cache"] is None:
        cfg["data"]["a"], cfg["data"]["b"] = "a", "b"
    C.validate(cfg)
    if name == "paper_msrs.yaml":  # the paper's recipe, exactly
        assert cfg["train"]["batch_size"] == 8 and cfg["phase1"]["epochs"] == 40 and cfg["phase2"]["epochs"] == 80
        assert cfg["optim"]["lr"] == 1e-4 and cfg["optim"]["grad_clip"] == 0.01 and cfg["optim"]["weight_decay"] == 0
        assert cfg["sched"] == {"step_epochs": 20, "gamma": 0.5, "min_lr": 1e-6}
        assert cfg["data"]["patch_size"] == 128 and cfg["data"]["stride"] == 200
        assert cfg["phase2"]["residual"] == "vis" and cfg["model"]["dim"] == 64


def test_parse_duration():
    assert C.parse_duration("90") == 90 and C.parse_duration("2h30m") == 9000 and C.parse_duration("1.5h") == 5400
    with pytest.raises(UsageError):
        C.parse_duration("soon")


def test_random_crops_avoid_blank_regions():
    """Crops that are low-contrast in either source are drawn again (medical images: black background)."""
    h, w = 64, 64
    a = np.zeros((h, w), np.float32)
    b = np.zeros((h, w), np.float32)
    rng = np.random.default_rng(0)
    a[:16, :16] = rng.random((16, 16))  # texture only in the top-left quarter of the first source
    b[:] = rng.random((h, w))
    ims = D.ImageSet([a], [b], ["p"], {})
    plain = DS.RandomCropDataset(ims, crop=12, crops_per_image=40, flips=False, seed=1)
    checked = DS.RandomCropDataset(ims, crop=12, crops_per_image=40, flips=False, seed=1, contrast_threshold=0.1)
    blank = [D.is_low_contrast(plain[i][0].numpy()) for i in range(40)]
    assert sum(blank) > 20  # the plain crops are mostly blank ...
    low = [D.is_low_contrast(checked[i][0].numpy()) for i in range(40)]
    assert sum(low) < sum(blank) // 2  # ... the checked ones mostly not
