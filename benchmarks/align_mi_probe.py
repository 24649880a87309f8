"""Probe (issue 16): does mutual information register the medical test pairs better than ``cddfuse.align``?

Not part of the package: it needs SimpleITK (``pip install SimpleITK``), the medical field's standard
for mutual-information registration, which ``cddfuse`` does not depend on. Two measurements:

1. *Profile*: Mattes mutual information (32 bins, SimpleITK's metric, lower is better) of each of the
   first three registered pairs of every medical set, with the first image shifted by -4..4 px in x and
   scaled by 0.95..1.10 about the centre -- with and without a mask of the MRI's head (its foreground,
   dilated 7 px). Where the metric is lowest away from shift 0 / scale 1, MI prefers another frame than
   the dataset's registration.
2. *Registration*: the cases of ``bench_align.py`` (same generator, same seed; every ``--step``-th pair),
   registered by SimpleITK: centroids of the foregrounds as the start, a similarity transform at 1/4
   and 1/2 resolution, then an affine one at 1/2 and full resolution (regular-step gradient descent,
   scales from physical shift, masked Mattes MI). Error as in ``bench_align.py``; ``h0`` is the
   estimate on the unwarped registered pair (0 px if MI agreed with the dataset's registration).

    .venv/bin/pip install SimpleITK
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/align_mi_probe.py [--step 7] [--sets MRI_CT,MRI_PET,MRI_SPECT]
        [--figure docs/align_registration_check.png]

``--figure`` draws, for MRI_CT 25 and 11, the first image's edges (Canny, red) over the second image,
left as the dataset registers them (identity), right moved by the MI estimate.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align import corner_error, misalign, pairs, random_transform, read_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def foreground(x: np.ndarray, dilate: int) -> np.ndarray:
    m = (cv2.GaussianBlur(x, (0, 0), 2) > 0.03).astype(np.uint8)
    return cv2.dilate(m, np.ones((2 * dilate + 1,) * 2, np.uint8)) if dilate else m


def main() -> int:
    import SimpleITK as sitk

    from cddfuse.io.color import luminance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--step", type=int, default=7)
    ap.add_argument("--sets", default="MRI_CT,MRI_PET,MRI_SPECT")
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args()
    shared = args.shared / "data" if (args.shared / "data").is_dir() else args.shared
    cv2.setNumThreads(1)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)

    def image(x: np.ndarray, spacing: float = 1.0) -> sitk.Image:
        im = sitk.GetImageFromArray(np.ascontiguousarray(x))
        im.SetSpacing((spacing, spacing))
        im.SetOrigin((0.5 * (spacing - 1),) * 2)  # pixel centres, as cddfuse.align
        return im

    def metric(fixed: np.ndarray, moving: np.ndarray, tx: sitk.Transform, mask: np.ndarray | None) -> float:
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(32)
        r.SetInterpolator(sitk.sitkLinear)
        if mask is not None:
            r.SetMetricFixedMask(image(mask))
        r.SetInitialTransform(tx)
        return float(r.MetricEvaluate(image(fixed), image(moving)))

    def stage(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, tx: sitk.Transform, shrink: list[int],
              smooth: list[float], rate: float) -> None:
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(32)
        r.SetMetricSamplingStrategy(r.REGULAR)
        r.SetMetricSamplingPercentage(0.5, seed=1)
        r.SetMetricFixedMask(mask)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=rate, minStep=1e-4, numberOfIterations=100,
                                                   relaxationFactor=0.7, gradientMagnitudeTolerance=1e-8)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetShrinkFactorsPerLevel(shrink)
        r.SetSmoothingSigmasPerLevel(smooth)
        r.SetInitialTransform(tx, inPlace=True)
        r.Execute(fixed, moving)

    def register(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Affine first -> second (pixel centres), by masked Mattes MI."""
        ratio = float(np.sqrt(b.size / a.size))
        fixed, moving, mask = image(b), image(a, ratio), image(foreground(b, 7))

        def centroid(m: np.ndarray) -> np.ndarray:
            mo = cv2.moments(m, True)
            return np.array([mo["m10"] / mo["m00"], mo["m01"] / mo["m00"]])

        cb = centroid(foreground(b, 0))
        ca = centroid(foreground(a, 0)) * ratio + 0.5 * (ratio - 1)
        sim = sitk.Similarity2DTransform()
        sim.SetCenter(tuple(cb))
        sim.SetTranslation(tuple(ca - cb))
        stage(fixed, moving, mask, sim, [4, 2], [2, 1], 1.0)
        aff = sitk.AffineTransform(2)
        aff.SetCenter(sim.GetCenter())
        aff.SetMatrix(sim.GetMatrix())
        aff.SetTranslation(sim.GetTranslation())
        stage(fixed, moving, mask, aff, [2, 1], [1, 0], 0.5)
        m = np.eye(3)  # SimpleITK's transform maps the second image's points to the first's
        a2 = np.array(aff.GetMatrix()).reshape(2, 2)
        c, t = np.array(aff.GetCenter()), np.array(aff.GetTranslation())
        m[:2, :2], m[:2, 2] = a2, c + t - a2 @ c
        to_physical = np.array([[ratio, 0, 0.5 * (ratio - 1)], [0, ratio, 0.5 * (ratio - 1)], [0, 0, 1.0]])
        return np.linalg.inv(m) @ to_physical

    if args.figure:
        rows = []
        for name, pair in (("MRI_CT", "25.png"), ("MRI_CT", "11.png")):
            fa = shared / "test" / name / "CT" / pair
            ya, yb = luminance(read_rgb(fa)), luminance(read_rgb(shared / "test" / name / "MRI" / pair))
            h = register(ya, yb)
            print(f"{name} {pair}: MI estimate {np.round(h, 3).tolist()}", flush=True)
            tiles = []
            for m in (np.eye(3), h):
                moved = cv2.warpPerspective(ya, m, yb.shape[::-1], flags=cv2.INTER_LINEAR)
                edges = cv2.Canny((cv2.GaussianBlur(moved, (0, 0), 1.5) * 255).astype(np.uint8), 30, 80)
                rgb = np.repeat((yb * 255).astype(np.uint8)[..., None], 3, axis=2)
                rgb[edges > 0] = (255, 0, 0)
                tiles.append(rgb)
            rows.append(np.hstack(tiles))
        cv2.imwrite(str(args.figure), np.vstack(rows)[..., ::-1])
        print(f"wrote {args.figure}")

    wanted = args.sets.split(",")
    print("## Profile: Mattes MI (lower is better) against shift / scale of the first image")
    for name in wanted:
        for fa, fb in pairs(shared, name)[:3]:
            ya, yb = luminance(read_rgb(fa)), luminance(read_rgb(fb))
            centre = ((yb.shape[1] - 1) / 2, (yb.shape[0] - 1) / 2)
            for label, mask in (("no mask", None), ("head mask", foreground(yb, 7))):
                shifts = [metric(yb, ya, sitk.TranslationTransform(2, (float(dx), 0.0)), mask)
                          for dx in (-4, -2, 0, 2, 4)]
                scales = [metric(yb, ya, sitk.Similarity2DTransform(s, 0.0, (0.0, 0.0), centre), mask)
                          for s in (0.95, 1.0, 1.05, 1.10)]
                print(f"{name} {fa.name} {label:9s} shift -4..4: {' '.join(f'{v:.4f}' for v in shifts)} | "
                      f"scale 0.95/1/1.05/1.1: {' '.join(f'{v:.4f}' for v in scales)}", flush=True)

    print("\n## Registration of the bench_align cases (affine, masked MI)")
    rng = np.random.default_rng(16)  # the generator of bench_align.py; sets in its order
    for name in ("TNO", "RoadScene", "MRI_CT", "MRI_PET", "MRI_SPECT"):
        for fa, fb in pairs(shared, name)[:: args.step]:
            yb_shape = cv2.imread(str(fb), cv2.IMREAD_GRAYSCALE).shape
            ivf = not name.startswith("MRI")
            transforms = [random_transform(rng, yb_shape[1], yb_shape[0], ivf) for _ in range(5)]
            if name not in wanted:
                continue
            ya, yb = luminance(read_rgb(fa)), luminance(read_rgb(fb))
            hb, wb = yb.shape
            start, errors = time.perf_counter(), []
            h0 = corner_error(register(ya, yb), np.eye(3), wb, hb)
            for k, t in enumerate(transforms):
                a2, t_true = misalign(ya, t, (wb, hb), downscale=k == 4)
                errors.append(corner_error(register(a2, yb), t_true, wb, hb))
            print(f"{name} {fa.name}: h0 {h0:.2f} px; cases {' '.join(f'{e:.2f}' for e in errors)} px; "
                  f"{(time.perf_counter() - start) / 6:.2f} s per registration", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
