"""``--method lite`` wherever ``--method cddfuse`` works: the Python API, ``cddfuse fuse`` (pair, folder,
``--shard``, torchrun, video), ``serve``, ``export`` / ``--backend onnx``, ``bench``; the one-line errors
of weights of the wrong kind and of options that CDDFuse-lite has no use for; and the hostile-input and
guarantee cases of ``tests/test_hostile.py`` that apply to a network, run with CDDFuse-lite.

The network here is a CDDFuse-lite with seeded random weights (fine for plumbing; never shipped): every
check compares the pipeline with the module itself, so it holds whatever the weights.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cddfuse.cli.main import main
from cddfuse.errors import CDDFuseError, CheckpointError, UsageError
from cddfuse.fusion import Fuser, fuse_folders, minmax_normalize
from cddfuse.io.color import split_luminance
from cddfuse.io.image import read_image, write_image

from .helpers import png_header_only

ROOT = Path(__file__).resolve().parents[1]
TNO = [("TNO/ir/07.png", "TNO/vi/07.png"), ("TNO/ir/19.png", "TNO/vi/19.png"), ("TNO/ir/20.png", "TNO/vi/20.png")]
ROAD = ("RoadScene/ir/FLIR_04269.jpg", "RoadScene/vi/FLIR_04269.jpg")
PET = ("MRI_PET/PET/11.png", "MRI_PET/MRI/11.png")


def make_lite(seed: int = 0):
    """A CDDFuse-lite whose every parameter is seeded-random (the fresh network starts as the mean rule)."""
    from cddfuse.models.lite import LiteConfig, create_lite

    torch.manual_seed(seed)
    model = create_lite(LiteConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def lite_weights(tmp_path_factory) -> Path:
    """Seeded random CDDFuse-lite weights (task ivf, teacher residual vis) as cddfuse safetensors."""
    from cddfuse.models.weights import save_lite_weights

    path = tmp_path_factory.mktemp("lite") / "lite_ivf.safetensors"
    return save_lite_weights(make_lite(0), path, task="ivf", residual="vis",
                             provenance={"purpose": "test fixture: seeded random weights"})


def _module(weights: Path, ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
    """The lite module itself on two luminance images."""
    from cddfuse.models.weights import load_lite_weights

    model, _ = load_lite_weights(weights)
    with torch.inference_mode():
        return model(torch.from_numpy(ya)[None, None], torch.from_numpy(yb)[None, None])[0, 0].numpy()


def _folders(root: Path, test_data: Path) -> tuple[Path, Path]:
    ir, vi = root / "ir", root / "vi"
    ir.mkdir(parents=True)
    vi.mkdir(parents=True)
    for i, (a, b) in enumerate(TNO):
        (ir / f"{i:02d}.png").symlink_to(test_data / a)
        (vi / f"{i:02d}.png").symlink_to(test_data / b)
    return ir, vi


# ----------------------------------------------------------------------------- the Python API

def test_fuser_lite_is_the_module_inside_the_shared_pipeline(test_data, lite_weights):
    """Luminance in, the module's output out, min-max normalised: the pipeline of the exact method."""
    a, b = (test_data / p for p in TNO[0])
    fuser = Fuser(weights=lite_weights, method="lite", device="cpu")
    assert (fuser.method, fuser.task, fuser.residual, fuser.info.architecture) == ("lite", "ivf", None, "lite")
    res = fuser.fuse_detailed(a, b)
    ya, yb = split_luminance(read_image(a, keep_integer=True)).y, split_luminance(read_image(b, keep_integer=True)).y
    want = _module(lite_weights, ya, yb)
    np.testing.assert_allclose(res.raw, want, rtol=0, atol=1e-5)
    assert np.array_equal(res.luminance, minmax_normalize(res.raw)) and res.image is res.luminance
    assert res.residual is None and res.chroma_from is None and res.image.shape == ya.shape


@pytest.mark.parametrize("case", ["roadscene", "pet"])
def test_colour_goes_back_as_for_the_exact_method(test_data, lite_weights, case):
    a, b = (test_data / p for p in (ROAD if case == "roadscene" else PET))
    task = "ivf" if case == "roadscene" else "mif"
    res = Fuser(weights=lite_weights, method="lite", task=task, device="cpu").fuse_detailed(a, b)
    color_source = (b if case == "roadscene" else a)
    assert res.image.ndim == 3 and res.chroma_from == ("b" if case == "roadscene" else "a")
    from cddfuse.io.color import merge_luminance

    chroma = split_luminance(read_image(color_source, keep_integer=True))
    mode = "saturation" if task == "ivf" else "ycbcr"
    assert np.array_equal(res.image, merge_luminance(res.luminance, chroma, mode))


def test_batches_equal_pairs_one_by_one(test_data, lite_weights):
    fuser = Fuser(weights=lite_weights, method="lite", device="cpu")
    pairs = [(test_data / TNO[1][0], test_data / TNO[1][1]), (test_data / TNO[2][0], test_data / TNO[2][1])]
    batch = fuser.fuse_batch(pairs)  # 19 and 20 are both 360x270: one batch of two
    for got, (a, b) in zip(batch, pairs):
        np.testing.assert_allclose(got, fuser.fuse(a, b), rtol=0, atol=1e-5)


def test_large_image_in_strips_equals_the_whole_image():
    """Above a megapixel the module runs its full-resolution part in strips; the result is the same."""
    from cddfuse.models import lite as L

    model = make_lite(1)
    rng = np.random.default_rng(3)
    a, b = (torch.from_numpy(rng.random((1, 1, 1100, 1000), dtype=np.float32)) for _ in range(2))
    with torch.inference_mode():
        stripped = model(a, b)
        saved, L.STRIP_PIXELS = L.STRIP_PIXELS, 1 << 40
        try:
            whole = model(a, b)
        finally:
            L.STRIP_PIXELS = saved
    assert torch.allclose(stripped, whole, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- weights of the wrong kind

def test_lite_weights_for_the_exact_method_are_one_line(cli, pair, tmp_path, lite_weights):
    with pytest.raises(CheckpointError, match="is CDDFuse-lite weights, not CDDFuse .exact. weights; use method="):
        Fuser(weights=lite_weights, device="cpu")
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", lite_weights, rc=1,
        says="is CDDFuse-lite weights, not CDDFuse (exact) weights; use --method lite")
    assert not (tmp_path / "o.png").exists()


def test_exact_weights_for_lite_are_one_line(cli, pair, tmp_path, tiny_weights):
    with pytest.raises(CheckpointError, match="is CDDFuse .exact. weights, not CDDFuse-lite weights"):
        Fuser(weights=tiny_weights, method="lite", device="cpu")
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--method", "lite", rc=1,
        says="use --method cddfuse, or pass lite weights")
    cli("export", "-o", tmp_path / "x.onnx", "--weights", tiny_weights, "--method", "lite", rc=1,
        says="not CDDFuse-lite weights")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "x.onnx").exists()


def test_authors_checkpoint_for_lite_is_one_line(cli, pair, tmp_path, tiny_weights):
    from cddfuse.models.weights import load_weights, state_dict_to_official

    model, _ = load_weights(tiny_weights)
    pth = tmp_path / "CDDFuse_IVF.pth"
    torch.save(state_dict_to_official(model.state_dict()), pth)
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", pth, "--method", "lite", rc=1,
        says="not CDDFuse-lite weights")


@pytest.mark.parametrize("args, says", [
    (["--residual", "vis"], "--residual vis: CDDFuse-lite has its teacher's residual built in"),
    (["--tile", "64"], "--tile 64: only the exact engine takes it"),
    (["--max-memory", "1G"], "--max-memory 1G: only the exact engine takes it"),
    (["--precision", "tf32"], "--precision tf32: needs a CUDA GPU"),
    (["--device", "tpu9"], "--device tpu9: not a device"),
])
def test_options_lite_has_no_use_for_are_usage_errors(cli, pair, tmp_path, lite_weights, args, says):
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", lite_weights, "--method", "lite", "--device", "cpu",
        *args, rc=2, says=says)
    assert not (tmp_path / "o.png").exists()


def test_cuda_without_a_gpu_with_lite(cli, pair, tmp_path, lite_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", lite_weights, "--method", "lite", "--device", "cuda",
        rc=2, says="--device cuda: no CUDA GPU is available")


def test_api_option_errors_name_the_parameter(lite_weights):
    for kwargs, parameter in ((dict(tile=64), "tile"), (dict(max_memory="1G"), "max_memory"),
                              (dict(residual="sum"), "residual"), (dict(normalize="zscore"), "normalize")):
        with pytest.raises(UsageError) as e:
            Fuser(weights=lite_weights, method="lite", **kwargs)
        assert e.value.parameter == parameter


def test_bf16_needs_bf16_units_on_cpu(cli, pair, tmp_path, lite_weights, monkeypatch):
    monkeypatch.setenv("CDDFUSE_CPU_FLAGS", "fpu sse2 avx2 fma avx512f")
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", lite_weights, "--method", "lite", "--device", "cpu",
        "--precision", "bf16", rc=2, says="needs AMX or AVX512-BF16")


def test_bf16_on_a_cpu_with_bf16_units_runs_close_to_fp32(test_data, lite_weights):
    from cddfuse.fusion.fuser import cpu_bf16_feature

    if cpu_bf16_feature() is None:
        pytest.skip("this CPU has neither AMX nor AVX512-BF16")
    a, b = (test_data / p for p in TNO[0])
    fp32 = Fuser(weights=lite_weights, method="lite", device="cpu").fuse(a, b)
    bf16 = Fuser(weights=lite_weights, method="lite", device="cpu", precision="bf16").fuse(a, b)
    assert bf16.shape == fp32.shape and np.all(np.isfinite(bf16)) and np.abs(bf16 - fp32).mean() < 0.02


def test_missing_bundled_weights_is_one_line(cli, pair, tmp_path, monkeypatch):
    import cddfuse.models.pretrained as P

    monkeypatch.setattr(P, "WEIGHTS_DIR", tmp_path / "empty")
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--method", "lite", rc=1,
        says="no bundled CDDFuse-lite weights for task 'ivf'")


# ----------------------------------------------------------------------------- cddfuse fuse

def test_cli_pair_equals_the_library(test_data, lite_weights, tmp_path, cli):
    a, b = (test_data / p for p in ROAD)
    cli("fuse", a, b, "-o", tmp_path / "o.png", "--method", "lite", "--weights", lite_weights, "-q", rc=0)
    want = write_image(tmp_path / "want.png", Fuser(weights=lite_weights, method="lite").fuse(a, b))
    got, expected = read_image(tmp_path / "o.png", keep_integer=True), read_image(want, keep_integer=True)
    assert got.shape == expected.shape == (265, 546, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1  # threads may round one level differently


def test_cli_folder_shards_and_rerun(test_data, lite_weights, tmp_path, cli, one_thread):
    ir, vi = _folders(tmp_path, test_data)
    common = ["--method", "lite", "--weights", lite_weights, "-q"]
    cli("fuse", ir, vi, "-o", tmp_path / "all", *common, rc=0)
    fuser = Fuser(weights=lite_weights, method="lite")
    for i, (a, b) in enumerate(TNO):
        want = write_image(tmp_path / f"want{i}.png", fuser.fuse(test_data / a, test_data / b))
        assert (tmp_path / "all" / f"{i:02d}.png").read_bytes() == want.read_bytes()
    for k in ("0/2", "1/2"):
        cli("fuse", ir, vi, "-o", tmp_path / "sharded", *common, "--shard", k, rc=0)
    files = {p.name: p.read_bytes() for p in (tmp_path / "sharded").iterdir()}
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "all").iterdir()}
    err = cli("fuse", ir, vi, "-o", tmp_path / "all", "--method", "lite", "--weights", lite_weights, rc=0)
    assert "0 fused, 3 already done (skipped)" in err


def test_fuse_folders_with_a_lite_factory_loads_nothing_when_all_is_done(test_data, lite_weights, tmp_path):
    ir, vi = _folders(tmp_path, test_data)
    fuse_folders(lambda: Fuser(weights=lite_weights, method="lite"), ir, vi, tmp_path / "out")
    report = fuse_folders(lambda: pytest.fail("a model was loaded"), ir, vi, tmp_path / "out")
    assert report.skipped == ["00", "01", "02"]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(test_data, lite_weights, tmp_path, cli, one_thread):
    ir, vi = _folders(tmp_path, test_data)
    common = ["--method", "lite", "--weights", str(lite_weights), "-q"]
    cli("fuse", ir, vi, "-o", tmp_path / "one", *common, rc=0)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "-o", str(tmp_path / "two"), *common]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert f"2 processes: 3 fused, 0 already done (skipped), 0 failed, 0 unmatched -> {tmp_path / 'two'}" \
        in job.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()} == \
        {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}


def test_video_is_the_image_pipeline_frame_by_frame(test_data, lite_weights, tmp_path, capsys):
    av = pytest.importorskip("av")
    from cddfuse.io.video import VideoWriter

    clips = {}
    for side in ("ir", "vi"):
        img = cv2.imread(str(test_data / "TNO" / side / "01.png"), cv2.IMREAD_GRAYSCALE)
        with VideoWriter(tmp_path / f"{side}.mp4", Fraction(25)) as out:
            for i in range(5):
                out.write(np.ascontiguousarray(img[40 + 3 * i:88 + 3 * i, 30 + 6 * i:94 + 6 * i]))
        clips[side] = tmp_path / f"{side}.mp4"
    common = [str(clips["ir"]), str(clips["vi"]), "--method", "lite", "--weights", str(lite_weights)]
    assert main(["fuse", *common, "-o", str(tmp_path / "frames"), "--temporal", "frame", "--ext", ".npy"]) == 0
    assert ": 5 frames, .npy frames, normalisation frame" in capsys.readouterr().err
    fuser = Fuser(weights=lite_weights, method="lite")
    with av.open(str(clips["ir"])) as ca, av.open(str(clips["vi"])) as cb:
        decoded = list(zip([f.to_ndarray(format="gray") for f in ca.decode(video=0)],
                           [f.to_ndarray(format="gray") for f in cb.decode(video=0)]))
    for i, (a, b) in enumerate(decoded):
        np.testing.assert_allclose(np.load(tmp_path / "frames" / f"{i:06d}.npy"), fuser.fuse(a, b), rtol=0, atol=1e-5)
    assert main(["fuse", *common, "-o", str(tmp_path / "fused.mp4"), "-q"]) == 0
    with av.open(str(tmp_path / "fused.mp4")) as c:
        assert len(list(c.decode(video=0))) == 5


# ----------------------------------------------------------------------------- export and ONNX Runtime

def test_export_lite_runs_in_onnx_runtime_like_torch(test_data, lite_weights, tmp_path, cli):
    """ONNX Runtime output = the torch module within 1e-4 (the export's own check) on a real image."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "lite.onnx"
    err = cli("export", "-o", out, "--method", "lite", "--weights", lite_weights, rc=0)
    assert err == ""
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert meta["cddfuse.method"] == "lite" and meta["cddfuse.residual"] == "built in (vis)"
    a, b = (test_data / p for p in TNO[1])
    ya, yb = split_luminance(read_image(a, keep_integer=True)).y, split_luminance(read_image(b, keep_integer=True)).y
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["fused"], {"a": ya[None, None], "b": yb[None, None]})[0][0, 0]
    want = Fuser(weights=lite_weights, method="lite").fuse_luminance(ya, yb)
    assert got.shape == want.shape == (270, 360)
    assert np.abs(got - want).max() <= 1e-4
    cli("export", "-o", tmp_path / "r.onnx", "--method", "lite", "--weights", lite_weights, "--residual", "vis", rc=2,
        says="--residual vis: CDDFuse-lite has its teacher's residual built in")


def test_onnx_backend_with_lite(test_data, lite_weights):
    pytest.importorskip("onnxruntime")
    a, b = (test_data / p for p in TNO[2])
    torch_out = Fuser(weights=lite_weights, method="lite").fuse_detailed(a, b)
    onnx_out = Fuser(weights=lite_weights, method="lite", backend="onnx").fuse_detailed(a, b)
    assert np.abs(onnx_out.raw - torch_out.raw).max() <= 1e-4
    assert np.abs(onnx_out.image - torch_out.image).max() <= 1e-3


# ----------------------------------------------------------------------------- bench

def test_bench_prints_a_lite_row_beside_the_papers(test_data, lite_weights, capsys):
    from cddfuse.bench.paper import run_bench

    capsys.readouterr()
    assert main(["bench", str(test_data / "TNO"), "--method", "lite", "--weights", str(lite_weights),
                 "--limit", "1"]) == 0
    captured = capsys.readouterr()
    rows = [line.split("  ")[0] for line in captured.out.splitlines()]
    assert "this run: CDDFuse-lite (lite_ivf.safetensors)" in rows and "CDDFuse paper (IVF weights)" in rows
    assert "IVF weights (residual built in)" in captured.out and "Traceback" not in captured.err
    with pytest.raises(UsageError, match="only the networks"):
        run_bench(test_data / "TNO", method="max", weights=lite_weights, limit=1)


# ----------------------------------------------------------------------------- serve

def test_serve_offers_lite_beside_the_exact_model(tiny_weights, lite_weights, pair, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from cddfuse.serve.app import OPENAPI, create_app

    files = {"a": ("a.png", pair[0].read_bytes(), "image/png"), "b": ("b.png", pair[1].read_bytes(), "image/png")}
    app = create_app(lambda: Fuser(weights=tiny_weights, device="cpu"), lite_weights=lite_weights)
    with TestClient(app) as c:
        assert c.get("/api/health").json()["methods"] == ["cddfuse", "lite"]
        info = c.get("/api/info").json()
        assert info["methods"] == ["cddfuse", "lite"] and info["method"] == "cddfuse"
        assert info["method_weights"]["lite"]["file"] == lite_weights.name
        r = c.post("/api/fuse", files=files, data={"method": "lite", "format": "npy"})
        assert r.status_code == 200, r.text
        want = Fuser(weights=lite_weights, method="lite").fuse(*pair)
        np.testing.assert_allclose(np.load(io.BytesIO(r.content)), want, rtol=0, atol=1e-6)
        exact = c.post("/api/fuse", files=files, data={"format": "npy"})
        assert np.array_equal(np.load(io.BytesIO(exact.content)), Fuser(weights=tiny_weights).fuse(*pair))
        bad = c.post("/api/fuse", files=files, data={"method": "fast"})
        assert bad.status_code == 400 and bad.json()["code"] == "bad_option" and "method='fast'" in bad.json()["error"]
    assert "lite" in OPENAPI["paths"]["/api/fuse"]["post"]["requestBody"]["content"]["multipart/form-data"][
        "schema"]["properties"]["method"]["enum"]
    page = (ROOT / "src/cddfuse/serve/static/index.html").read_text()
    assert '<option value="lite">' in page


def test_serve_lite_only_and_unavailable_method(lite_weights, pair, monkeypatch, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    import cddfuse.models.pretrained as P
    from cddfuse.serve.app import create_app

    monkeypatch.setattr(P, "WEIGHTS_DIR", tmp_path / "empty")  # no bundled lite weights to offer
    files = {"a": ("a.png", pair[0].read_bytes(), "image/png"), "b": ("b.png", pair[1].read_bytes(), "image/png")}
    with TestClient(create_app(weights=lite_weights, method="lite", device="cpu")) as c:
        assert c.get("/api/info").json()["methods"] == ["lite"]
        assert c.post("/api/fuse", files=files).status_code == 200
        r = c.post("/api/fuse", files=files, data={"method": "cddfuse"})
        assert r.status_code == 400 and r.json()["code"] == "method_unavailable"


# ----------------------------------------------------------------------------- hostile input, with lite

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_lite_weights_with_non_finite_tensors(cli, pair, tmp_path, value):
    from cddfuse.models.weights import save_lite_weights

    model = make_lite(2)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = value
    bad = save_lite_weights(model, tmp_path / "bad.safetensors", task="ivf", residual="vis")
    cli("fuse", *pair, "-o", tmp_path / "out.png", "--weights", bad, "--method", "lite", rc=1,
        says="NaN or infinite values")
    assert not (tmp_path / "out.png").exists()


def test_non_finite_lite_output_is_an_error_not_an_image(cli, pair, tmp_path, lite_weights, monkeypatch):
    from cddfuse.models.lite import CDDFuseLite

    monkeypatch.setattr(CDDFuseLite, "forward", lambda self, a, b: torch.full_like(a, float("nan")))
    with pytest.raises(CDDFuseError, match="NaN or infinite"):
        Fuser(weights=lite_weights, method="lite").fuse(*pair)
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", lite_weights, "--method", "lite", rc=1,
        says="NaN or infinite")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("content", [
    b"", b"\x00" * 100, bytes(range(256)) * 10, png_header_only(10, 10), b"<html>not found</html>",
])
def test_lite_weights_that_are_not_checkpoints(cli, pair, tmp_path, content):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(content)
    err = cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, "--method", "lite", rc=1)
    assert "not a PyTorch checkpoint or safetensors file" in err or "cannot read as" in err


def test_lite_weights_holding_code_run_nothing(cli, pair, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    torch.save({"DIDF_Encoder": Evil()}, bad)
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, "--method", "lite", rc=1, says="refused to load")
    assert not marker.exists()


@pytest.mark.parametrize("make", ["folder", "missing", "truncated"])
def test_lite_weights_path_problems(cli, pair, tmp_path, lite_weights, make):
    target = tmp_path / "w.safetensors"
    if make == "folder":
        target.mkdir()
    elif make == "truncated":
        target.write_bytes(lite_weights.read_bytes()[:500])
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", target, "--method", "lite", rc=1)
    assert not (tmp_path / "o.png").exists()


def test_lite_weights_with_a_rule(cli, pair, tmp_path, lite_weights):
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", lite_weights, "--method", "max", rc=2,
        says="only used with --method cddfuse or lite")


@pytest.mark.parametrize("target", ["ir", "vi"])
def test_output_is_a_source_with_lite(cli, pair, target, lite_weights):
    ir, vi = pair
    cli("fuse", ir, vi, "-o", ir if target == "ir" else vi, "--weights", lite_weights, "--method", "lite", rc=2,
        says="a source is never overwritten")


def test_bomb_header_is_refused_before_decoding_with_lite(cli, pair, tmp_path, lite_weights):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(40000, 40000))
    cli("fuse", bomb, pair[1], "-o", tmp_path / "o.png", "--weights", lite_weights, "--method", "lite", rc=1,
        says="more than the limit")


def test_full_disk_in_pair_mode_leaves_nothing_with_lite(cli, pair, tmp_path, lite_weights, monkeypatch):
    import errno

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cddfuse._fileutil.os.fsync", full)
    cli("fuse", *pair, "-o", tmp_path / "out.png", "--weights", lite_weights, "--method", "lite", rc=1,
        says="No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_folder_with_a_bad_file_among_good_ones_with_lite(cli, test_data, tmp_path, lite_weights):
    ir, vi = _folders(tmp_path, test_data)
    (ir / "zz.png").write_text("not an image")
    (vi / "zz.png").symlink_to(test_data / TNO[0][1])
    err = cli("fuse", ir, vi, "-o", tmp_path / "out", "--weights", lite_weights, "--method", "lite", rc=1)
    assert "3 fused, 0 already done (skipped), 1 failed" in err and "not a readable image" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00.png", "01.png", "02.png"]


def test_api_rejects_bad_arrays_with_lite(lite_weights):
    fuser = Fuser(weights=lite_weights, method="lite")
    for array, says in ((np.zeros((0, 5), np.float32), "empty image"), (np.full((4, 4), np.nan, np.float32),
                                                                       "NaN or infinite"),
                        (np.zeros((4, 4), np.int64), "unsupported dtype")):
        with pytest.raises(CDDFuseError, match=says):
            fuser.fuse(array, np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (33, 65)])
def test_any_size_including_tiny_ones(lite_weights, shape):
    rng = np.random.default_rng(0)
    out = Fuser(weights=lite_weights, method="lite").fuse(rng.random(shape), rng.random(shape))
    assert out.shape == shape and np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


@pytest.mark.slow
def test_two_folder_runs_into_one_output_folder_with_lite(test_data, lite_weights, tmp_path):
    """Two runs at once, same output folder: every output complete and equal to a single run's."""
    ir, vi = _folders(tmp_path, test_data)
    args = [sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "--weights", str(lite_weights),
            "--method", "lite", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen(args + ["-o", str(tmp_path / "shared")], stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert subprocess.run(args + ["-o", str(tmp_path / "alone")], env=env).returncode == 0
    for name in ("00.png", "01.png", "02.png"):
        assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


@pytest.mark.slow
def test_memory_of_a_4096_pair_is_bounded(tmp_path, lite_weights):
    """A 4096 x 4096 gray pair through the whole command in a fresh process stays under 1 GiB peak (RSS)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux) for the child's own peak RSS")
    rng = np.random.default_rng(0)
    for side in ("ir", "vi"):
        cv2.imwrite(str(tmp_path / f"{side}.png"), rng.integers(0, 256, (4096, 4096), dtype=np.uint8))
    # VmHWM: the child's own peak (getrusage's ru_maxrss carries this test process's peak over fork and exec)
    code = ("import re, sys; from cddfuse.cli.main import main; rc = main(sys.argv[1:]); "
            "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")
    env = dict(os.environ, OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    job = subprocess.run([sys.executable, "-c", code, "fuse", str(tmp_path / "ir.png"), str(tmp_path / "vi.png"),
                          "-o", str(tmp_path / "o.png"), "--method", "lite", "--weights", str(lite_weights), "-q"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stderr[-2000:]
    peak_mib = int(job.stdout.split()[-1]) / 1024
    assert peak_mib < 1024, f"peak {peak_mib:.0f} MiB"
    assert read_image(tmp_path / "o.png").shape == (4096, 4096)
