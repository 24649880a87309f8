"""`cddfuse fuse` end to end on real pairs: pair mode, folder mode and every documented failure."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cddfuse.cli.main import main
from cddfuse.io.image import read_image

TNO = ("TNO/ir/01.png", "TNO/vi/01.png")
ROAD = ("RoadScene/ir/FLIR_00977.jpg", "RoadScene/vi/FLIR_00977.jpg")
PET = ("MRI_PET/PET/11.png", "MRI_PET/MRI/11.png")


def run_cli(*args: str):
    """Run the real console entry point in a subprocess; returns (rc, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert lines, "expected an error message"
    return lines[-1]


def test_help_is_complete():
    rc, out, _ = run_cli("fuse", "--help")
    assert rc == 0
    for opt in ("--task", "--weights", "--residual", "--normalize", "--color", "--device", "--bit-depth",
                "--resize", "--overwrite", "--method", "exit codes"):
        assert opt in out
    rc, out, _ = run_cli("--help")
    assert rc == 0 and "fuse" in out


def test_tno_pair_gray(test_data, tiny_weights, tmp_path):
    out = tmp_path / "tno.png"
    assert main(["fuse", str(test_data / TNO[0]), str(test_data / TNO[1]), "-o", str(out),
                 "--weights", str(tiny_weights), "--device", "cpu", "-q"]) == 0
    img = read_image(out, keep_integer=True)
    assert img.shape == (576, 768) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255  # min-max normalised


def test_roadscene_colour_pair_and_gray_option(test_data, tiny_weights, tmp_path):
    common = ["--weights", str(tiny_weights), "--device", "cpu", "-q"]
    assert main(["fuse", str(test_data / ROAD[0]), str(test_data / ROAD[1]), "-o", str(tmp_path / "c.png"),
                 *common]) == 0
    assert main(["fuse", str(test_data / ROAD[0]), str(test_data / ROAD[1]), "-o", str(tmp_path / "g.png"),
                 "--color", "gray", *common]) == 0
    colour, gray = read_image(tmp_path / "c.png"), read_image(tmp_path / "g.png")
    assert colour.ndim == 3 and gray.ndim == 2 and colour.shape[:2] == gray.shape == (351, 505)


@pytest.mark.parametrize("chroma", ["ycbcr", "saturation"])
def test_mri_pet_pair_keeps_colour_map(test_data, tiny_weights, tmp_path, chroma):
    from cddfuse.io.color import rgb_to_ycbcr

    out = tmp_path / "pet.png"
    assert main(["fuse", str(test_data / PET[0]), str(test_data / PET[1]), "-o", str(out), "--task", "mif",
                 "--weights", str(tiny_weights), "--device", "cpu", "-q", "--chroma", chroma]) == 0
    fused, pet = read_image(out), read_image(test_data / PET[0])
    c_in, c_out = rgb_to_ycbcr(pet), rgb_to_ycbcr(fused)
    coloured = np.hypot(c_in[..., 1] - 0.5, c_in[..., 2] - 0.5) > 0.1
    unclipped = np.all((fused > 0.01) & (fused < 0.99), axis=-1)
    m = coloured & unclipped
    assert m.sum() > 500
    if chroma == "ycbcr":  # the authors' way: Cb/Cr put back as they were
        assert np.median(np.abs(c_out[..., 1:][m] - c_in[..., 1:][m])) < 2 / 255
    hue_in = np.degrees(np.arctan2(c_in[..., 2] - 0.5, c_in[..., 1] - 0.5))[m]
    hue_out = np.degrees(np.arctan2(c_out[..., 2] - 0.5, c_out[..., 1] - 0.5))[m]
    dh = np.abs(hue_out - hue_in)
    assert np.median(np.minimum(dh, 360 - dh)) < 2.0  # every mode keeps the colour map's hues


def test_npy_and_sixteen_bit_outputs(test_data, tiny_weights, tmp_path):
    common = ["--weights", str(tiny_weights), "--device", "cpu", "-q", "--color", "gray"]
    a, b = str(test_data / PET[0]), str(test_data / PET[1])
    assert main(["fuse", a, b, "-o", str(tmp_path / "f.npy"), *common]) == 0
    assert main(["fuse", a, b, "-o", str(tmp_path / "f16.png"), "--bit-depth", "16", *common]) == 0
    raw = np.load(tmp_path / "f.npy")
    assert raw.dtype == np.float32 and raw.shape == (256, 256)
    np.testing.assert_allclose(read_image(tmp_path / "f16.png"), raw, atol=0.5 / 65535 + 1e-7)


def test_baseline_method_needs_no_weights(test_data, tmp_path):
    assert main(["fuse", str(test_data / TNO[0]), str(test_data / TNO[1]), "-o", str(tmp_path / "m.png"),
                 "--method", "max", "-q"]) == 0


def _folder_pair(root: Path, test_data: Path, names):
    ir, vi = root / "ir", root / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    for i, name in enumerate(names):
        (ir / f"{i:02d}.png").symlink_to(test_data / "TNO/ir" / name)
        (vi / f"{i:02d}.png").symlink_to(test_data / "TNO/vi" / name)
    return ir, vi


@pytest.mark.slow
def test_folder_mode_with_failures_unmatched_and_rerun(test_data, tiny_weights, tmp_path):
    ir, vi = _folder_pair(tmp_path, test_data, ["07.png", "19.png", "20.png"])
    (ir / "lonely.png").symlink_to(test_data / "TNO/ir/01.png")          # no partner
    (ir / "broken.png").write_text("this is not an image")                # a non-image file
    (vi / "broken.png").symlink_to(test_data / "TNO/vi/01.png")
    (ir / "sizes.png").symlink_to(test_data / "TNO/ir/19.png")            # 360x270 ...
    (vi / "sizes.png").symlink_to(test_data / "TNO/vi/07.png")            # ... vs 256x256
    out = tmp_path / "out"
    rc, _, err = run_cli("fuse", ir, vi, "-o", out, "--weights", tiny_weights, "--device", "cpu")
    assert rc == 1, err
    assert "Traceback" not in err
    assert "no partner" in err and "lonely" in err
    assert "broken" in err and "not a readable image" in err
    assert "differ in size" in err
    assert "3 fused, 0 already done (skipped), 2 failed, 1 unmatched" in err
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "02.png"]
    for p in out.iterdir():
        assert read_image(p).shape == read_image(ir / p.name).shape
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, _, err = run_cli("fuse", ir, vi, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--resize")
    assert rc == 1 and "1 fused, 3 already done (skipped), 1 failed" in err   # only 'broken' still fails
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert (out / "sizes.png").exists()
    (ir / "broken.png").unlink()
    rc, _, err = run_cli("fuse", ir, vi, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--overwrite",
                         "--resize", "-q")
    assert rc == 0 and "4 fused, 0 already done" in err


@pytest.mark.slow
def test_folder_batches_of_same_size_pairs(test_data, tiny_weights, tmp_path, monkeypatch):
    """--batch-size groups consecutive same-size pairs; outputs equal the one-by-one run's and a
    bad pair in the middle is still reported on its own."""
    from cddfuse.fusion import Fuser

    ir, vi = tmp_path / "ir", tmp_path / "vi"
    ir.mkdir()
    vi.mkdir()
    for i, n in enumerate(["11", "12", "13", None, "14", "15"]):
        if n is None:
            (ir / f"{i:02d}.png").write_text("not an image")
            (vi / f"{i:02d}.png").symlink_to(test_data / "MRI_PET/MRI/11.png")
            continue
        (ir / f"{i:02d}.png").symlink_to(test_data / f"MRI_PET/PET/{n}.png")
        (vi / f"{i:02d}.png").symlink_to(test_data / f"MRI_PET/MRI/{n}.png")
    (ir / "06.png").symlink_to(test_data / "TNO/ir/19.png")  # another size: a batch of its own
    (vi / "06.png").symlink_to(test_data / "TNO/vi/19.png")
    sizes = []
    real = Fuser.fuse_batch

    def recording(self, pairs, **kw):
        sizes.append(len(pairs))
        return real(self, pairs, **kw)

    monkeypatch.setattr(Fuser, "fuse_batch", recording)
    common = ["--weights", str(tiny_weights), "--device", "cpu", "-q", "--ext", ".npy"]
    assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "one"), *common]) == 1
    assert sizes == []
    assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "three"), "--batch-size", "3", *common]) == 1
    assert sizes == [3, 2]  # 00-02, then 04-05; 03 fails alone, 06 is 360x270
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["00.npy", "01.npy", "02.npy", "04.npy", "05.npy", "06.npy"]
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == names
    for name in names:
        a, b = np.load(tmp_path / "one" / name), np.load(tmp_path / "three" / name)
        assert a.shape == b.shape and float(np.abs(a - b).max()) <= 1e-5, name


@pytest.mark.slow
def test_missing_file_and_usage_errors(test_data, tiny_weights, tmp_path):
    rc, _, err = run_cli("fuse", tmp_path / "nope.png", test_data / TNO[1], "-o", tmp_path / "x.png",
                         "--weights", tiny_weights)
    assert rc == 1 and "no such file" in one_line_error(err)
    rc, _, err = run_cli("fuse", test_data / TNO[0], test_data / "TNO/vi", "-o", tmp_path / "x.png")
    assert rc == 2 and "both be files or both be folders" in one_line_error(err)
    rc, _, err = run_cli("fuse", test_data / TNO[0], test_data / TNO[1], "-o", tmp_path / "x.jpg", "--bit-depth", "16",
                         "--method", "max")
    assert rc == 2 and "16-bit" in one_line_error(err)
    rc, _, err = run_cli("fuse", test_data / TNO[0], test_data / TNO[1], "-o", tmp_path / "x.png", "--residual", "ir")
    assert rc == 2 and "invalid choice" in one_line_error(err)
    rc, _, err = run_cli("fuse", test_data / TNO[0], test_data / TNO[1], "-o", tmp_path / "x.png",
                         "--weights", tmp_path / "missing.pth")
    assert rc == 1 and "no such weights file" in one_line_error(err)
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


@pytest.mark.slow
def test_mismatched_sizes_pair(test_data, tiny_weights, tmp_path):
    rc, _, err = run_cli("fuse", test_data / "TNO/ir/01.png", test_data / "TNO/vi/06.png", "-o", tmp_path / "x.png",
                         "--weights", tiny_weights, "--device", "cpu")
    line = one_line_error(err)
    assert rc == 1 and "768x576" in line and "--resize" in line
    assert not (tmp_path / "x.png").exists()


def test_no_weights_says_so(test_data, tmp_path, monkeypatch, capsys):
    """An installation without bundled weights says how to pass some (never random weights)."""
    import cddfuse.models.pretrained as P
    from cddfuse.cli.main import main

    monkeypatch.setattr(P, "WEIGHTS_DIR", tmp_path / "no_weights_here")
    rc = main(["fuse", str(test_data / TNO[0]), str(test_data / TNO[1]), "-o", str(tmp_path / "x.png")])
    assert rc == 1 and "--weights" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_bundled_weights_fuse_without_options(test_data, tmp_path):
    """The main job: `cddfuse fuse IR VIS -o OUT` with nothing else uses the bundled IVF weights."""
    from cddfuse.models.pretrained import PRETRAINED, WEIGHTS_DIR

    if not (WEIGHTS_DIR / PRETRAINED["ivf"].filename).exists():
        pytest.skip("no bundled weights in this checkout")
    rc, _, err = run_cli("fuse", test_data / TNO[0], test_data / TNO[1], "-o", tmp_path / "x.png", "-q")
    assert rc == 0, err
    import cv2

    out = cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED)
    ir = cv2.imread(str(test_data / TNO[0]), cv2.IMREAD_GRAYSCALE)
    assert out is not None and out.shape[:2] == ir.shape


# The CLI in a subprocess whose second fusion first waits until the first output is on disk, says so on
# stdout and then stays in the middle of fusing: the signal always lands mid-run, however busy the machine.
_PAUSE_AFTER_FIRST_OUTPUT = """
import pathlib, sys, time
from cddfuse.cli.main import main
from cddfuse.fusion.fuser import Fuser

out, calls, fuse = pathlib.Path(sys.argv[1]), [], Fuser.fuse

def paused(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        while not any(p.suffix == ".png" and not p.name.startswith(".") for p in out.iterdir()):
            time.sleep(0.01)
        print("first output written", flush=True)
        time.sleep(3600)
    return fuse(self, *args, **kwargs)

Fuser.fuse = paused
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_folder_run_loses_nothing(test_data, tiny_weights, tmp_path, sig):
    names = ["07.png", "19.png", "20.png", "24.png"] * 2
    ir, vi = _folder_pair(tmp_path, test_data, names)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSE_AFTER_FIRST_OUTPUT, str(out), "fuse", str(ir), str(vi),
                             "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the run is paused mid-folder (or has died: "")
    assert line.strip() == "first output written", proc.communicate(timeout=600)[1][-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        assert proc.returncode == 130 and "interrupted" in err
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(finished) == 1  # the pair written before the pause, nothing else
    for p in finished:  # every visible output is a complete image of the right size
        assert read_image(p).shape == read_image(ir / p.name).shape
    rc, _, err = run_cli("fuse", ir, vi, "-o", out, "--weights", tiny_weights, "--device", "cpu", "-q")
    assert rc == 0
    assert f"{len(names) - len(finished)} fused, {len(finished)} already done" in err
    assert sorted(p.name for p in out.iterdir()) == [f"{i:02d}.png" for i in range(len(names))]
