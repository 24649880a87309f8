"""``cddfuse export``: the ONNX file, its self-check, its failures, and the README's onnxruntime example."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from cddfuse.cli.main import main

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]


def _crop_pair(test_data: Path, folder: Path, size=(72, 96)) -> tuple[Path, Path]:
    """A real RoadScene pair (gray infrared, colour visible), cropped small, as ir.png and vis.png."""
    h, w = size
    ir = cv2.imread(str(test_data / "RoadScene" / "ir" / "FLIR_00977.jpg"), cv2.IMREAD_GRAYSCALE)
    vis = cv2.imread(str(test_data / "RoadScene" / "vi" / "FLIR_00977.jpg"), cv2.IMREAD_COLOR)
    cv2.imwrite(str(folder / "ir.png"), ir[100:100 + h, 200:200 + w])
    cv2.imwrite(str(folder / "vis.png"), vis[100:100 + h, 200:200 + w])
    return folder / "ir.png", folder / "vis.png"


@pytest.mark.slow
def test_export_writes_a_checked_file_that_fuses_like_the_fuser(test_data, tiny_weights, tmp_path, capsys):
    from cddfuse.fusion import Fuser
    from cddfuse.io.color import split_luminance
    from cddfuse.io.image import read_image

    out = tmp_path / "sub" / "tiny.onnx"
    assert main(["export", "-o", str(out), "--weights", str(tiny_weights)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {out} (") and "task ivf, residual vis" in printed[0]
    diffs = [float(x) for x in re.findall(r"max \|diff\| ([0-9.e+-]+)", printed[1])]
    assert "1x1x61x83" in printed[1] and "2x1x96x72" in printed[1] and printed[1].endswith("passed")
    assert len(diffs) == 2 and max(diffs) <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["cddfuse.task"] == "ivf" and meta["cddfuse.residual"] == "vis"
    assert meta["cddfuse.weights"] == tiny_weights.name
    # a real pair at a size never traced: the file gives the Fuser's raw output
    ir, vis = _crop_pair(test_data, tmp_path)
    ya, yb = split_luminance(read_image(ir, keep_integer=True)).y, split_luminance(read_image(vis, keep_integer=True)).y
    got = session.run(["fused"], {"a": ya[None, None], "b": yb[None, None]})[0][0, 0]
    want = Fuser(weights=tiny_weights, device="cpu").fuse_luminance(ya, yb)
    assert got.shape == (72, 96)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not list(out.parent.glob(".*cddfuse-tmp"))


@pytest.mark.slow
def test_residual_is_fixed_in_the_graph(tiny_weights, tmp_path, capsys):
    out = tmp_path / "none.onnx"
    assert main(["export", "-o", str(out), "--weights", str(tiny_weights), "--residual", "none", "-q"]) == 0
    assert capsys.readouterr().out == ""
    from cddfuse.models.weights import load_weights

    model, _ = load_weights(tiny_weights)
    a, b = np.random.default_rng(3).random((2, 1, 1, 20, 28), dtype=np.float32)
    import torch

    with torch.inference_mode():
        none = model(torch.from_numpy(a), torch.from_numpy(b), residual="none").numpy()
        vis = model(torch.from_numpy(a), torch.from_numpy(b), residual="vis").numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]
    np.testing.assert_allclose(got, none, atol=1e-5)
    assert np.abs(got - vis).max() > 1e-3  # the residual matters, so the test above can fail


@pytest.mark.slow
def test_a_failed_check_writes_nothing(tiny_weights, tmp_path, capsys, monkeypatch):
    from cddfuse.engine import onnx as onnx_module

    real = onnx_module.check_onnx

    def broken(path, model, **kw):
        return [onnx_module.OnnxCheck(c.shape, c.max_abs_diff + 0.5) for c in real(path, model, **kw)]

    monkeypatch.setattr(onnx_module, "check_onnx", broken)
    out = tmp_path / "bad.onnx"
    assert main(["export", "-o", str(out), "--weights", str(tiny_weights)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cddfuse export: error: the exported graph does not match")
    assert f"{out} was not written" in err[0]
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.parametrize("args, code, text", [
    (["-o", "model.onx"], 2, "cddfuse export: error: --output model.onx: an ONNX file name must end in .onnx"),
    (["-o", "sub/m.onnx", "--weights", "missing.pth"], 1, "cddfuse export: error: "),
])
def test_usage_and_file_errors_are_one_line(args, code, text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(text) and args[-1] in err[0]
    assert not list(tmp_path.iterdir())  # no file, no temporary file, not even the folder of -o


@pytest.mark.slow
def test_readme_onnxruntime_example_runs_as_written(test_data, tiny_weights, tmp_path, monkeypatch):
    """The documentation's 10-line onnxruntime pipeline (README or docs pages, wherever it is) gives
    `cddfuse fuse --chroma ycbcr`'s image (to 8-bit rounding)."""
    from cddfuse.fusion import Fuser
    from cddfuse.io.image import read_image

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = [b for page in pages if page.is_file()
              for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S) if "ort.InferenceSession" in b]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    _crop_pair(test_data, tmp_path)
    assert main(["export", "-o", "cddfuse_ivf.onnx", "--weights", str(tiny_weights), "-q"]) == 0
    exec(compile(blocks[0], "the documentation", "exec"), {})
    got = read_image(tmp_path / "fused.png")
    want = Fuser(weights=tiny_weights, device="cpu", chroma="ycbcr").fuse(tmp_path / "ir.png", tmp_path / "vis.png")
    assert got.shape == want.shape == (72, 96, 3)
    assert np.abs(got - want).max() <= 2.5 / 255  # the example rounds Y to 8 bits before converting back
