"""Verified matches per pair on the bundled demo photos (or any scene), per method.

    python -m benchmarks.demo_pairs --method sift --method sift-caps-kpts \
        --method hndesc-caps=outputs/caps_random_init.pth --method hndesc-caps --max-keypoints 2000

Runs the demo's matching and verification (:func:`hloc_hndesc.demo.run_demo` without SfM: mutual
nearest neighbours, NN-ratio for SIFT, a pycolmap LO-RANSAC fundamental matrix per pair) on every
pair of ``--scene``'s images and tabulates the fundamental-matrix inliers per pair: median, mean,
min-max, and how many pairs keep at least ``--min-inliers``. These photos have no ground-truth
poses: inliers of a fundamental matrix measure how much survives verification, not accuracy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks.report import publish, table
from hloc_hndesc.demo import DEMO_SCENE, run_demo
from hloc_hndesc.evaluation.methods import parse_method
from hloc_hndesc.io import list_images

KEY = "demo_pairs"
TITLE = "Verified matches per pair on the bundled demo photos"


def inlier_rows(results: dict[str, np.ndarray], min_inliers: int) -> list[list[str]]:
    """One row per method: pairs, median, mean, min-max inliers and pairs with >= ``min_inliers``."""
    rows = []
    for label, inliers in results.items():
        rows.append(
            [
                label,
                str(len(inliers)),
                f"{np.median(inliers):.0f}",
                f"{inliers.mean():.1f}",
                f"{inliers.min()}-{inliers.max()}",
                f"{int((inliers >= min_inliers).sum())}/{len(inliers)}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    """Parse arguments, run every method on every pair, publish; returns the inliers per method."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", required=True, help="sift | CONF | CONF=WEIGHTS (repeatable)")
    parser.add_argument("--scene", type=Path, default=DEMO_SCENE, help="folder with an images/ subfolder")
    parser.add_argument("--max-keypoints", type=int, default=None, help="override the confs' keypoint budget")
    parser.add_argument("--min-inliers", type=int, default=30, help="a pair with fewer counts as lost")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo_pairs"), help="features, matches, plots")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if not (args.scene / "images").is_dir():
        parser.error(f"{args.scene}: no images/ folder")

    results: dict[str, np.ndarray] = {}
    for spec in args.method:
        method = parse_method(spec)
        if args.max_keypoints is not None and "max_keypoints" in method.conf["model"]:
            method.conf["model"]["max_keypoints"] = args.max_keypoints
        report = run_demo(method, args.scene, args.out / method.key, sfm=False)
        results[method.label] = np.array([pair.inliers for pair in report.pairs], dtype=int)

    names = list_images(args.scene / "images")
    budget = f"at most {args.max_keypoints} keypoints per image" if args.max_keypoints else "each conf's keypoints"
    body = (
        f"Scene `{args.scene.name}`: {len(names)} images, every pair; {budget}; each method at its conf's "
        f"matcher (SIFT: NN-ratio 0.8; learned: mutual NN), then a pycolmap LO-RANSAC fundamental "
        f"matrix per pair (the demo's code). No ground-truth poses: the inliers measure what survives "
        f"verification, not accuracy. 'kept' = pairs with at least {args.min_inliers} inliers.\n\n"
        + table(["method", "pairs", "median inliers", "mean", "min-max", "kept"], inlier_rows(results, args.min_inliers))
        + "\n"
    )
    publish(KEY, TITLE, body, dry_run=args.no_write, echo=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
