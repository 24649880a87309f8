"""Fusion metrics: the authors' reference values, conventions, input checks and published rows."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cddfuse.metrics as M
from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.metrics import compute_metrics
from cddfuse.metrics.paper import BASELINE_ROWS, COLUMNS, PAPER_ROWS, reference_rows

from .helpers import shared_path

NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE")
REL_TOL = 1e-6  # every reference value is matched to this relative tolerance (see docs/metrics.md)



@pytest.fixture(scope="module")
def reference():
    """[(case dict from metrics_set1.json, a, b, f)] for the five reference pairs."""
    arrays = np.load(shared_path("reference", "metrics_set1.npz"))
    cases = json.loads(shared_path("reference", "metrics_set1.json").read_text())
    return [(c, arrays[f"case{c['case']}_a"], arrays[f"case{c['case']}_b"], arrays[f"case{c['case']}_f"])
            for c in cases]


def _rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


# ---------------------------------------------------------------- reference values of the authors' code
def test_reference_values_all_metrics(reference):
    assert len(reference) == 5
    failures = []
    for case, a, b, f in reference:
        got = compute_metrics(a, b, f)
        assert list(got) == list(NAMES)
        for name in NAMES:
            want = case["metrics"][name]
            if not _rel(got[name], want) <= REL_TOL:
                failures.append(f"case {case['case']} {name}: {got[name]!r} vs {want!r} ({_rel(got[name], want):.1e})")
    assert not failures, "\n".join(failures)


def test_public_functions_match_reference(reference):
    """Each documented function on its own (not only through compute_metrics), on a 256x256 case."""
    case, a, b, f = reference[3]  # MRI_CT 11, max rule
    want = case["metrics"]
    single = {"EN": M.entropy, "SD": M.standard_deviation, "SF": M.spatial_frequency, "AG": M.average_gradient}
    pair = {"MI": M.mutual_information, "SCD": M.scd, "VIF": M.vif, "Qabf": M.qabf, "SSIM": M.ssim,
            "CC": M.correlation_coefficient, "PSNR": M.psnr, "MSE": M.mse}
    for name, fn in single.items():
        assert _rel(fn(f), want[name]) <= REL_TOL, name
        assert M.METRICS[name].function is fn
    for name, fn in pair.items():
        assert _rel(fn(a, b, f), want[name]) <= REL_TOL, name
        assert M.METRICS[name].function is fn


def test_inputs_of_any_dtype_give_the_same_values(reference):
    case, a, b, f = reference[4]
    base = compute_metrics(a, b, f)
    for dt in (np.float32, np.float64, np.int32):
        got = compute_metrics(a.astype(dt), b.astype(dt), f.astype(dt))
        assert got == base, dt


def test_ssim_float32_is_the_authors_float64_is_close(reference):
    # float32 with scikit-image's operation order reproduces the reference to the last bits; exact
    # (float64) arithmetic differs by up to a few 1e-6 because C1, C2 are tiny with data_range = 2
    worst = 0.0
    for case, a, b, f in reference:
        want = case["metrics"]["SSIM"]
        assert _rel(M.ssim(a, b, f), want) <= 1e-9
        worst = max(worst, _rel(M.ssim(a, b, f, dtype=np.float64), want))
    assert 1e-7 < worst < 1e-5


def test_ssim_data_range_changes_constants(reference):
    case, a, b, f = reference[2]
    textbook = M.ssim(a, b, f, data_range=255)
    assert textbook != pytest.approx(case["metrics"]["SSIM"], rel=1e-3)
    assert -2.0 <= textbook <= 2.0


# ---------------------------------------------------------------- the authors' gray conversion
def test_read_gray_gives_the_reference_arrays(reference):
    cases = {c["case"]: (c, a, b) for c, a, b, _ in reference}
    test_dir = shared_path("data", "test")
    for i in (0, 2, 4):  # TNO RGB PNG, RoadScene gray JPEG + colour JPEG, MRI_PET pseudo-colour PET
        c, a, b = cases[i]
        ga, gb = M.read_gray(test_dir / c["a"]), M.read_gray(test_dir / c["b"])
        assert ga.dtype == np.float32 and ga.ndim == 2
        np.testing.assert_array_equal(ga, a)
        np.testing.assert_array_equal(gb, b)


def test_rgb_to_gray_matches_read_gray():
    import cv2

    path = shared_path("data", "test", "MRI_PET", "PET", "12.png")
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(M.rgb_to_gray(rgb), M.read_gray(path))
    np.testing.assert_array_equal(M.rgb_to_gray(rgb[..., ::-1], order="BGR"), M.read_gray(path))
    assert len(np.unique(rgb[..., 0] - rgb[..., 1])) > 1  # really colour


def test_read_gray_errors(tmp_path):
    """The metrics' reader fails like every reader of the package (cddfuse.io.image.probe_image first)."""
    with pytest.raises(CDDFuseError, match="missing.png: no such file"):
        M.read_gray(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(CDDFuseError, match="junk.png: not a readable image"):
        M.read_gray(tmp_path / "junk.png")


# ---------------------------------------------------------------- conventions, checked by construction
def test_vif_window_is_separable_as_used():
    from cddfuse.metrics.vif import _taps

    for scale in range(1, 5):
        win = M.vif_window(scale)
        n = 2 ** (5 - scale) + 1
        assert win.shape == (n, n)
        assert win.sum() == pytest.approx(1.0, abs=1e-15)
        np.testing.assert_allclose(np.outer(_taps(scale), _taps(scale)), win, rtol=1e-14, atol=0)


def test_mi_uses_exact_values_as_labels(reference):
    case, a, b, f = reference[1]
    # a one-to-one relabelling of the values (non-integers: the general path) leaves MI unchanged
    relabelled = M.mutual_information(a / 3.0 + 0.1, b * 1.5, f / 7.0)
    assert relabelled == pytest.approx(case["metrics"]["MI"], rel=1e-12)
    # merging two values changes it: no binning
    assert M.mutual_information(a, b, f // 2) != pytest.approx(case["metrics"]["MI"], rel=1e-3)


def test_entropy_histogram_of_rounded_values(reference):
    f = np.array([[0.4, 0.6], [254.6, 255.0]])  # rounds to 0, 1, 255, 255
    assert M.entropy(f) == pytest.approx(1.5)
    case, _, _, f8 = reference[0]
    # non-integer input takes the rounding path, 8-bit input the histogram fast path: same value
    assert M.entropy(f8 + 0.3) == M.entropy(f8) == pytest.approx(case["metrics"]["EN"], rel=1e-12)


def test_average_gradient_borders_one_sided():
    f = np.array([[0.0, 1.0, 4.0, 9.0]] * 3)  # x-gradients: 1, 2, 4, 5 (one-sided, central, central, one-sided)
    want = np.mean(np.sqrt(np.array([1.0, 2.0, 4.0, 5.0]) ** 2 / 2))
    assert M.average_gradient(f) == pytest.approx(want, rel=1e-15)


def test_qabf_orientation_and_equal_strength_quirk():
    from cddfuse.metrics.qabf import _edges, _preservation

    img = np.zeros((5, 5), np.float32)
    img[:, 3:] = 10.0
    g, a = _edges(img)
    assert a[0, 0] == pytest.approx(np.pi / 2)  # flat: Sx = 0
    # equal nonzero strengths: the authors' code uses the strength itself as the ratio (not 1)
    gs = np.full((1, 1), 40.0, np.float32)
    q = _preservation(gs, np.zeros_like(gs), gs, np.zeros_like(gs))
    assert q[0, 0] == pytest.approx(0.9994 * 0.9879 / (1 + np.exp(-22 * 0.2)), rel=1e-6)


def test_nan_cases_follow_the_authors():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 255, (48, 48))
    flat = np.full((48, 48), 7.0)
    assert np.isnan(M.scd(a, flat, flat))  # F - B constant: correlation undefined
    assert M.vif(flat, flat, flat) == 2.0  # 0/0 for each source counts as 1
    assert M.psnr(a, a, a) == float("inf")


# ---------------------------------------------------------------- names, errors
def test_registry_names_and_directions():
    assert M.ALL_METRICS == NAMES
    assert M.PAPER_METRICS == COLUMNS
    assert [n for n in NAMES if not M.METRICS[n].higher_is_better] == ["MSE"]
    assert M.resolve_metrics("viff,QABF, en") == ["VIF", "Qabf", "EN"]
    assert M.resolve_metrics(["paper", "MSE", "EN"]) == list(COLUMNS) + ["MSE"]
    assert M.metric_info("ssim").name == "SSIM"
    for info in M.METRICS.values():
        doc = info.function.__doc__
        assert "Range and direction" in doc and "Reference" in doc and ">>>" in doc, info.name


def test_unknown_metric_lists_the_known_names():
    with pytest.raises(UsageError) as err:
        compute_metrics(np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8)), names="EN,FOO")
    msg = str(err.value)
    assert "'FOO'" in msg and all(n in msg for n in NAMES)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((8, 8)), np.zeros((8, 9)), np.zeros((8, 8))), "differ in size"),
        ((np.zeros((8, 8, 3)), np.zeros((8, 8)), np.zeros((8, 8))), "rgb_to_gray"),
        ((np.zeros((8, 8)), np.full((8, 8), np.nan), np.zeros((8, 8))), "NaN"),
        ((np.zeros((8, 8)), np.zeros((8, 8)), np.array([["a"] * 8] * 8)), "numeric"),
    ],
)
def test_bad_inputs(args, match):
    with pytest.raises(M.MetricInputError, match=match):
        compute_metrics(*args, names="EN,MI")


def test_too_small_for_vif_and_ssim():
    small = np.zeros((40, 64))
    with pytest.raises(M.MetricInputError, match=r"VIF \(needs 41x41\)"):
        compute_metrics(small, small, small)
    with pytest.raises(M.MetricInputError, match="too small"):
        M.ssim(np.zeros((6, 6)), np.zeros((6, 6)), np.zeros((6, 6)))
    assert set(compute_metrics(small, small, small, names="EN,SSIM")) == {"EN", "SSIM"}


# ---------------------------------------------------------------- published rows
def test_published_rows():
    assert len(PAPER_ROWS) == 8 and len(BASELINE_ROWS) == 10
    tno = [r for r in PAPER_ROWS if r.dataset == "TNO"][0]
    assert [tno.values[c] for c in COLUMNS] == [7.12, 46.00, 13.15, 2.19, 1.76, 0.77, 0.54, 1.03]
    rows = reference_rows("MRI_SPECT", "ivf")
    assert [(r.method, r.weights) for r in rows] == [("cddfuse", "ivf"), ("mean", None), ("max", None)]
    assert rows[0].values["SD"] == 71.81 and rows[2].values["MI"] == 2.88
    assert all(r.source for r in PAPER_ROWS + BASELINE_ROWS)


def test_quantize_like_authors():
    x = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    # x*255 = 0, 63.75, 127.5, 255: nearest, with the exact half rounded down
    np.testing.assert_array_equal(M.quantize_like_authors(x), [[0, 64, 127, 255]])
    np.testing.assert_array_equal(M.quantize_like_authors(np.full((2, 2), 0.3)), np.zeros((2, 2)))
