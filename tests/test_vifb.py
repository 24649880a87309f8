"""The VIFB protocol: parity with VIFB's published MATLAB values, known values, conventions, errors, CLI."""
from __future__ import annotations

import csv
import io
import json
import math
import os

import cv2
import numpy as np
import pytest

from cddfuse.cli.main import main
from cddfuse.errors import ImageReadError, UsageError
from cddfuse.metrics import METRICS, MetricInputError, UnknownMetricError, resolve_metrics, vifb
from cddfuse.metrics.vifb import VIFB_METRICS, VIFB_NAMES, compute_vifb_metrics, read_vifb_image
from cddfuse.metrics.vifb._common import freq_radius, rgb2gray_matlab, round_half_away

from .helpers import shared_path

# ------------------------------------------------------------------------------------------------ parity
#: Methods whose published values were not computed from the published images: added to VIFB later,
#: their values differ even for the metrics of the fused image alone (Entropy, Variance,
#: Avg_gradient), which depend on nothing but its pixels.
REPUBLISHED = ("SwinFusion", "YDTR")
#: For those two, the largest relative difference measured per metric, plus 5% (the test fails above it).
REPUBLISHED_TOL = {
    "Avg_gradient": 1.2e-3, "Cross_entropy": 5.5e-2, "Edge_intensity": 9.7e-4, "Entropy": 1.4e-3,
    "Mutinf": 1.1e-2, "Psnr": 4.1e-5, "Qabf": 4.2e-3, "Qcb": 1.7e-2, "Qcv": 1.5e-2, "Rmse": 4.7e-4,
    "Spatial_frequency": 1.7e-3, "Ssim": 7.9e-4, "Variance": 1.8e-3,
}


def _rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


def _digits_agree(ours: float, published: float) -> bool:
    """True when ``ours`` rounds to ``published``, which VIFB printed with 5 significant digits
    (``dlmwrite``): within half a unit of its last digit."""
    unit = 10.0 ** (math.floor(math.log10(abs(published))) - 4)
    return abs(ours - published) <= 0.5 * unit * (1 + 1e-9)


@pytest.fixture(scope="module")
def vifb_root():
    return shared_path("vifb")


@pytest.fixture(scope="module")
def parity(vifb_root):
    """``[(scene, method, metric, ours, published)]`` over every shared scene and method, all 13 metrics."""
    published = json.loads((vifb_root / "metrics.json").read_text())
    methods = sorted(d.name for d in (vifb_root / "fused").iterdir() if d.is_dir())
    rows = []
    for scene in sorted(published):
        ir = read_vifb_image(vifb_root / "ir" / f"{scene}.jpg")
        vi = read_vifb_image(vifb_root / "vi" / f"{scene}.jpg")
        for method in methods:
            fused = read_vifb_image(vifb_root / "fused" / method / f"{scene}.jpg")
            ours = compute_vifb_metrics(ir, vi, fused)
            rows += [(scene, method, m, ours[m], published[scene][method][m]) for m in VIFB_NAMES]
    return rows


def test_parity_on_one_scene(vifb_root):
    """The fast lane's share of the parity tests: one scene, three methods, all 13 metrics to VIFB's digits."""
    published = json.loads((vifb_root / "metrics.json").read_text())
    scene = sorted(published)[0]
    ir = read_vifb_image(vifb_root / "ir" / f"{scene}.jpg")
    vi = read_vifb_image(vifb_root / "vi" / f"{scene}.jpg")
    methods = [m for m in sorted(published[scene]) if m not in REPUBLISHED][:3]
    assert len(methods) == 3
    for method in methods:
        ours = compute_vifb_metrics(ir, vi, read_vifb_image(vifb_root / "fused" / method / f"{scene}.jpg"))
        bad = {m: (ours[m], published[scene][method][m]) for m in VIFB_NAMES
               if not _digits_agree(ours[m], published[scene][method][m])}
        assert not bad, (scene, method, bad)


@pytest.mark.slow  # all 275 triplets: about a minute on two cores
def test_parity_covers_every_case(parity):
    assert len(parity) == 11 * 25 * 13
    assert {r[2] for r in parity} == set(VIFB_NAMES)


@pytest.mark.slow  # all 275 triplets: about a minute on two cores
def test_parity_to_the_published_digits(parity):
    """23 of the 25 methods: every value (3289), rounded to VIFB's 5 significant digits, is the published one."""
    failures = []
    for scene, method, metric, ours, want in parity:
        if method in REPUBLISHED:
            continue
        if not _digits_agree(ours, want):
            failures.append(f"{scene} {method} {metric}: {ours!r} vs {want!r} ({_rel(ours, want):.1e})")
    assert not failures, "\n".join(failures)


@pytest.mark.slow  # all 275 triplets: about a minute on two cores
def test_parity_republished_methods(parity):
    """SwinFusion and YDTR: within the measured difference per metric (their published values belong to
    other versions of the images, see REPUBLISHED)."""
    worst: dict[str, float] = {m: 0.0 for m in VIFB_NAMES}
    for _, method, metric, ours, want in parity:
        if method in REPUBLISHED:
            worst[metric] = max(worst[metric], _rel(ours, want))
    over = {m: f"{v:.2e} > {REPUBLISHED_TOL[m]:.1e}" for m, v in worst.items() if v > REPUBLISHED_TOL[m]}
    assert not over, over
    # the differences are real: the fused-image-only metrics disagree, so the images differ
    assert worst["Variance"] > 1e-3 and worst["Entropy"] > 1e-3


# ------------------------------------------------------------------------------------------ known values
def test_round_half_away_and_rgb2gray():
    x = np.array([0.5, 1.5, 2.5, -0.5, 0.49999999999999994, 254.5])
    assert round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, 0.0, 255.0]
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.float64).T[:, None, :]
    assert rgb2gray_matlab(rgb, "round")[0, 0].tolist() == [76.0, 150.0, 29.0, 18.0]
    exact = rgb2gray_matlab(rgb, "exact")[0, 0]
    assert exact[0] == pytest.approx(255 * 0.298936021293775, abs=1e-12)
    assert exact[3] == pytest.approx(10 * 0.298936021293775 + 20 * 0.587043074451121 + 30 * 0.114020904255103)


def test_freqspace_grid():
    # freqspace: (k - floor(n/2)) * 2 / n; the returned grid is ifftshift-ed
    r = np.fft.fftshift(freq_radius((1, 4), 1.0, 1.0))[0]
    assert r.tolist() == [1.0, 0.5, 0.0, 0.5]
    r = np.fft.fftshift(freq_radius((5, 1), 2.0, 1.0))[:, 0]
    assert np.allclose(r, [1.6, 0.8, 0.0, 0.8, 1.6])


def test_fused_only_metrics_known_values():
    half = np.zeros((4, 4), np.uint8)
    half[:, 2:] = 255
    assert vifb.entropy(half) == pytest.approx(1.0)
    assert vifb.variance(np.array([[0, 2]], np.uint8)) == pytest.approx(1.0)  # a standard deviation
    # MATLAB gradient: one-sided on the border; the sum over (r-1)(c-1), not over the pixels
    assert vifb.avg_gradient(np.array([[0, 1], [0, 1]], np.uint8)) == pytest.approx(4 * math.sqrt(0.5))
    assert vifb.spatial_frequency(np.array([[0, 2]], np.uint8)) == pytest.approx(math.sqrt(2))
    # colour: the channels side by side, the seams between them count: R=0 | G=3 | B=3 -> sqrt(9 / 3)
    assert vifb.spatial_frequency(np.array([[[0, 3, 3]]], np.uint8)) == pytest.approx(math.sqrt(3))
    assert vifb.edge_intensity(np.full((5, 5), 7, np.uint8)) == 0.0


def test_edge_intensity_is_sobel_with_replicated_border():
    from scipy import ndimage

    img = np.random.default_rng(1).integers(0, 256, (9, 12)).astype(np.float64)
    k = np.array([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
    gx, gy = ndimage.correlate(img, k, mode="nearest"), ndimage.correlate(img, k.T, mode="nearest")
    assert vifb.edge_intensity(img) == pytest.approx(float(np.mean(np.hypot(gx, gy))), rel=1e-12)


def test_source_metrics_known_values():
    z = np.zeros((2, 2), np.uint8)
    two = np.full((2, 2), 2, np.uint8)
    # VIFB's "mse": sqrt(sum of squares) / (m n) = sqrt(16) / 4 = 1
    assert vifb.rmse(z, z, two) == pytest.approx(1.0)
    assert vifb.psnr(z, z, two) == pytest.approx(20 * math.log10(255))
    src = np.array([[0, 1], [0, 1]], np.uint8)
    fused = np.array([[0, 0], [0, 1]], np.uint8)
    want = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert vifb.cross_entropy(src, src, fused) == pytest.approx(want)
    # MI in nats, summed over the two sources: 2 ln 2 for a binary image with itself
    assert vifb.mutinf(src, src, src) == pytest.approx(2 * math.log(2))


def test_structural_metrics_on_identical_images():
    img = np.random.default_rng(2).integers(0, 256, (24, 24), dtype=np.uint8)
    assert vifb.ssim(img, img, img) == pytest.approx(2.0)
    assert vifb.qcv(img, img, img) == 0.0
    assert vifb.qcb(img, img, img) == pytest.approx(1.0)
    # equal strengths: VIFB's ratio is the (255-scaled) strength itself, so Qg = Tg, not Tg / (1 + e^-7.5)
    want = 0.9994 * 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))
    assert vifb.qabf(img, img, img) == pytest.approx(want, rel=1e-12)


def test_colour_is_per_channel_and_a_gray_source_broadcasts():
    rng = np.random.default_rng(3)
    ir = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    vi = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    fused = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    for name in ("Ssim", "Qabf", "Mutinf", "Psnr", "Qcb", "Qcv", "Cross_entropy"):
        fn = VIFB_METRICS[name].function
        per_channel = [fn(ir, vi[..., k], fused[..., k]) for k in range(3)]
        assert fn(ir, vi, fused) == pytest.approx(sum(per_channel) / 3, rel=1e-12), name
        # an infrared image stored as RGB with equal channels gives the same as the gray one
        assert fn(np.repeat(ir[..., None], 3, axis=2), vi, fused) == pytest.approx(fn(ir, vi, fused), rel=1e-12)


def test_gray_fused_reduces_colour_sources_like_each_metric():
    rng = np.random.default_rng(4)
    ir = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    vi = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    fused = rng.integers(0, 256, (16, 16), dtype=np.uint8)

    def gray(x, rule):
        return rgb2gray_matlab(np.moveaxis(x.astype(np.float64), 2, 0), rule)[0]

    # Ssim, Mutinf, Cross_entropy get the uint8 image: rgb2gray rounds
    for name in ("Ssim", "Mutinf", "Cross_entropy"):
        fn = VIFB_METRICS[name].function
        assert fn(ir, vi, fused) == fn(gray(ir, "round").astype(np.uint8), gray(vi, "round").astype(np.uint8), fused)
    # Psnr, Rmse, Qabf convert to double first: not rounded
    from cddfuse.metrics.vifb._common import Triplet

    t = Triplet(np.moveaxis(ir.astype(float), 2, 0), np.moveaxis(vi.astype(float), 2, 0), fused[None].astype(float))
    from cddfuse.metrics.vifb.basic import _psnr

    a, b = gray(ir, "exact"), gray(vi, "exact")
    assert not np.array_equal(a, np.round(a))
    assert vifb.psnr(ir, vi, fused) == _psnr(Triplet(a[None], b[None], fused[None].astype(float)))
    assert vifb.psnr(ir, vi, fused) == _psnr(t)


# ------------------------------------------------------------------------------------------------ errors
def test_input_errors():
    ok = np.zeros((16, 16), np.uint8)
    with pytest.raises(MetricInputError, match="8-bit"):
        vifb.ssim(ok, ok, np.full((16, 16), 0.5))
    with pytest.raises(MetricInputError, match="differ in size"):
        vifb.rmse(ok, ok, np.zeros((16, 15), np.uint8))
    with pytest.raises(MetricInputError, match="RGB"):
        vifb.entropy(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(MetricInputError, match="too small"):
        compute_vifb_metrics(ok[:8, :8], ok[:8, :8], ok[:8, :8], "Ssim")
    with pytest.raises(UnknownMetricError, match="known: Avg_gradient"):
        compute_vifb_metrics(ok, ok, ok, "VIF")
    with pytest.raises(UsageError):
        compute_vifb_metrics(ok, ok, ok, "EN", threads=0)


def test_names_and_protocols():
    assert VIFB_NAMES == ("Avg_gradient", "Cross_entropy", "Edge_intensity", "Entropy", "Mutinf", "Psnr", "Qabf",
                          "Qcb", "Qcv", "Rmse", "Spatial_frequency", "Ssim", "Variance")
    assert {n for n, i in VIFB_METRICS.items() if not i.higher_is_better} == {"Cross_entropy", "Qcv", "Rmse"}
    assert all(i.protocol == "vifb" for i in VIFB_METRICS.values())
    assert all(i.protocol == "paper" for i in METRICS.values())
    qualified = [i.qualified_name for i in [*METRICS.values(), *VIFB_METRICS.values()]]
    assert len(set(q.lower() for q in qualified)) == len(qualified) == 25
    # the paper's names keep working; each protocol resolves its own and refuses the other's prefix
    assert resolve_metrics("SSIM,qabf,paper.EN") == ["SSIM", "Qabf", "EN"]
    assert resolve_metrics("SSIM,qabf,EN,SD", protocol="vifb") == ["Ssim", "Qabf", "Entropy", "Variance"]
    assert vifb.resolve_vifb_metrics("vifb.Qcb") == ["Qcb"]
    with pytest.raises(UnknownMetricError, match="VIFB protocol"):
        resolve_metrics("vifb.Ssim")
    with pytest.raises(UnknownMetricError, match="paper protocol"):
        resolve_metrics("paper.SSIM", protocol="vifb")
    with pytest.raises(UsageError):
        resolve_metrics("EN", protocol="tno")


def test_threads_give_the_same_values():
    rng = np.random.default_rng(5)
    ir = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    vi, fused = rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    assert compute_vifb_metrics(ir, vi, fused, threads=1) == compute_vifb_metrics(ir, vi, fused, threads=3)


def test_read_vifb_image(tmp_path):
    rgb = np.random.default_rng(6).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])  # written BGR
    assert np.array_equal(read_vifb_image(tmp_path / "c.png"), rgb)
    gray3 = np.repeat(rgb[..., :1], 3, axis=2)  # gray content stored as RGB stays 3 channels, as imread
    cv2.imwrite(str(tmp_path / "g.png"), gray3)
    assert read_vifb_image(tmp_path / "g.png").shape == (6, 7, 3)
    cv2.imwrite(str(tmp_path / "w.png"), np.zeros((4, 4), np.uint16) + 300)
    with pytest.raises(ImageReadError, match="8-bit"):
        read_vifb_image(tmp_path / "w.png")


# --------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def vifb_folder(tmp_path):
    """A small VIFB-like folder: ir/ (gray), vi/ (colour), fused/A and fused/B (colour), 3 scenes."""
    rng = np.random.default_rng(7)
    root = tmp_path / "V"
    for d in ("ir", "vi", "fused/A", "fused/B", "mine"):
        (root / d).mkdir(parents=True)
    for s in ("s1", "s2", "s3"):
        ir = rng.integers(0, 256, (32, 40), dtype=np.uint8)
        vi = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "ir" / f"{s}.png"), ir)
        cv2.imwrite(str(root / "vi" / f"{s}.png"), vi)
        cv2.imwrite(str(root / "fused" / "A" / f"{s}.png"), np.maximum(vi, ir[..., None]))
        cv2.imwrite(str(root / "fused" / "B" / f"{s}.png"), vi)
        cv2.imwrite(str(root / "mine" / f"{s}.png"), (vi // 2 + ir[..., None] // 2))
    return root


def test_eval_vifb_formats(vifb_folder, tmp_path, capsys):
    v = vifb_folder
    args = ["eval", str(v / "ir"), str(v / "vi"), str(v / "fused" / "A"), "--protocol", "vifb"]
    out = tmp_path / "r.json"
    assert main([*args, "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "vifb" and res["metrics"] == list(VIFB_NAMES) and res["count"] == 3
    assert res["higher_is_better"]["Qcv"] is False
    want = compute_vifb_metrics(read_vifb_image(v / "ir" / "s2.png"), read_vifb_image(v / "vi" / "s2.png"),
                                read_vifb_image(v / "fused" / "A" / "s2.png"))
    assert res["images"]["s2"] == pytest.approx(want, rel=1e-12)
    capsys.readouterr()
    assert main([*args, "--metrics", "ssim,CE", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| image | Ssim \u2191 | Cross_entropy \u2193 |" in md and "**mean**" in md
    assert main([*args, "--metrics", "ssim,CE", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["image", "Ssim", "Cross_entropy"] and rows[-1] == ["direction", "higher", "lower"]
    assert float(rows[1][1]) == pytest.approx(vifb.ssim(read_vifb_image(v / "ir" / "s1.png"),
                                                        read_vifb_image(v / "vi" / "s1.png"),
                                                        read_vifb_image(v / "fused" / "A" / "s1.png")))


def test_bench_vifb_table(vifb_folder, capsys):
    v = vifb_folder
    assert main(["bench", str(v), "--protocol", "vifb", "--no-fusion", "--fused", f"mine={v / 'mine'}",
                 "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["methods"]) == ["A", "B", "mine"] and res["added"] == ["mine"]
    assert res["methods"]["B"]["count"] == 3
    # each row is the mean of the folder's per-image values
    ev = vifb.evaluate_vifb_folders(v / "ir", v / "vi", v / "mine")
    assert res["methods"]["mine"]["mean"] == pytest.approx(ev.mean, rel=1e-12)
    # a fusion run (the mean rule, on colour: luminance fused, colour of the visible image) is ranked too
    assert main(["bench", str(v), "--protocol", "vifb", "--method", "mean", "--limit", "2", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "mean over 2 images" in md and "| **mean (this run)** |" in md and "| A |" in md


def test_bench_vifb_usage_errors(vifb_folder, capsys):
    v = vifb_folder
    assert main(["bench", str(v), "--fused", f"x={v / 'mine'}"]) == 2  # paper protocol
    assert main(["bench", str(v), "--protocol", "vifb", "--no-fusion", "--fused", "nodir"]) == 2
    assert main(["bench", str(v), "--protocol", "vifb", "--no-fusion", "--fused", f"A={v / 'mine'}"]) == 2
    assert main(["bench", str(v / "ir"), "--protocol", "vifb", "--no-fusion"]) == 1  # not a VIFB folder
    err = capsys.readouterr().err
    assert "need --protocol vifb" in err and "NAME=DIR" in err and "used twice" in err and "ir/ and vi/" in err
    assert "Traceback" not in err


def test_eval_vifb_missing_fused_image(vifb_folder, capsys):
    v = vifb_folder
    os.remove(v / "fused" / "A" / "s3.png")
    assert main(["eval", str(v / "ir"), str(v / "vi"), str(v / "fused" / "A"), "--protocol", "vifb"]) == 1
    assert "1 of 3 fused images missing" in capsys.readouterr().err


def test_vifb_bench_keeps_the_images_it_scored(vifb_folder, tmp_path):
    """``out_dir`` keeps the 8-bit fused images that were evaluated, not images saturated to 0/255."""
    from cddfuse.bench.vifb import fuse_vifb_pairs
    from cddfuse.fusion import Fuser

    out = tmp_path / "kept"
    fuse_vifb_pairs(vifb_folder, method="mean", out_dir=out, names="EN", progress=False)
    fuser = Fuser(method="mean", color="auto", chroma="ycbcr")
    for s in ("s1", "s2", "s3"):
        want = np.rint(np.clip(fuser.fuse(vifb_folder / "ir" / f"{s}.png", vifb_folder / "vi" / f"{s}.png"),
                               0.0, 1.0) * 255).astype(np.uint8)
        kept = cv2.cvtColor(cv2.imread(str(out / f"{s}.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(kept, want), s
