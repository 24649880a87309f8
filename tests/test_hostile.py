"""Hostile and careless input, as a user would give it, against every entry point.

Each case asserts what the user must see and what must not happen: the exit code, one line on
stderr (``cddfuse <command>: error: ...``), no traceback, no partial or changed file, sources
untouched. The command line runs in-process (an exception escaping ``main`` fails the test, which
is what a traceback would be); cases that need a real process (a FIFO, concurrent runs) spawn one.
"""
from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cddfuse._fileutil import _HOST
from cddfuse.cli.main import main
from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.fusion import Fuser
from cddfuse.io.image import ImageReadError, probe_image, read_image, write_image

from .helpers import png_header_only, snapshot

# ----------------------------------------------------------------------------- helpers
# (the ``cli`` and ``pair`` fixtures are in conftest.py, png_header_only and snapshot in helpers.py)


def float_tiff(path: Path, values: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), values.astype(np.float32))
    return path


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(8)
    for stem in ("01", "02", "03"):
        write_image(tmp_path / "ir" / f"{stem}.png", rng.random((16, 18)))
        write_image(tmp_path / "vi" / f"{stem}.png", rng.random((16, 18)))
    before = snapshot(tmp_path / "ir", tmp_path / "vi")
    yield tmp_path / "ir", tmp_path / "vi"
    after = snapshot(tmp_path / "ir", tmp_path / "vi")
    assert {k: v for k, v in after.items() if k in before} == before, "a source was changed or removed"


def fuse(*args: object) -> list[object]:
    return ["fuse", *args, "--method", "max"]


# ----------------------------------------------------------------------------- sources are never written

def test_output_is_the_ir_source(cli, pair):
    ir, vi = pair
    cli(*fuse(ir, vi, "-o", ir), rc=2, says="is the IR source")


def test_output_is_the_visible_source(cli, pair):
    ir, vi = pair
    cli(*fuse(ir, vi, "-o", vi), rc=2, says="is the VIS source")


def test_output_is_a_symlink_to_a_source(cli, pair, tmp_path):
    ir, vi = pair
    link = tmp_path / "link.png"
    link.symlink_to(ir)
    cli(*fuse(ir, vi, "-o", link), rc=2, says="is the IR source")
    assert link.is_symlink()


def test_output_is_a_hard_link_to_a_source(cli, pair, tmp_path):
    ir, vi = pair
    hard = tmp_path / "hard.png"
    os.link(vi, hard)
    cli(*fuse(ir, vi, "-o", hard), rc=2, says="is the VIS source")


def test_output_folder_holding_the_source_name(cli, pair):
    ir, vi = pair  # -o the sources' own folder: the output would be src/ir.png, the IR source
    cli(*fuse(ir, vi, "-o", ir.parent), rc=2, says="is the IR source")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_folder_output_is_an_input_folder(cli, folders, overwrite):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", ir, *overwrite), rc=2, says="is or contains the source folder")
    cli(*fuse(ir, vi, "-o", vi, *overwrite), rc=2, says="is or contains the source folder")


def test_folder_output_contains_an_input_folder(cli, folders):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", ir.parent), rc=2, says="is or contains the source folder")


def test_folder_output_through_a_symlink_to_an_input(cli, folders, tmp_path):
    ir, vi = folders
    (tmp_path / "alias").symlink_to(vi)
    cli(*fuse(ir, vi, "-o", tmp_path / "alias"), rc=2, says="is or contains the source folder")


# ----------------------------------------------------------------------------- no garbage with exit 0

@pytest.mark.parametrize("bad, says", [
    (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-np.inf, "NaN or infinite"),
    (1.5, "must hold values in [0, 1]"), (-0.25, "must hold values in [0, 1]"),
])
def test_float_tiff_with_bad_values(cli, pair, tmp_path, bad, says):
    _, vi = pair
    values = np.random.default_rng(0).random((20, 24))
    values[3, 4] = bad
    tif = float_tiff(tmp_path / "bad.tif", values)
    cli(*fuse(tif, vi, "-o", tmp_path / "out.png"), rc=1, says=says)
    assert not (tmp_path / "out.png").exists()


def test_float_tiff_rule_is_the_same_for_api_and_cli(tmp_path):
    tif = float_tiff(tmp_path / "big.tif", np.full((6, 6), 2.0))
    with pytest.raises(CDDFuseError, match=r"\[0, 1\]"):
        Fuser(method="max").fuse(tif, tif)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        Fuser(method="max").fuse(np.full((6, 6), 2.0), np.zeros((6, 6)))
    good = float_tiff(tmp_path / "good.tif", np.full((6, 6), 0.5))
    assert Fuser(method="max", normalize="none").fuse(good, good).max() == pytest.approx(0.5)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_with_non_finite_tensors(cli, pair, tmp_path, tiny_weights, value):
    from cddfuse.models.weights import load_weights, save_weights

    model, info = load_weights(tiny_weights)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = value
    bad = save_weights(model, tmp_path / "bad.safetensors", task="ivf", residual="vis")
    ir, vi = pair
    cli("fuse", ir, vi, "-o", tmp_path / "out.png", "--weights", bad, rc=1, says="NaN or infinite values")
    assert not (tmp_path / "out.png").exists()


def test_non_finite_network_output_is_an_error_not_an_image(pair, tmp_path, tiny_weights, monkeypatch):
    fuser = Fuser(weights=tiny_weights, device="cpu")
    monkeypatch.setattr(fuser, "fuse_luminance", lambda a, b, **_: np.full(a.shape, np.nan, np.float32))
    with pytest.raises(CDDFuseError, match="NaN or infinite"):
        fuser.fuse(*pair)


def test_non_finite_image_is_never_written(tmp_path):
    img = np.zeros((4, 4), np.float32)
    img[1, 1] = np.nan
    with pytest.raises(CDDFuseError, match="not written"):
        write_image(tmp_path / "x.png", img)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- write errors

@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else False,
                    reason="root ignores file permissions")
def test_read_only_output_folder_pair_mode(cli, pair, tmp_path):  # pragma: no cover - runs as non-root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    cli(*fuse(*pair, "-o", ro / "out.png"), rc=1, says="cannot write")


def test_output_parent_is_a_file(cli, pair, tmp_path):
    (tmp_path / "file").write_text("x")
    cli(*fuse(*pair, "-o", tmp_path / "file" / "out.png"), rc=1, says="cannot write")


def test_unwritable_output_checked_before_fusing(cli, pair, tmp_path, monkeypatch):
    import cddfuse.fusion.fuser as F

    def refuse(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("cddfuse._fileutil.tempfile.TemporaryFile", refuse)
    monkeypatch.setattr(F.Fuser, "fuse", lambda *a, **k: pytest.fail("fused although the output cannot be written"))
    cli(*fuse(*pair, "-o", tmp_path / "out.png"), rc=1, says="Permission denied")


def test_full_disk_in_pair_mode_leaves_nothing(cli, pair, tmp_path, monkeypatch):
    def full(fd: int) -> None:  # the data did not fit: the disk reports it when it is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cddfuse._fileutil.os.fsync", full)
    cli(*fuse(*pair, "-o", tmp_path / "out.png"), rc=1, says="No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no output, no temporary file


def test_full_disk_in_folder_mode_stops_with_the_summary(cli, folders, tmp_path, monkeypatch):
    import cddfuse.io.image as I

    calls = []

    def full(path, data):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(I, "atomic_write_bytes", full)
    err = cli(*fuse(*folders, "-o", tmp_path / "out", "--batch-size", "1"), rc=1,
              says="stopped early: cannot write")
    assert "0 fused" in err and "No space left on device" in err
    assert len(calls) < 3  # it stopped instead of failing every pair in turn
    assert not [p for p in (tmp_path / "out").iterdir()]


def test_one_unwritable_name_fails_that_pair_only(cli, folders, tmp_path):
    out = tmp_path / "out"
    (out / "02.png").mkdir(parents=True)  # a folder where the output file should go
    err = cli(*fuse(*folders, "-o", out, "--overwrite"), rc=1, says="2 fused")
    assert "02" in err.splitlines()[-1]
    assert (out / "01.png").is_file() and (out / "03.png").is_file()


# ----------------------------------------------------------------------------- decompression bombs and odd files

def test_bomb_header_is_refused_before_decoding(cli, pair, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    cli(*fuse(bomb, pair[1], "-o", tmp_path / "o.png"), rc=1, says="100000x100000 pixels is more than the limit")
    cli(*fuse(pair[0], bomb, "-o", tmp_path / "o.png"), rc=1, says="--max-pixels")


def test_pair_sizes_are_compared_from_the_headers(cli, pair, tmp_path, monkeypatch):
    import cddfuse.io.image as I

    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(30_000, 30_000))
    monkeypatch.setattr(I.cv2, "imdecode", lambda *a: pytest.fail("decoded before comparing sizes"))
    cli(*fuse(pair[0], big, "-o", tmp_path / "o.png", "--max-pixels", 10**10), rc=1,
        says="differ in size (24x20 vs 30000x30000)")


def test_max_pixels_can_be_lowered_and_raised(cli, pair, tmp_path):
    cli(*fuse(*pair, "-o", tmp_path / "o.png", "--max-pixels", 100), rc=1, says="24x20 pixels is more than the limit")
    cli(*fuse(*pair, "-o", tmp_path / "o.png", "--max-pixels", 480), rc=0)


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_max_pixels_must_be_a_positive_number(cli, pair, tmp_path, value):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in fuse(*pair, "-o", tmp_path / "o.png", "--max-pixels", value)])
    assert e.value.code == 2


@pytest.mark.slow
def test_fifo_is_refused_not_waited_on(tmp_path, pair):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "fuse", str(fifo), str(pair[1]), "-o",
                           str(tmp_path / "o.png"), "--method", "max"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content, says", [
    (b"", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
    (bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)), "not a readable image"),
    (b"hello, I am text", "not a readable image"),
])
def test_files_that_are_not_images(cli, pair, tmp_path, content, says):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    cli(*fuse(bad, pair[1], "-o", tmp_path / "o.png"), rc=1, says=says)


def test_truncated_png(cli, pair, tmp_path):
    data = Path(pair[1]).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    cli(*fuse(pair[0], cut, "-o", tmp_path / "o.png"), rc=1, says="not a readable image")


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_missing_or_folder_source(cli, pair, tmp_path, what):
    target = tmp_path / "nothing.png"
    if what == "folder":
        target.mkdir()
        cli(*fuse(target, pair[1], "-o", tmp_path / "o.png"), rc=2, says="both be files or both be folders")
    else:
        cli(*fuse(target, pair[1], "-o", tmp_path / "o.png"), rc=1, says="no such file")


def test_exif_rotation_of_a_png_counts_too(tmp_path):
    """OpenCV applies the orientation of PNG (eXIf) as of JPEG: the header sizes must say the same."""
    from PIL import Image

    rng = np.random.default_rng(3)
    a = write_image(tmp_path / "a.png", rng.random((4, 8)))  # 8 wide, 4 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray((rng.random((8, 4)) * 255).astype(np.uint8)).save(tmp_path / "b.png", exif=exif)  # 4x8, shown 8x4
    assert probe_image(tmp_path / "b.png").size == "8x4" == probe_image(a).size
    assert read_image(tmp_path / "b.png").shape == (4, 8)
    assert Fuser(method="max").fuse(a, tmp_path / "b.png").shape == (4, 8)


def test_float_rgb_and_float64_tiffs_are_read(tmp_path):
    """TIFFs whose headers Pillow does not parse are decoded by OpenCV and checked after decoding."""
    rgb = float_tiff(tmp_path / "rgb.tif", np.random.default_rng(4).random((5, 6, 3)))
    assert read_image(rgb).shape == (5, 6, 3)
    import cv2

    assert cv2.imwrite(str(tmp_path / "f64.tif"), np.full((5, 6), 0.25))
    assert read_image(tmp_path / "f64.tif").max() == pytest.approx(0.25)
    with pytest.raises(ImageReadError, match="more than the limit"):
        read_image(rgb, max_pixels=10)


def test_a_source_linked_into_the_output_folder_is_not_overwritten(cli, folders, tmp_path):
    ir, vi = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "02.png").symlink_to(ir / "02.png")  # the output name of pair 02 is its infrared source
    err = cli(*fuse(ir, vi, "-o", out, "--overwrite"), rc=1, says="is one of its sources")
    assert "2 fused" in err and (out / "02.png").is_symlink()


def test_bench_out_dir_is_a_source_folder(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    write_image(tmp_path / "set" / "vi" / "01.png", np.zeros((8, 8)))
    before = snapshot(tmp_path / "set")
    cli("bench", tmp_path / "set", "--method", "max", "--out-dir", tmp_path / "set" / "ir", rc=2,
        says="is or contains a source folder")
    assert snapshot(tmp_path / "set") == before


def test_exif_rotation_is_applied_by_fuse_and_eval_alike(cli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for folder in ("ir", "vi"):
        (tmp_path / folder).mkdir()
        exif = Image.Exif()
        exif[0x0112] = 6  # shown rotated by 90 degrees
        Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / folder / "01.jpg", exif=exif)
    assert probe_image(tmp_path / "ir" / "01.jpg").size == "20x30"
    assert read_image(tmp_path / "ir" / "01.jpg").shape[:2] == (30, 20)
    cli(*fuse(tmp_path / "ir", tmp_path / "vi", "-o", tmp_path / "out"), rc=0)
    assert read_image(tmp_path / "out" / "01.png").shape[:2] == (30, 20)
    cli("eval", tmp_path / "ir", tmp_path / "vi", tmp_path / "out", "--metrics", "EN,SD", rc=0)


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("args, says", [
    (["--device", "tpu9"], "--device tpu9: not a device"),
    (["--device", "meta"], "--device meta: unsupported device type"),
    (["--max-memory", "1K"], "--max-memory 1K: cannot be met"),
    (["--max-memory", "lots"], "--max-memory lots"),
    (["--tile", "1"], "--tile 1: must be a number of pixels, at least 4"),
    (["--precision", "tf32"], "--precision tf32: needs a CUDA GPU"),
])
def test_bad_option_values(cli, pair, tmp_path, tiny_weights, args, says):
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cpu", *args, rc=2, says=says)
    assert not (tmp_path / "o.png").exists()


def test_cuda_without_a_gpu(cli, pair, tmp_path, tiny_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cuda", rc=2,
        says="--device cuda: no CUDA GPU is available")


def test_bf16_on_a_cpu_without_bf16_units(cli, pair, tmp_path, tiny_weights, monkeypatch):
    monkeypatch.setenv("CDDFUSE_CPU_FLAGS", "fpu sse2 avx2 fma avx512f")  # an AVX-512 CPU without BF16 or AMX
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cpu", "--precision", "bf16",
        rc=2, says="needs AMX or AVX512-BF16")


def test_small_tile_works_with_one_warning_line(cli, pair, tmp_path, tiny_weights):
    err = cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cpu", "--tile", "8",
              rc=0)
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == ["cddfuse fuse: warning: --tile 8 is very small: every tile recomputes a border around itself, "
                        "so small tiles multiply the work (128 is fastest on CPU)"]


@pytest.mark.parametrize("args, says", [
    (["-o", "{tmp}/o.gif"], "cannot write .gif"),
    (["-o", "{tmp}/o.jpg", "--bit-depth", "16"], "cannot hold 16-bit"),
    (["-o", "{tmp}/o"], "cannot write files without extension"),
])
def test_bad_output_names(cli, pair, tmp_path, args, says):
    cli(*fuse(*pair, *[a.format(tmp=tmp_path) for a in args]), rc=2, says=says)


def test_bad_extension_in_folder_mode_names_the_option(cli, folders, tmp_path):
    err = cli(*fuse(*folders, "-o", tmp_path / "out", "--ext", ".xyz"), rc=2, says="extension .xyz: cannot write .xyz")
    assert "x.xyz" not in err


def test_messages_speak_flags_not_python(cli, tmp_path):
    a = write_image(tmp_path / "a.png", np.zeros((5, 6)))
    b = write_image(tmp_path / "b.png", np.zeros((6, 5)))
    err = cli(*fuse(a, b, "-o", tmp_path / "o.png"), rc=1, says="--resize")
    assert "resize=True" not in err


# ----------------------------------------------------------------------------- weights files

@pytest.mark.parametrize("content", [
    b"", b"\x00" * 100, bytes(range(256)) * 10, png_header_only(10, 10), b"<html>not found</html>",
])
def test_weights_that_are_not_checkpoints(cli, pair, tmp_path, content):
    bad = tmp_path / "w.pth"
    bad.write_bytes(content)
    err = cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, rc=1)
    assert "not a PyTorch checkpoint or safetensors file" in err or "cannot read as" in err
    assert "weights_only=False" not in err and "more than tensors" not in err


def test_weights_holding_code_run_nothing(cli, pair, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    torch.save({"DIDF_Encoder": Evil()}, bad)
    err = cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, rc=1, says="refused to load")
    assert not marker.exists() and "weights_only=False" not in err


@pytest.mark.parametrize("make", ["folder", "missing", "truncated"])
def test_weights_path_problems(cli, pair, tmp_path, tiny_weights, make):
    target = tmp_path / "w.safetensors"
    if make == "folder":
        target.mkdir()
    elif make == "truncated":
        target.write_bytes(Path(tiny_weights).read_bytes()[:500])
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", target, rc=1)


def test_weights_with_a_rule(cli, pair, tmp_path, tiny_weights):
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--method", "max", rc=2,
        says="only used with --method cddfuse")


# ----------------------------------------------------------------------------- temporary files

def test_stale_temporary_beside_a_pair_output_is_removed(cli, pair, tmp_path):
    out = tmp_path / "o.png"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".o.png.h{_HOST}p{int(dead.stdout)}.abc123.cddfuse-tmp"  # a writer killed at the rename
    stale.write_bytes(b"half")
    cli(*fuse(*pair, "-o", out), rc=0)
    assert not stale.exists() and out.exists()


def test_temporary_of_a_live_writer_is_kept(folders, tmp_path):
    from cddfuse._fileutil import remove_stale_temporaries

    out = tmp_path / "out"
    out.mkdir()
    live = out / f".01.png.h{_HOST}p{os.getppid()}.fed789.cddfuse-tmp"  # our parent process is alive
    live.write_bytes(b"being written")
    assert remove_stale_temporaries(out) == 0 and live.exists()


def test_temporaries_of_other_machines_are_removed_only_when_old(tmp_path):
    """On a shared file system a process id says nothing about another machine's writers: age decides."""
    from cddfuse._fileutil import STALE_AFTER_S, remove_stale_temporaries

    other = tmp_path / ".01.png.h00000000p1.abcdef.cddfuse-tmp"        # another host's writer
    untagged = tmp_path / ".02.png.tmpx8k2.cddfuse-tmp"               # an older version's name
    huge = tmp_path / f".03.png.h{_HOST}p{10**30}.abcdef.cddfuse-tmp"  # not a process id at all
    for f in (other, untagged, huge):
        f.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1 and other.exists() and untagged.exists() and not huge.exists()
    old = os.stat(other).st_mtime - STALE_AFTER_S - 60
    for f in (other, untagged):
        os.utime(f, (old, old))
    assert remove_stale_temporaries(tmp_path) == 2 and not other.exists() and not untagged.exists()


# ----------------------------------------------------------------------------- the Python API

@pytest.mark.parametrize("array, says", [
    (np.zeros((0, 0), np.uint8), "empty image"),
    (np.zeros((0, 5), np.float32), "empty image"),
    (np.full((4, 4), np.nan, np.float32), "NaN or infinite"),
    (np.zeros((4, 4, 2), np.uint8), "expected an (H, W)"),
    (np.zeros((4, 4), np.int64), "unsupported dtype"),
    (np.zeros((2, 4, 4, 3), np.uint8), "expected an (H, W)"),
    ("not/a/file.png", "no such file"),
    (12345, "expected a file path"),
])
def test_api_rejects_bad_arrays_with_one_clear_error(array, says):
    with pytest.raises(CDDFuseError) as e:
        Fuser(method="mean").fuse(array, np.zeros((4, 4), np.uint8))
    assert says in str(e.value)


@pytest.mark.parametrize("kwargs, parameter", [
    (dict(device="tpu9"), "device"), (dict(tile=True), "tile"), (dict(tile=2), "tile"),
    (dict(max_pixels=0), "max_pixels"), (dict(max_memory="1K"), "max_memory"), (dict(normalize="zscore"), "normalize"),
])
def test_api_option_errors_are_value_errors_naming_the_parameter(tiny_weights, kwargs, parameter):
    with pytest.raises(ValueError, match=parameter) as e:
        Fuser(weights=tiny_weights, **kwargs)
    assert isinstance(e.value, UsageError) and e.value.parameter == parameter


def test_api_reads_no_file_larger_than_its_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))
    with pytest.raises(ImageReadError, match="more than the limit"):
        Fuser(method="max").fuse(bomb, bomb)


# ----------------------------------------------------------------------------- folder mode

def test_folder_with_a_bad_file_among_good_ones(cli, folders, tmp_path):
    ir, vi = folders
    float_tiff(ir / "04.tif", np.full((16, 18), np.nan))
    write_image(vi / "04.png", np.zeros((16, 18)))
    (ir / "05.png").write_bytes(png_header_only(90_000, 90_000))
    write_image(vi / "05.png", np.zeros((16, 18)))
    err = cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=1, says="3 fused, 0 already done (skipped), 2 failed")
    assert "failed pairs: 04, 05" in err


def test_folder_with_two_files_of_one_stem(cli, folders, tmp_path):
    ir, vi = folders
    write_image(ir / "01.jpg", np.zeros((16, 18)))
    cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=2, says="two files with stem '01'")


def test_folders_without_common_names(cli, folders, tmp_path):
    ir, _ = folders
    other = tmp_path / "other"
    write_image(other / "zz.png", np.zeros((4, 4)))
    cli(*fuse(ir, other, "-o", tmp_path / "out"), rc=1, says="no pairs")
    assert not (tmp_path / "out").exists()


def test_folder_output_is_a_file(cli, folders, tmp_path):
    (tmp_path / "out").write_text("x")
    cli(*fuse(*folders, "-o", tmp_path / "out"), rc=2, says="is a file")


@pytest.mark.slow
def test_folder_with_a_fifo_does_not_block(folders, tmp_path):
    ir, vi = folders
    os.mkfifo(ir / "04.png")
    write_image(vi / "04.png", np.zeros((16, 18)))
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", *map(str, fuse(ir, vi, "-o", tmp_path / "out"))],
                          capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr and "3 fused" in proc.stderr
    os.unlink(ir / "04.png")


@pytest.mark.slow
def test_two_folder_runs_into_one_output_folder(folders, tmp_path, tiny_weights):
    """Two runs at once, same output folder: every output complete and equal to a single run's."""
    ir, vi = folders
    for i in range(4, 12):
        write_image(ir / f"{i:02d}.png", np.random.default_rng(i).random((40, 44)))
        write_image(vi / f"{i:02d}.png", np.random.default_rng(100 + i).random((40, 44)))
    args = [sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "--weights", str(tiny_weights),
            "--device", "cpu", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(args + ["-o", str(tmp_path / "shared")], stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert subprocess.run(args + ["-o", str(tmp_path / "alone")], env=env).returncode == 0
    shared = sorted(p.name for p in (tmp_path / "shared").iterdir())
    assert shared == sorted(p.name for p in (tmp_path / "alone").iterdir()) and len(shared) == 11
    for name in shared:
        assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


# ----------------------------------------------------------------------------- eval and bench

def test_eval_with_a_bomb_among_the_fused_images(cli, folders, tmp_path):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=0)
    (tmp_path / "out" / "02.png").write_bytes(png_header_only(60_000, 60_000))
    cli("eval", ir, vi, tmp_path / "out", "--metrics", "EN", rc=1, says="more than the limit")


def test_eval_with_a_fifo_as_fused_image(folders, tmp_path):
    ir, vi = folders
    out = tmp_path / "out"
    out.mkdir()
    for stem in ("01", "02"):
        write_image(out / f"{stem}.png", np.zeros((16, 18)))
    os.mkfifo(out / "03.png")
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "eval", str(ir), str(vi), str(out),
                           "--metrics", "EN"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, rc, says", [
    (["--metrics", "BOGUS"], 2, "BOGUS"),
    (["--workers", "0"], 2, None),
])
def test_eval_bad_options(cli, folders, tmp_path, args, rc, says):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=0)
    cli("eval", ir, vi, tmp_path / "out", "--metrics", "EN", *args, rc=rc, says=says)


def test_eval_missing_fused_folder(cli, folders, tmp_path):
    cli("eval", *folders, tmp_path / "nowhere", rc=1, says="does not exist")


def test_bench_on_a_folder_that_is_not_a_test_set(cli, folders):
    cli("bench", folders[0], "--method", "max", rc=1, says="not a test set this command knows")


def test_bench_bad_limit(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    write_image(tmp_path / "set" / "vi" / "01.png", np.zeros((8, 8)))
    cli("bench", tmp_path / "set", "--method", "max", "--limit", "0", rc=2, says="--limit 0: must be at least 1")


def test_bench_with_random_bytes_as_weights(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    write_image(tmp_path / "set" / "vi" / "01.png", np.zeros((8, 8)))
    (tmp_path / "w.pth").write_bytes(b"\x01\x02" * 64)
    cli("bench", tmp_path / "set", "--weights", tmp_path / "w.pth", rc=1, says="not a PyTorch checkpoint")


def test_bench_with_a_bomb_in_the_set(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    (tmp_path / "set" / "vi").mkdir()
    (tmp_path / "set" / "vi" / "01.png").write_bytes(png_header_only(70_000, 70_000))
    cli("bench", tmp_path / "set", "--method", "max", rc=1, says="more than the limit")


# ----------------------------------------------------------------------------- prepare and train

def test_prepare_into_a_file_that_is_a_folder(cli, folders, tmp_path):
    (tmp_path / "cache.h5").mkdir()
    cli("prepare", *folders, "-o", tmp_path / "cache.h5", "--patch-size", "8", "-q", rc=2, says="--overwrite")
    cli("prepare", *folders, "-o", tmp_path / "cache.h5", "--patch-size", "8", "-q", "--overwrite", rc=1)
    assert (tmp_path / "cache.h5").is_dir()


def test_train_on_a_corrupt_cache(cli, tmp_path):
    bad = tmp_path / "data.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 200)
    cli("train", "--config", "configs/small_cpu.yaml", "--data", bad, "--run-dir", tmp_path / "run", "--no-progress",
        "--no-tensorboard", rc=1)


def test_train_resume_of_a_folder_that_is_no_run(cli, tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("my holiday photos")
    cli("train", "--resume", tmp_path / "foreign", rc=2, says="no training checkpoint here")
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt"]


def test_train_unknown_config_key(cli, tmp_path):
    cli("train", "--config", "configs/small_cpu.yaml", "--set", "optim.lrr=1", "--print-config", rc=2,
        says="did you mean optim.lr")


# ----------------------------------------------------------------------------- bounded memory by default

@pytest.mark.parametrize("size", [(480, 640), (2048, 2048), (4096, 4096)])
def test_default_memory_is_bounded_on_cpu(monkeypatch, size):
    """Without --max-memory the CPU engine plans within 3 GiB (or 80% of what is free): a 2048x2048 pair took
    10.6 GB before. The plan is checked against the engine's own memory model, without running the network."""
    import cddfuse.engine.engine as E
    from cddfuse.engine import DEFAULT_BUDGET, estimate_memory
    from cddfuse.models import CDDFuse, CDDFuseConfig

    seen = {}

    def plan_only(model, a, b, residual, *, tile, store, dtype, ops, memory_budget, workers=None, **_):
        seen.update(tile=tile, store=store, budget=memory_budget)
        return torch.zeros_like(a)

    monkeypatch.setattr(E, "tiled_fuse", plan_only)
    model = CDDFuse(CDDFuseConfig())
    h, w = size
    a = torch.zeros(1, 1, h, w)
    E.fuse_tensors(model, a, a, device="cpu")
    assert seen["budget"] is not None and seen["budget"] <= DEFAULT_BUDGET
    assert estimate_memory(h, w, seen["tile"], CDDFuseConfig(), 1, 4, seen["store"] == "disk") <= seen["budget"]
    if size == (480, 640):
        assert seen["store"] == "memory"  # small images are not slowed down by the bound


# ----------------------------------------------------------------------------- training checkpoints

TRAIN_CONFIG = {
    "task": "ivf", "seed": 0, "device": "cpu",
    "model": {"dim": 8, "num_heads": 2, "encoder_blocks": 1, "decoder_blocks": 1, "encoder_inn_layers": 1},
    "data": {"mode": "random_crop", "crop_size": 16, "workers": 0},
    "train": {"batch_size": 2, "threads": 1},
    "phase1": {"epochs": 1}, "phase2": {"epochs": 1},
    "checkpoint": {"every_steps": 1},
    "log": {"progress": False, "tensorboard": False},
}


@pytest.fixture
def tiny_run(tmp_path, folders):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CONFIG))
    return ["train", "--config", cfg, "--a", folders[0], "--b", folders[1], "--run-dir", tmp_path / "run"]


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(cli, tiny_run, tmp_path, monkeypatch):
    import cddfuse.train.checkpoint as C

    real, calls = C.atomic_write_bytes, []

    def fill_up(dest, data):
        calls.append(dest)
        if len(calls) > 2:  # last.pt + state.json of the first checkpoint went through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(dest, data)

    monkeypatch.setattr(C, "atomic_write_bytes", fill_up)
    cli(*tiny_run, rc=1, says="No space left on device; the previous checkpoint is kept")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert C.load_checkpoint(last)["global_step"] == 1  # whole and readable
    assert not list(last.parent.glob(".*cddfuse-tmp"))


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_on_resume(cli, tiny_run, tmp_path):
    cli(*tiny_run, rc=0)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    cli("train", "--resume", tmp_path / "run", rc=1, says="not a readable training checkpoint")


def test_bf16_on_a_cpu_with_bf16_units_runs_close_to_fp32(pair, tiny_weights):
    from cddfuse.fusion.fuser import cpu_bf16_feature

    if cpu_bf16_feature() is None:
        pytest.skip("this CPU has neither AMX nor AVX512-BF16")
    fp32 = Fuser(weights=tiny_weights, device="cpu").fuse(*pair)
    bf16 = Fuser(weights=tiny_weights, device="cpu", precision="bf16").fuse(*pair)
    assert bf16.shape == fp32.shape and np.all(np.isfinite(bf16))
    assert np.abs(bf16 - fp32).mean() < 0.02


def test_a_resumed_run_removes_the_temporaries_of_the_killed_one(cli, tiny_run, tmp_path):
    cli(*tiny_run, rc=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "run" / "checkpoints" / f".last.pt.h{_HOST}p{int(dead.stdout)}.0a1b2c3d.cddfuse-tmp"
    stale.write_bytes(b"half a checkpoint")
    cli("train", "--resume", tmp_path / "run", rc=0)
    assert not stale.exists()


def test_written_files_follow_the_umask(tmp_path, tiny_weights):
    """Outputs get the permissions a plain open() would give, whatever mode the writer used (safetensors: 0600)."""
    from cddfuse._fileutil import _umask
    from cddfuse.models.weights import load_weights, save_weights

    model, _ = load_weights(tiny_weights)
    expected = 0o666 & ~_umask()
    paths = [save_weights(model, tmp_path / "w.safetensors", task="ivf", residual="vis"),
             write_image(tmp_path / "x.png", np.zeros((4, 4)))]
    assert [oct(os.stat(p).st_mode & 0o777) for p in paths] == [oct(expected)] * 2


# ============================================================================= round 3: strict one-line contract
# Every case below asserts exactly one line on stderr (``cddfuse <command>: error: ...``), the documented exit
# code, no traceback, sources untouched and no output left behind; bombs also assert the peak resident
# memory of a child process.

#: Peak resident memory a refused bomb may cost a ``cddfuse`` process: the interpreter, NumPy, OpenCV and
#: PyTorch take about 0.3 GB here before any file is opened; the bombs below took 1.2 to 3.7 GB before.
BOMB_PEAK = 800 * 2**20


def one_line(err: str, command: str) -> str:
    """The one error line of ``err`` (asserting there is exactly one and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cddfuse {command}: error: "), lines
    return lines[0]


def refused(capsys, *args: object, rc: int, says: str | None = None) -> str:
    """Run ``cddfuse ARGS`` in-process and check the strict contract; returns the error line."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse: a usage error
        code = e.code
    err = capsys.readouterr().err
    assert code == rc, err
    line = one_line(err, str(args[0]))
    if says is not None:
        assert says in line, line
    return line


#: The child of :func:`run_child`: runs ``cddfuse``, then writes its own peak resident memory (``VmHWM``: the
#: high-water mark of this process's memory since it started, which unlike ``ru_maxrss`` does not carry
#: over the parent's size from ``fork``) to the file named by ``CDDFUSE_TEST_PEAK``.
_CHILD = """import os, sys
from cddfuse.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
finally:
    with open("/proc/self/status") as f:
        peak = [line.split()[1] for line in f if line.startswith("VmHWM:")][0]
    with open(os.environ["CDDFUSE_TEST_PEAK"], "w") as f:
        f.write(peak)
sys.exit(code)
"""


def run_child(*args: object, limit_as: int | None = None, timeout: float = 300) -> tuple[int, str, int]:
    """``cddfuse ARGS`` in a child process: (exit code, stderr, the child's own peak resident bytes; -1 when
    it was killed before it could say)."""
    import resource
    import tempfile

    def limits() -> None:  # pragma: no cover - runs in the child
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        env = dict(os.environ, OMP_NUM_THREADS="1", CDDFUSE_TEST_PEAK=str(peak_file))
        proc = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, preexec_fn=limits, env=env, timeout=timeout)
        peak = int(peak_file.read_text()) * 1024 if peak_file.exists() else -1
        return proc.returncode, proc.stderr.decode("utf-8", "replace"), peak


def no_temporaries(*folders: Path) -> None:
    for folder in folders:
        assert not [p for p in Path(folder).rglob("*") if "cddfuse-tmp" in p.name], "a temporary file was left"


@pytest.fixture
def sets(tmp_path):
    """Source folders (ir, vi), fused images of them and a bench test set, snapshotted before and after."""
    rng = np.random.default_rng(11)
    for stem in ("01", "02"):
        write_image(tmp_path / "ir" / f"{stem}.png", rng.random((44, 48)))
        write_image(tmp_path / "vi" / f"{stem}.png", rng.random((44, 48)))
        write_image(tmp_path / "fused" / f"{stem}.png", rng.random((44, 48)))
    before = snapshot(tmp_path / "ir", tmp_path / "vi", tmp_path / "fused")
    yield tmp_path
    after = snapshot(tmp_path / "ir", tmp_path / "vi", tmp_path / "fused")
    assert {k: v for k, v in after.items() if k in before} == before, "a source was changed"


def _command(kind: str, root: Path, out: Path) -> list[object]:
    """One command of every kind that writes a file, writing to ``out``."""
    if kind == "eval":
        return ["eval", root / "ir", root / "vi", root / "fused", "--metrics", "EN", "-o", out]
    if kind == "bench":
        return ["bench", root, "--method", "mean", "-o", out]
    if kind == "fuse":
        return ["fuse", root / "ir" / "01.png", root / "vi" / "01.png", "-o", out, "--method", "mean", "-q"]
    if kind == "align":
        return ["align", root / "ir" / "01.png", root / "ir" / "01.png", "-o", out, "--min-confidence", "0"]
    if kind == "prepare":
        return ["prepare", root / "ir", root / "vi", "-o", out, "--patch-size", "8", "--stride", "8", "-q",
                "--overwrite", "--contrast-threshold", "0"]
    raise AssertionError(kind)


_EXT = {"eval": ".csv", "bench": ".md", "fuse": ".png", "align": ".png", "prepare": ".h5"}
WRITERS = list(_EXT)


# ----------------------------------------------------------------------------- an output is never a source

@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("kind", ["eval", "bench"])
def test_report_output_is_a_source_file(capsys, sets, kind, how):
    """``eval -o`` and ``bench -o`` replaced a source with the metrics table, exit 0."""
    source = sets / "ir" / "01.png"
    target = source if how == "same" else sets / f"alias{_EXT[kind]}"
    if how == "symlink":
        target.symlink_to(source)
    elif how == "hardlink":
        os.link(source, target)
    refused(capsys, *_command(kind, sets, target), rc=2, says="a source is never overwritten")


def test_eval_output_is_a_fused_image(capsys, sets):
    refused(capsys, *_command("eval", sets, sets / "fused" / "02.png"), rc=2, says="source folder")


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_align_output_is_a_linked_source(capsys, sets, how):
    target = sets / "aligned.png"
    (target.symlink_to if how == "symlink" else lambda s: os.link(s, target))(sets / "ir" / "01.png")
    refused(capsys, *_command("align", sets, target), rc=2, says="is the IR source")


def test_prepare_output_is_a_file_of_a_source_folder(capsys, sets):
    (sets / "ir" / "cache.h5").write_bytes(b"my own notes")
    refused(capsys, *_command("prepare", sets, sets / "ir" / "cache.h5"), rc=2, says="source folder")
    assert (sets / "ir" / "cache.h5").read_bytes() == b"my own notes"


def test_export_output_is_the_weights(capsys, tmp_path, tiny_weights):
    pytest.importorskip("onnxruntime")
    alias = tmp_path / "w.onnx"
    os.link(tiny_weights, alias)
    before = Path(tiny_weights).read_bytes()
    refused(capsys, "export", "-o", alias, "--weights", alias, rc=2, says="is the weights source")
    assert Path(tiny_weights).read_bytes() == before


def test_train_run_would_replace_its_own_recipe(capsys, tiny_run, tmp_path):
    import yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    args = [str(a) for a in tiny_run]
    args[args.index("--config") + 1] = str(run / "config.yaml")
    refused(capsys, *args, rc=2, says="is the --config source")
    assert yaml.safe_load((run / "config.yaml").read_text()) == TRAIN_CONFIG


def test_video_output_is_a_linked_source(capsys, tmp_path):
    pytest.importorskip("av")
    video = make_video(tmp_path / "a.mp4", 32, 24)
    (tmp_path / "out.mp4").symlink_to(video)
    before = video.read_bytes()
    refused(capsys, "fuse", video, video, "-o", tmp_path / "out.mp4", "--method", "mean", rc=2, says="source")
    assert video.read_bytes() == before


# ----------------------------------------------------------------------------- devices, pipes, sockets, loops

def _special(kind: str, path: Path) -> Path:
    """A special file at ``path``: a null or full character device (a private node when root may make one,
    else the system's own, which a non-root run cannot replace), a pipe nobody reads, a block device, a
    socket, a symbolic link loop or a folder."""
    import socket
    import stat as S

    if kind in ("null", "full", "block"):
        if os.geteuid() != 0:
            if kind == "block":
                pytest.skip("making a block device node needs root")
            return Path(f"/dev/{kind}")
        minor = {"null": 3, "full": 7}.get(kind, 0)
        os.mknod(path, (S.S_IFBLK if kind == "block" else S.S_IFCHR) | 0o666,
                 os.makedev(7 if kind == "block" else 1, 250 if kind == "block" else minor))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        except OSError as e:  # pragma: no cover - path too long for a socket
            pytest.skip(f"cannot bind a socket here: {e}")
        sock.close()
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "folder":
        path.mkdir()
    return path


def _kind_of(path: Path) -> str:
    import stat as S

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    for name, test in (("chr", S.S_ISCHR), ("blk", S.S_ISBLK), ("fifo", S.S_ISFIFO), ("sock", S.S_ISSOCK),
                       ("link", S.S_ISLNK), ("dir", S.S_ISDIR), ("file", S.S_ISREG)):
        if test(mode):
            return name
    return "other"  # pragma: no cover


SPECIAL_OUTCOMES = {  # kind -> (exit code, what the line says)
    "full": (1, "No space left on device"),
    "fifo": (1, "a pipe that nobody reads"),
    "block": (2, "is a block device"),
    "socket": (2, "is a socket"),
    "loop": (1, "Too many levels of symbolic links"),
}


@pytest.mark.parametrize("special", list(SPECIAL_OUTCOMES))
@pytest.mark.parametrize("kind", WRITERS)
def test_output_that_is_not_a_regular_file_is_never_replaced(capsys, sets, kind, special):
    """``-o /dev/full`` became a 68-byte regular file (the atomic rename replaced the node): a device or a pipe
    is written through (or the write fails with its own error), anything else that is not a file refused."""
    target = _special(special, sets / f"special{_EXT[kind]}")
    was = _kind_of(target)
    rc, says = SPECIAL_OUTCOMES[special]
    refused(capsys, *_command(kind, sets, target), rc=rc, says=says)
    assert _kind_of(target) == was
    no_temporaries(sets)


@pytest.mark.parametrize("kind", WRITERS)
def test_output_to_a_null_device_is_written_through(capsys, sets, kind):
    """``-o /dev/null`` is a legitimate wish: the output is written through, the node stays a device."""
    target = _special("null", sets / f"null{_EXT[kind]}")
    capsys.readouterr()
    assert main([str(a) for a in _command(kind, sets, target)]) == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    assert _kind_of(target) == "chr"
    no_temporaries(sets)


def test_output_to_a_pipe_with_a_reader_gets_the_whole_table(sets):
    fifo = _special("fifo", sets / "table.csv")
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    rc, err, _ = run_child(*_command("eval", sets, fifo), timeout=120)
    table = reader.communicate(timeout=60)[0].decode()
    assert rc == 0 and "Traceback" not in err
    assert table.startswith("image,") and table.count("\n") >= 3 and _kind_of(fifo) == "fifo"


def test_tuning_cache_that_is_a_device_or_a_pipe(tmp_path, monkeypatch):
    """CDDFUSE_CACHE naming a pipe blocked the read forever; a device is written through, never replaced."""
    from cddfuse.engine import tuning

    fifo = _special("fifo", tmp_path / "cache.json")
    with pytest.warns(Warning, match="not a regular file"):
        assert tuning.load_cache(fifo) == {}
    null = _special("null", tmp_path / "null.json")
    tuning._store(tuning.DEFAULT_SETTINGS, null)
    assert _kind_of(null) == "chr" and _kind_of(fifo) == "fifo"


@pytest.mark.parametrize("content, says", [
    ("[" * 100_000, "nested too deeply"), ("x" * (2 << 20), "more than a tuning cache holds"),
    (b"\xff\xfe\x00".decode("latin-1"), "not"),
])
def test_tuning_cache_that_is_hostile_is_ignored_with_a_warning(tmp_path, content, says):
    from cddfuse.engine import tuning

    path = tmp_path / "tuning.json"
    path.write_text(content, encoding="latin-1")
    with pytest.warns(Warning, match=says):
        assert tuning.load_cache(path) == {}


@pytest.mark.parametrize("mode", ["pair", "pair-in-folder-loop", "folder", "folder-loop", "name-in-folder"])
def test_symlink_loops_as_outputs(capsys, folders, tmp_path, mode):
    """``RuntimeError: Symlink loop`` (31 lines) in pair and folder mode."""
    ir, vi = folders
    a, b = tmp_path / "a", tmp_path / "b"
    if mode == "pair":
        out = _special("loop", tmp_path / "loop.png")
        refused(capsys, *fuse(ir / "01.png", vi / "01.png", "-o", out), rc=1, says="Too many levels of symbolic")
    elif mode == "pair-in-folder-loop":
        a.symlink_to(b)
        b.symlink_to(a)
        refused(capsys, *fuse(ir / "01.png", vi / "01.png", "-o", a / "x.png"), rc=1, says="symbolic links")
    elif mode == "folder":
        out = _special("loop", tmp_path / "loopdir")
        refused(capsys, *fuse(ir, vi, "-o", out), rc=1, says="symbolic links")
    elif mode == "folder-loop":
        a.symlink_to(b)
        b.symlink_to(a)
        refused(capsys, *fuse(ir, vi, "-o", a / "out"), rc=1, says="symbolic links")
    else:  # one output name of a folder run is a loop: that pair fails, the others are written
        out = tmp_path / "out"
        out.mkdir()
        _special("loop", out / "02.png")
        capsys.readouterr()
        assert main([str(x) for x in fuse(ir, vi, "-o", out)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and "failed pairs: 02" in err
        assert (out / "01.png").is_file() and (out / "02.png").is_symlink()
    no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- image bombs in every format

def hdr_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A Radiance HDR whose header asks for ``width x height`` float pixels; ``rows`` run-length-encoded
    scanlines follow (``None``: all of them -- about 760 bytes a row for 12000 columns)."""
    head = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (height, width)
    runs = []
    for _ in range(4):
        left = width
        while left:
            n = min(127, left)
            runs.append(bytes([128 + n, 1]))
            left -= n
    line = bytes([2, 2, width >> 8, width & 255]) + b"".join(runs)
    return head + line * (height if rows is None else rows)


def tiff_with_size(path: Path, width: int, height: int, values: np.ndarray | None = None) -> Path:
    """A float RGB TIFF (whose header Pillow does not parse) rewritten to claim ``width x height``."""
    import cv2

    values = np.random.default_rng(5).random((6, 7, 3)).astype(np.float32) if values is None else values
    ok, enc = cv2.imencode(".tif", values)
    data = bytearray(enc.tobytes())
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[at:at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[at + 8:at + 12] = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
    path.write_bytes(bytes(data))
    return path


def _pillow_bomb(fmt: str, width: int, height: int) -> bytes:
    """A small file of format ``fmt`` whose header Pillow reads as ``width x height``."""
    if fmt == "ppm":
        return b"P6\n%d %d\n255\n" % (width, height) + b"\x00" * 64
    if fmt == "pgm":
        return b"P5\n%d %d\n65535\n" % (width, height) + b"\x00" * 64
    if fmt == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\x00" * 64
    if fmt == "sun":
        return struct.pack(">8I", 0x59A66A95, width, height, 8, width * height, 1, 0, 0) + b"\x00" * 64
    if fmt == "jpeg":
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
        return b"\xff\xd8" + sof + b"\xff\xd9"
    if fmt == "webp":  # a real lossy WebP whose VP8 frame header is rewritten
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="WEBP")
        data = bytearray(buf.getvalue())
        at = data.find(b"\x9d\x01\x2a") + 3
        data[at:at + 4] = struct.pack("<HH", width, height)
        return bytes(data)
    if fmt == "tiff":
        entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                   (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, width * height)]
        ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
        return b"II*\x00" + struct.pack("<I", 8) + ifd
    if fmt == "png":
        return png_header_only(width, height)
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["ppm", "pgm", "bmp", "sun", "jpeg", "webp", "tiff", "png"])
def test_pillow_formats_are_refused_from_the_header(capsys, pair, tmp_path, monkeypatch, fmt):
    import cddfuse.io.image as I

    bomb = tmp_path / f"bomb.{fmt}"
    bomb.write_bytes(_pillow_bomb(fmt, 16000, 16000))
    monkeypatch.setattr(I.cv2, "imdecode", lambda *a: pytest.fail("decoded before the size was checked"))
    refused(capsys, *fuse(bomb, pair[1], "-o", tmp_path / "o.png"), rc=1, says="16000x16000 pixels is more than")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("fmt", ["hdr", "hdr-rgbe", "pfm", "pfm-gray", "pam", "tiff-float-rgb", "bigtiff"])
def test_formats_pillow_cannot_read_are_sized_from_their_own_header(capsys, pair, tmp_path, monkeypatch, fmt):
    """Pillow cannot read a Radiance HDR header: OpenCV decoded all of a 20000x20000 HDR (9.7 GB) first."""
    import cddfuse.io.image as I

    bomb = tmp_path / f"bomb.{fmt.split('-')[0]}"
    if fmt == "hdr":
        bomb.write_bytes(hdr_bomb(20000, 20000, rows=2))
    elif fmt == "hdr-rgbe":
        bomb.write_bytes(b"#?RGBE\n\n-Y 20000 +X 20000\n" + b"\x00" * 64)
    elif fmt == "pfm":
        bomb.write_bytes(b"PF\n20000 20000\n-1\n" + b"\x00" * 64)
    elif fmt == "pfm-gray":
        bomb.write_bytes(b"Pf\n# a comment\n20000 20000\n-1\n" + b"\x00" * 64)
    elif fmt == "pam":
        bomb.write_bytes(b"P7\nWIDTH 20000\nHEIGHT 20000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + b"\0" * 64)
    elif fmt == "tiff-float-rgb":
        tiff_with_size(bomb, 20000, 20000)
    else:
        ifd = struct.pack("<Q", 2) + struct.pack("<HHQQ", 256, 16, 1, 20000) + struct.pack("<HHQQ", 257, 16, 1, 20000)
        bomb.write_bytes(b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + b"\0" * 8)
    monkeypatch.setattr(I.cv2, "imdecode", lambda *a: pytest.fail("decoded before the size was checked"))
    refused(capsys, *fuse(bomb, pair[1], "-o", tmp_path / "o.png"), rc=1, says="20000x20000 pixels is more than")


@pytest.mark.parametrize("fmt", ["gif", "ico", "unknown-magic"])
def test_formats_whose_size_is_not_read_safely_are_refused(capsys, pair, tmp_path, fmt):
    from PIL import Image

    path = tmp_path / f"x.{fmt}"
    if fmt == "unknown-magic":
        path.write_bytes(b"\x00\x01\x02\x03" * 64)
    else:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format=fmt.upper())
    refused(capsys, *fuse(path, pair[1], "-o", tmp_path / "o.png"), rc=1,
            says="not read" if fmt != "unknown-magic" else "not a readable image")


@pytest.mark.slow
def test_hdr_bomb_peak_memory(pair, tmp_path):
    """A 9 MB run-length-encoded 12000x12000 HDR: 3.7 GB peak before its refusal, now the baseline."""
    bomb = tmp_path / "bomb.hdr"
    bomb.write_bytes(hdr_bomb(12000, 12000))
    rc, err, peak = run_child(*fuse(bomb, pair[1], "-o", tmp_path / "o.png"))
    assert rc == 1 and "12000x12000 pixels is more than the limit" in one_line(err, "fuse")
    assert 0 < peak < BOMB_PEAK, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("fmt", ["hdr", "pfm", "tiff-float-rgb"])
def test_small_files_of_the_new_header_formats_are_read(tmp_path, fmt):
    import cv2

    values = np.random.default_rng(9).random((5, 7, 3)).astype(np.float32) * 0.9 + 0.05
    path = tmp_path / f"x.{fmt.split('-')[0]}"
    assert cv2.imwrite(str(path), values)
    assert probe_image(path).size == "7x5"
    img = read_image(path)
    assert img.shape == (5, 7, 3)
    tolerance = 0.01 if fmt == "hdr" else 1e-6  # RGBE keeps an 8-bit mantissa
    assert np.abs(img - values[..., ::-1]).max() < tolerance


def test_rgba_float_tiff_is_read(cli, pair, tmp_path):
    """OpenCV asserted (``ncn == img.channels()``) on a 4-channel float TIFF, which is listed as supported."""
    import cv2

    rgba = np.random.default_rng(6).random((20, 24, 4)).astype(np.float32)
    path = tmp_path / "rgba.tif"
    assert cv2.imwrite(str(path), rgba)
    img = read_image(path)
    assert img.shape == (20, 24, 3)
    assert np.abs(img - rgba[..., [2, 1, 0]]).max() < 1e-6
    err = cli(*fuse(path, pair[1], "-o", tmp_path / "o.png"), rc=0)
    assert "Assertion" not in err and "ERROR" not in err


def _corrupt_png(path: Path) -> Path:
    data = bytearray(write_image(path, np.random.default_rng(3).random((40, 50))).read_bytes())
    at = data.find(b"IDAT") + 12
    data[at:at + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return path


@pytest.mark.slow
def test_libpng_prints_nothing_of_its_own(pair, tmp_path):
    """libpng's own "IDAT: ..." line came before ours: the C library writes to file descriptor 2."""
    bad = _corrupt_png(tmp_path / "bad.png")
    rc, err, _ = run_child(*fuse(bad, bad, "-o", tmp_path / "o.png"))
    assert rc == 1 and "not a readable image" in one_line(err, "fuse") and "libpng error" not in err


def test_codec_lines_are_dropped_but_other_output_is_kept(capfd, tmp_path):
    from cddfuse.io.image import quiet_native_stderr

    with quiet_native_stderr():
        os.write(2, b"libpng error: IDAT: invalid stored block lengths\n")
        os.write(2, b"kept: a progress line of another thread\n")
    assert capfd.readouterr().err == "kept: a progress line of another thread\n"


def test_corrupt_jpeg_that_decodes_prints_no_warning(capfd, tmp_path):
    import cv2

    ok, enc = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (50, 60, 3), np.uint8))
    data = bytearray(enc.tobytes())
    data[len(data) // 2:len(data) // 2 + 20] = b"\x00" * 20
    (tmp_path / "c.jpg").write_bytes(bytes(data))
    assert read_image(tmp_path / "c.jpg").shape[:2] == (50, 60)
    assert "Corrupt JPEG" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- video honours --max-pixels

def make_video(path: Path, width: int, height: int, frames: int = 2) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "51"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("limit", [["--max-pixels", "700"], ["--max-pixels", "767"]])
def test_video_frames_above_max_pixels_are_refused(capsys, tmp_path, limit):
    video = make_video(tmp_path / "a.mp4", 32, 24)
    refused(capsys, "fuse", video, video, "-o", tmp_path / "o.mp4", "--method", "mean", *limit, rc=1,
            says="frames of 32x24 pixels are more than the limit")
    assert not (tmp_path / "o.mp4").exists()
    no_temporaries(tmp_path)


def test_video_frames_within_max_pixels_are_fused(capsys, tmp_path):
    video = make_video(tmp_path / "a.mp4", 32, 24)
    assert main(["fuse", str(video), str(video), "-o", str(tmp_path / "o.mp4"), "--method", "mean",
                 "--max-pixels", "768", "-q"]) == 0


@pytest.mark.slow
def test_video_bomb_peak_memory(tmp_path):
    """Two 4000x4000 H.264 frames (48 KB) with --max-pixels 1000000: exit 0 at a 1.16 GB peak before."""
    video = make_video(tmp_path / "big.mp4", 4000, 4000)
    rc, err, peak = run_child("fuse", video, video, "-o", tmp_path / "o.mp4", "--method", "mean",
                              "--max-pixels", "1000000", "-q")
    assert rc == 1 and "4000x4000" in one_line(err, "fuse")
    assert 0 < peak < BOMB_PEAK, f"peak {peak / 2**20:.0f} MiB"
    assert not (tmp_path / "o.mp4").exists()


# ----------------------------------------------------------------------------- weights files as bombs

def safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    """A safetensors file from ``{name: (dtype, shape, data bytes)}`` and string metadata."""
    import json

    header, data, offset = {"__metadata__": metadata}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _meta(**config) -> dict:
    import json

    return {"format": "cddfuse", "format_version": "1", "task": "ivf", "residual": "vis", "normalize": "minmax",
            "config": json.dumps(config)}


@pytest.mark.parametrize("content, says", [
    (safetensors_bytes({}, _meta(dim=2048, num_heads=8, encoder_blocks=64, decoder_blocks=64)), "missing key"),
    (safetensors_bytes({}, _meta(dim=100_000)), "dim=100000"),
    (safetensors_bytes({}, _meta(dim=64, encoder_blocks=10**9)), "encoder_blocks=1000000000"),
    (safetensors_bytes({}, _meta(dim=64, ffn_expansion=1e300)), "ffn_expansion"),
    (safetensors_bytes({}, _meta(dim="sixty-four")), "bad cddfuse metadata"),
    (safetensors_bytes({"encoder.patch_embed.proj.weight": ("F32", [64, 1, 3, 3], b"\0" * 10)}, _meta()),
     "does not fit the file"),
    (safetensors_bytes({"x": ("F32", [2**40, 2**40], b"")}, _meta()), "does not fit the file"),
    (safetensors_bytes({"x": ("F99", [1], b"\0")}, _meta()), "bad description"),
    (safetensors_bytes({"x": ("F32", [-1], b"")}, _meta()), "bad description"),
    (struct.pack("<Q", 2**62) + b"{}", "header length"),
    (struct.pack("<Q", 5) + b"{\xff\xfe}}", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (safetensors_bytes({}, {"format": "cddfuse", "config": "[" * 50000}), "bad cddfuse metadata"),
])
def test_safetensors_checked_before_anything_is_allocated(capsys, pair, tmp_path, monkeypatch, content, says):
    """A 252-byte file asking for dim 2048, 64+64 blocks built the model (2.4 GB and more) before any check."""
    import cddfuse.models.weights as W

    bad = tmp_path / "bomb.safetensors"
    bad.write_bytes(content)
    real = W.CDDFuse

    def shapes_only(*a):  # the network may be described on the meta device, never allocated
        if torch.get_default_device().type != "meta":
            pytest.fail("the network was built before the file was checked")
        return real(*a)

    monkeypatch.setattr(W, "CDDFuse", shapes_only)
    refused(capsys, "fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, rc=1, says=says)


def test_safetensors_with_a_wrongly_shaped_tensor_is_refused_unread(capsys, pair, tmp_path, tiny_weights,
                                                                      monkeypatch):
    from safetensors.torch import load_file, save_file

    from cddfuse.models.weights import read_safetensors_header

    _, meta = read_safetensors_header(tiny_weights)
    state = load_file(str(tiny_weights))
    state["encoder.patch_embed.proj.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    monkeypatch.setattr("safetensors.safe_open", lambda *a, **k: pytest.fail("tensors read before the check"))
    refused(capsys, "fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, rc=1, says="shape mismatch")


@pytest.mark.parametrize("command", ["fuse", "bench", "export"])
def test_pth_with_a_wrongly_shaped_tensor(capsys, tmp_path, command):
    """``IndexError`` in ``infer_config`` from fuse, bench and export."""
    bad = tmp_path / "rank1.pth"
    torch.save({"encoder.patch_embed.proj.weight": torch.zeros(3)}, bad)
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    write_image(tmp_path / "set" / "vi" / "01.png", np.zeros((8, 8)))
    args = {"fuse": ["fuse", tmp_path / "set" / "ir" / "01.png", tmp_path / "set" / "vi" / "01.png",
                     "-o", tmp_path / "o.png"],
            "bench": ["bench", tmp_path / "set"], "export": ["export", "-o", tmp_path / "o.onnx"]}[command]
    if command == "export":
        pytest.importorskip("onnxruntime")
    refused(capsys, *args, "--weights", bad, rc=1, says="cannot tell the network size")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("sizes", [dict(dim=5000), dict(encoder_blocks=300)])
def test_pth_whose_tensors_ask_for_a_huge_network(capsys, pair, tmp_path, sizes):
    state = {"encoder.patch_embed.proj.weight": torch.zeros(sizes.get("dim", 8), 1, 3, 3),
             "encoder.baseFeature.attn.scale": torch.zeros(2, 1, 1),
             "decoder.output.2.weight": torch.zeros(1, 4, 3, 3),
             "encoder.baseFeature.mlp.project_out.weight": torch.zeros(8, 8, 1, 1)}
    if "encoder_blocks" in sizes:
        state[f"encoder.encoder_level1.{sizes['encoder_blocks'] - 1}.norm1.weight"] = torch.zeros(8)
    bad = tmp_path / "huge.pth"
    torch.save(state, bad)
    refused(capsys, "fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, rc=1, says="must be a whole number")


def deflated_pth(path: Path, elements: int) -> Path:
    """A torch.save file whose one float32 storage of ``elements`` zeros is deflated (a few MB on disk)."""
    import zipfile

    small = path.with_suffix(".small")
    marker = 123457
    torch.save({"encoder.patch_embed.proj.weight": torch.zeros(marker)}, small)
    with zipfile.ZipFile(small) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            raw = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                raw = raw.replace(b"J" + struct.pack("<i", marker), b"J" + struct.pack("<i", elements))
                zout.writestr(info.filename, raw)
            elif "/data/" in info.filename:
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(entry, "w", force_zip64=True) as out:
                    chunk = bytes(1 << 22)
                    for _ in range(elements * 4 // len(chunk)):
                        out.write(chunk)
            else:
                zout.writestr(info.filename, raw)
    small.unlink()
    return path


@pytest.mark.slow
def test_deflated_pth_bomb_is_refused_from_the_zip_directory(pair, tmp_path):
    """A 1.4 MB deflated .pth holding a 1.5 GB tensor inflated to 1.77 GB, then a traceback."""
    bad = deflated_pth(tmp_path / "bomb.pth", 300 * 2**20)
    assert bad.stat().st_size < 20 * 2**20
    rc, err, peak = run_child("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad)
    assert rc == 1 and "decompression bomb" in one_line(err, "fuse")
    assert 0 < peak < BOMB_PEAK, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.slow
def test_weights_bomb_under_an_address_space_limit(pair, tmp_path):
    """Under ``ulimit -v`` the metadata bomb printed a traceback (PyTorch's allocation error)."""
    bad = tmp_path / "bomb.safetensors"
    bad.write_bytes(safetensors_bytes({}, _meta(dim=2048, num_heads=8, encoder_blocks=64, decoder_blocks=64)))
    rc, err, peak = run_child("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, limit_as=6 * 2**30)
    assert rc == 1 and "do not fit the CDDFuse network" in one_line(err, "fuse")
    assert 0 < peak < BOMB_PEAK, f"peak {peak / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------- configs and checkpoints

LAUGHS = "\n".join(["seed:", "  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"  - &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
                   + ["  - [" + ", ".join(["*i"] * 9) + "]"])  # 9 levels under seed: 9**10 values once expanded


@pytest.mark.parametrize("text, says", [
    (LAUGHS, "aliases (*a) are not accepted"),
    ("base: &b {lr: 0.1}\noptim:\n  <<: *b\n", "aliases (*b)"),
    ("seed: [1, 2\noptim: {lr: 1}\n", "is not valid YAML: expected ',' or ']', but got ':' at line 2, column 6"),
    ("seed: 1\n\tbad: tab\n", "is not valid YAML"),
    ("optim:\n  lr: .nan\n", "must be a finite number"),
    ("optim:\n  lr: .inf\n", "must be a finite number"),
    ("seed: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("seed: " + "9" * 100 + "\noptim: {lr: 1e999}\n", "must be a finite number"),
    ("model: [" + "1, " * 400_000 + "1]\n", "more than a config may have"),
    ("seed: !!python/object/apply:os.system [echo pwned]\n", "is not valid YAML"),
])
def test_hostile_yaml_configs(capsys, tmp_path, text, says):
    """A 700-byte "billion laughs" config hung train --print-config (2.3 GB and growing at 60 s)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    line = refused(capsys, "train", "--config", cfg, "--print-config", rc=2, says=says)
    assert "^" not in line and "<unicode string>" not in line


@pytest.mark.slow
def test_billion_laughs_peak_memory(tmp_path):
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text(LAUGHS)
    rc, err, peak = run_child("train", "--config", cfg, "--print-config", timeout=120)
    assert rc == 2 and "aliases" in one_line(err, "train")
    assert 0 < peak < BOMB_PEAK


def test_config_that_is_not_utf8(capsys, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"seed: \xff\xfe\n")
    refused(capsys, "train", "--config", cfg, "--print-config", rc=2, says="not UTF-8")


@pytest.mark.parametrize("override, says", [
    ("seed=*x", "aliases (*x)"), ("optim.lr=.nan", "finite"), ("optim.lr=-.inf", "finite"),
    ("model=" + "[" * 3000, "nested too deeply"), ("seed=" + "1" * (2 << 20), "more than a config may have"),
])
def test_hostile_set_values(capsys, override, says):
    refused(capsys, "train", "--set", override, "--print-config", rc=2, says=says)


@pytest.mark.slow
def test_long_bad_values_are_cut_in_the_message(capsys, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("device: [" + ", ".join(["x"] * 100_000) + "]\n")
    line = refused(capsys, "train", "--config", cfg, "--print-config", rc=2, says="config device must be")
    assert len(line) < 300


def test_resume_from_a_checkpoint_holding_code(capsys, tmp_path):
    """Refused safely, but in 6 lines repeating PyTorch's advice to set weights_only=False."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"format": "x", "evil": Evil()}, tmp_path / "run" / "checkpoints" / "last.pt")
    line = refused(capsys, "train", "--resume", tmp_path / "run", rc=1, says="refused to load")
    assert "weights_only" not in line and not marker.exists()


@pytest.mark.slow
def test_resume_from_a_deflated_checkpoint_bomb(capsys, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    deflated_pth(tmp_path / "run" / "checkpoints" / "last.pt", 64 * 2**20)
    refused(capsys, "train", "--resume", tmp_path / "run", rc=1, says="decompression bomb")


# ----------------------------------------------------------------------------- numbers on the command line

FLOAT_OPTIONS = [  # (command line before the value, option)
    (["fuse", "a.png", "b.png", "-o", "o.png"], "--align-min-confidence"),
    (["fuse", "a.mp4", "b.mp4", "-o", "o.mp4"], "--smoothing"),
    (["align", "a.png", "b.png"], "--min-confidence"),
    (["prepare", "a", "b", "-o", "c.h5"], "--contrast-threshold"),
    (["train", "--print-config"], "--lr"),
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
@pytest.mark.parametrize("before, option", FLOAT_OPTIONS, ids=[o for _, o in FLOAT_OPTIONS])
def test_every_float_option_refuses_nan_and_infinity(capsys, before, option, value):
    """``prepare --contrast-threshold nan`` was accepted (NaN compares false with every bound)."""
    refused(capsys, *before, f"{option}={value}", rc=2, says="expected a finite number")


@pytest.mark.parametrize("args, says", [
    (["prepare", "a", "b", "-o", "c.h5", "--contrast-threshold", "-0.1"], "must be >= 0"),
    (["prepare", "a", "b", "-o", "c.h5", "--patch-size", str(10**20)], "must be between 1 and"),
    (["prepare", "a", "b", "-o", "c.h5", "--workers", "100000"], "must be between 0 and 256"),
    (["fuse", "a.png", "b.png", "-o", "o.png", "--align-min-confidence", "1.5"], "must be <= 1"),
    (["train", "--print-config", "--lr", "0"], "must be > 0"),
    (["train", "--print-config", "--epochs", "-1", "5"], "must be between 0 and"),
    (["train", "--print-config", "--seed", str(2**64)], "must be between 0 and"),
    (["train", "--print-config", "--batch-size", "0"], "must be between 1 and"),
    (["tune", "--size", "100000x100000"], "at most 2048x2048"),
    (["tune", "--repeats", str(10**9)], "must be between 1 and 100"),
    (["tune", "--threads", "0"], "must be between 1 and 4,096"),
    (["fuse", "a.png", "b.png", "-o", "o.png", "--max-pixels", "0"], "must be at least 1"),
    (["eval", "a", "b", "c", "--metrics", "BOGUS"], "BOGUS"),
])
def test_number_options_out_of_range(capsys, args, says):
    refused(capsys, *args, rc=2, says=says)


@pytest.mark.parametrize("args, says", [
    (["--shard", "0/99999999999999999999"], "N may be at most"),
    (["--shard", "99999999999999999999/0"], "expected K/N"),
    (["--max-memory", "9" * 400 + "G"], "larger than any machine's memory"),
])
def test_huge_numbers_in_folder_mode(capsys, folders, tmp_path, args, says):
    """``--shard 0/99999999999999999999`` raised OverflowError."""
    refused(capsys, "fuse", *folders, "-o", tmp_path / "out", "--method", "max", *args, rc=2, says=says)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("duration", ["9" * 400, "9" * 400 + "d"])
def test_max_time_too_long_to_be_a_number(capsys, duration):
    refused(capsys, "train", "--print-config", "--max-time", duration, rc=2, says="finite time")


def test_eval_workers_bounded(capsys, sets):
    refused(capsys, "eval", sets / "ir", sets / "vi", sets / "fused", "--workers", "100000", rc=2,
            says="between 1 and 256")


def test_torch_allocation_failure_is_one_line(capsys, monkeypatch):
    """``tune --size`` within bounds can still meet a machine without the memory: one line, not PyTorch's."""
    from cddfuse.engine import tuning

    def fail(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(tuning, "tune", fail)
    refused(capsys, "tune", "--size", "2048x2048", rc=1, says="out of memory")


# ----------------------------------------------------------------------------- flat inputs

@pytest.mark.parametrize("value, method", [(1.0, "mean"), (0.0, "mean"), (1.0, "max"), (0.5, "cddfuse"),
                                           (0.0, "cddfuse")])
def test_flat_inputs_are_not_stretched_into_noise(capsys, tmp_path, value, method):
    """Two white images with --method mean came out black, two black ones with the network as grey noise
    (0-255, mean 202), with exit 0 and no word."""
    a = write_image(tmp_path / "a.png", np.full((24, 32), value))
    b = write_image(tmp_path / "b.png", np.full((24, 32), value))
    capsys.readouterr()
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "o.png"), "--method", method, "-q"]) == 0
    err = capsys.readouterr().err
    warnings_ = [line for line in err.splitlines() if line.strip()]
    assert len(warnings_) == 1 and warnings_[0].startswith("cddfuse fuse: warning: ") and "flat" in warnings_[0]
    out = read_image(tmp_path / "o.png")
    if method != "cddfuse":
        assert np.abs(out - value).max() < 1 / 255
    else:  # the network's own output, not stretched: its border response spans less than the full range
        assert out.max() - out.min() < 0.5


def test_a_flat_result_of_textured_sources_is_kept_and_warned_once(tmp_path):
    from cddfuse.errors import CDDFuseWarning

    rng = np.random.default_rng(0)
    a = rng.random((16, 16)).astype(np.float32)
    fuser = Fuser(method="mean")
    with pytest.warns(CDDFuseWarning, match="flat") as record:  # noqa: PT031 - the second call must not warn again
        first = fuser.fuse(a, 1 - a)  # (a + 1 - a) / 2 = 0.5 everywhere
        fuser.fuse(a, 1 - a)
    assert len(record) == 1 and np.abs(first - 0.5).max() < 1e-6


def test_textured_inputs_are_still_stretched(tmp_path):
    a = np.linspace(0.2, 0.4, 64, dtype=np.float32).reshape(8, 8)
    out = Fuser(method="mean").fuse(a, a)
    assert out.min() == 0 and out.max() == 1


@pytest.mark.parametrize("special", ["null", "fifo"])
def test_device_or_pipe_without_an_extension_gets_a_png(capsys, sets, special):
    """``fuse -o /dev/null`` (or ``/dev/stdout``) has no extension: the image is written through as PNG."""
    target = _special(special, sets / "node")
    reader = subprocess.Popen(["cat", str(target)], stdout=subprocess.PIPE) if special == "fifo" else None
    try:
        capsys.readouterr()
        assert main([str(a) for a in _command("fuse", sets, target)]) == 0, capsys.readouterr().err
    finally:
        data = reader.communicate(timeout=60)[0] if reader is not None else b""
    assert _kind_of(target) == ("chr" if special == "null" else "fifo")
    if reader is not None:
        assert data.startswith(b"\x89PNG")
