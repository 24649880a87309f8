"""``cddfuse eval`` and ``cddfuse bench`` on real test pairs."""
from __future__ import annotations

import csv
import io
import json
import shutil

import cv2
import numpy as np
import pytest

from cddfuse.bench.paper import detect_testset
from cddfuse.cli.main import main
from cddfuse.metrics import compute_metrics, read_gray
from cddfuse.metrics.paper import BASELINE_ROWS, COLUMNS

from .helpers import shared_path

ALL = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE"]



def _reference_case(i: int) -> dict:
    return json.loads(shared_path("reference", "metrics_set1.json").read_text())[i]


@pytest.fixture
def mri_ct_folders(tmp_path):
    """Three MRI_CT pairs copied to A/ (CT) and B/ (MRI), and F/ with their max-rule fusion as PNG."""
    src = shared_path("data", "test", "MRI_CT")
    dirs = {k: tmp_path / k for k in ("A", "B", "F")}
    for d in dirs.values():
        d.mkdir()
    for stem in ("11", "12", "13"):
        shutil.copy(src / "CT" / f"{stem}.png", dirs["A"])
        shutil.copy(src / "MRI" / f"{stem}.png", dirs["B"])
        fused = np.maximum(read_gray(src / "CT" / f"{stem}.png"), read_gray(src / "MRI" / f"{stem}.png"))
        assert cv2.imwrite(str(dirs["F"] / f"{stem}.png"), fused.astype(np.uint8))
    return dirs


def _eval(dirs, *extra: str) -> list:
    return ["eval", str(dirs["A"]), str(dirs["B"]), str(dirs["F"]), *extra]


def test_eval_json_matches_the_authors_values(mri_ct_folders, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(_eval(mri_ct_folders, "-o", str(out))) == 0  # format from the suffix
    res = json.loads(out.read_text())
    assert res["metrics"] == ALL and res["count"] == 3 and list(res["images"]) == ["11", "12", "13"]
    # pair 11 with the max rule is reference case 3: the authors' code gave these numbers
    ref = _reference_case(3)
    assert ref["a"] == "MRI_CT/CT/11.png" and ref["rule"] == "max"
    for name, want in ref["metrics"].items():
        assert res["images"]["11"][name] == pytest.approx(want, rel=1e-6), name
    for name in ALL:
        mean = np.mean([res["images"][s][name] for s in ("11", "12", "13")])
        assert res["mean"][name] == pytest.approx(mean, rel=1e-12)
    assert res["higher_is_better"]["MSE"] is False
    assert "wrote" in capsys.readouterr().err


def test_eval_table_md_csv(mri_ct_folders, capsys):
    assert main(_eval(mri_ct_folders, "--metrics", "paper")) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image"] + list(COLUMNS)
    assert table[-1].startswith("mean (3)") and len(table) == 6  # header, 3 images, rule, mean

    assert main(_eval(mri_ct_folders, "--metrics", "en,vif", "--format", "md")) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0] == "| image | EN | VIF |" and md[-1].startswith("| **mean** |")

    assert main(_eval(mri_ct_folders, "--metrics", "SSIM,MSE", "--format", "csv")) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["image", "SSIM", "MSE"] and [r[0] for r in rows[1:]] == ["11", "12", "13", "mean"]
    want = _reference_case(3)["metrics"]
    assert float(rows[1][1]) == pytest.approx(want["SSIM"], rel=1e-6)
    assert float(rows[1][2]) == pytest.approx(want["MSE"], rel=1e-6)


def test_eval_workers_give_the_same_numbers(mri_ct_folders, capsys):
    assert main(_eval(mri_ct_folders, "--metrics", "MI,Qabf", "--format", "csv")) == 0
    one = capsys.readouterr().out
    assert main(_eval(mri_ct_folders, "--metrics", "MI,Qabf", "--format", "csv", "--workers", "2")) == 0
    assert capsys.readouterr().out == one


def test_eval_missing_fused_image_lists_names(mri_ct_folders, capsys):
    (mri_ct_folders["F"] / "12.png").unlink()
    (mri_ct_folders["F"] / "13.png").unlink()
    assert main(_eval(mri_ct_folders)) == 1
    err = capsys.readouterr().err
    assert "2 of 3 fused images missing" in err and "12, 13" in err and "Traceback" not in err


def test_eval_unpaired_sources_and_extra_fused(mri_ct_folders, capsys):
    shutil.copy(mri_ct_folders["F"] / "11.png", mri_ct_folders["F"] / "99.png")
    assert main(_eval(mri_ct_folders, "--metrics", "EN")) == 0
    assert "99" in capsys.readouterr().err  # extra fused image: noted, not evaluated
    (mri_ct_folders["B"] / "13.png").unlink()
    assert main(_eval(mri_ct_folders)) == 1
    err = capsys.readouterr().err
    assert "have no partner" in err and err.rstrip().endswith(": 13")


def test_eval_usage_errors(mri_ct_folders, capsys):
    assert main(_eval(mri_ct_folders, "--metrics", "EN,XYZ")) == 2
    err = capsys.readouterr().err
    assert "'XYZ'" in err and "Qabf" in err
    assert main(_eval(mri_ct_folders, "--workers", "0")) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(_eval(mri_ct_folders, "--format", "xml"))
    assert e.value.code == 2


def test_eval_size_mismatch(mri_ct_folders, capsys):
    small = np.zeros((100, 100), np.uint8)
    cv2.imwrite(str(mri_ct_folders["F"] / "12.png"), small)
    assert main(_eval(mri_ct_folders)) == 1
    assert "12: the images differ in size" in capsys.readouterr().err


# ---------------------------------------------------------------- bench
@pytest.mark.parametrize(
    "name, task, a, b",
    [("TNO", "ivf", "ir", "vi"), ("RoadScene", "ivf", "ir", "vi"), ("MRI_CT", "mif", "CT", "MRI"),
     ("MRI_PET", "mif", "PET", "MRI"), ("MRI_SPECT", "mif", "SPECT", "MRI")],
)
def test_detect_standard_sets(name, task, a, b):
    ts = detect_testset(shared_path("data", "test", name))
    assert (ts.task, ts.dir_a.name, ts.dir_b.name, ts.paper_name) == (task, a, b, name)


@pytest.mark.parametrize("method", ["mean", "max"])
def test_bench_reproduces_published_baselines_mri_ct(method, capsys):
    """End to end: the rule, the authors' rounding, all eight metrics, the mean over the 21 pairs."""
    testset = shared_path("data", "test", "MRI_CT")
    assert main(["bench", str(testset), "--method", method, "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["pairs"] == 21 and res["task"] == "mif" and res["normalize"] == "none"
    published = next(r for r in BASELINE_ROWS if r.dataset == "MRI_CT" and r.method == method)
    for name in COLUMNS:
        assert abs(res["mean"][name] - published.values[name]) <= 0.005 + 1e-9, name
    labels = [r["label"] for r in res["references"]]
    assert labels == ["CDDFuse paper (MIF weights)", "mean rule (authors' code)", "max rule (authors' code)"]


def test_bench_table_limit_and_out_dir(tmp_path, capsys):
    testset = shared_path("data", "test", "MRI_PET")
    out_dir = tmp_path / "fused"
    assert main(["bench", str(testset), "--method", "mean", "--limit", "2", "--task", "ivf",
                 "--out-dir", str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "2 pairs of 42" in text and "task IVF" in text and "normalisation none" in text
    assert "CDDFuse paper (IVF weights)" in text and "81.69" in text  # the IVF-weights row on MRI_PET
    assert sorted(p.name for p in out_dir.iterdir()) == ["11.png", "12.png"]
    # the written PNG is what was evaluated: reference case 4 is MRI_PET 12 with the mean rule
    ref = _reference_case(4)
    a, b = read_gray(testset / "PET" / "12.png"), read_gray(testset / "MRI" / "12.png")
    f = read_gray(out_dir / "12.png")
    np.testing.assert_array_equal(f, np.round((a + b) / 2))
    got = compute_metrics(a, b, f)
    for name, want in ref["metrics"].items():
        assert got[name] == pytest.approx(want, rel=1e-6), name


def test_bench_errors(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["bench", str(tmp_path), "--method", "max"]) == 1
    err = capsys.readouterr().err
    assert "expected ir/ and vi/" in err and "found x" in err
    testset = shared_path("data", "test", "MRI_CT")
    assert main(["bench", str(testset), "--method", "max", "--weights", "w.pth"]) == 2
    assert main(["bench", str(testset), "--method", "max", "--limit", "0"]) == 2


@pytest.mark.slow
def test_bench_network_with_authors_checkpoint(tmp_path, capsys):
    """The network path on a 64x64 crop of MRI_CT pair 11, with the authors'-format checkpoint (random weights)."""
    pytest.importorskip("cddfuse.fusion")
    weights = shared_path("reference", "official_format_seed1.pth")
    src = shared_path("data", "test", "MRI_CT")
    testset = tmp_path / "MRI_CT"
    for mod in ("CT", "MRI"):
        (testset / mod).mkdir(parents=True)
        img = cv2.imread(str(src / mod / "11.png"))
        assert cv2.imwrite(str(testset / mod / "11.png"), img[96:160, 96:160])
    out_dir = tmp_path / "fused"
    # an unknown .pth name counts as IVF weights: IVF paper row, residual = sum of the medical sources
    assert main(["bench", str(testset), "--weights", str(weights), "--format", "json", "--out-dir", str(out_dir)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["method"], res["task"], res["residual"], res["normalize"]) == ("cddfuse", "ivf", "sum", "minmax")
    assert res["references"][0]["label"] == "CDDFuse paper (IVF weights)"
    f = read_gray(out_dir / "11.png")
    assert f.shape == (64, 64) and f.min() == 0 and f.max() == 255  # min-max normalised before saving
    a, b = read_gray(testset / "CT" / "11.png"), read_gray(testset / "MRI" / "11.png")
    assert res["images"]["11"] == pytest.approx(compute_metrics(a, b, f, COLUMNS), rel=1e-12)
    # --task mif: these are MIF weights, decoded without residual, compared with the MIF row
    assert main(["bench", str(testset), "--weights", str(weights), "--task", "mif", "--format", "json"]) == 0
    res2 = json.loads(capsys.readouterr().out)
    assert (res2["task"], res2["residual"]) == ("mif", "none")
    assert res2["references"][0]["label"] == "CDDFuse paper (MIF weights)"
    assert res2["mean"]["EN"] != res["mean"]["EN"]


def test_cli_choices_match_the_library():
    from cddfuse import options
    from cddfuse.bench import paper
    from cddfuse.cli import bench as cli_bench
    from cddfuse.cli import eval as cli_eval
    from cddfuse.metrics import report

    assert cli_eval.FORMATS is report.FORMATS is options.REPORT_FORMATS  # one source (cddfuse.options)
    assert (paper.METHODS, paper.TASKS, tuple(paper.NORMALIZE)) == (
        cli_bench.METHODS, cli_bench.TASKS, cli_bench.BENCH_NORMALIZE_MODES)
