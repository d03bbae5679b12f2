"""Robustness to in-plane rotation: matching accuracy against the rotation angle.

    python -m benchmarks.rotation --images ../shared/data/phototourism_sample/images \
        --max-photos 4 --method sift --method hndesc-r2d2

Each photo (not a training photo; downscaled to ``--max-side``) is rotated about its centre by
every angle of ``--angles`` onto a canvas that holds all of it
(:func:`hloc_hndesc.evaluation.synthetic.make_rotation_sequence`, exact ground truth, no other
change), written as an HPatches-layout sequence under ``--out``, and matched from the upright
photo with mutual nearest neighbours as in :mod:`benchmarks.homography`. The table gives MMA at
``--threshold`` px per angle, averaged over the photos, and the mean number of matches.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks.report import publish, table
from hloc_hndesc import logger
from hloc_hndesc.evaluation.datasets import list_sequences
from hloc_hndesc.evaluation.homography import MMA_THRESHOLDS, PairResult, evaluate_method
from hloc_hndesc.evaluation.methods import parse_method
from hloc_hndesc.evaluation.synthetic import (
    TrainingPhotoError,
    list_photos,
    load_photo,
    make_rotation_sequence,
    write_sequence,
)

KEY = "rotation"
TITLE = "Robustness to in-plane rotation"
DEFAULT_ANGLES = (0.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 150.0, 180.0)


def write_rotation_sequences(
    photos: list[Path], out: Path, angles: tuple[float, ...], max_side: int
) -> Path:
    """One ``r_<stem>`` sequence per photo under ``out`` (rewritten every run); returns ``out``."""
    for photo in photos:
        sequence = make_rotation_sequence(load_photo(photo, max_side), angles, f"r_{photo.stem}")
        write_sequence(sequence, out / sequence.name, ".png")
    return out


def angle_table(results: dict[str, list[PairResult]], angles: tuple[float, ...], threshold: float) -> str:
    """MMA at ``threshold`` per angle (columns) and method (rows), then the mean matches."""
    column = MMA_THRESHOLDS.index(threshold)
    rows = []
    for label, pairs in results.items():
        by_angle = [[r for r in pairs if r.target == k + 2] for k in range(len(angles))]
        mma = [np.mean([r.mma[column] for r in group]) for group in by_angle]
        matches = [np.mean([r.num_matches for r in group]) for group in by_angle]
        rows.append([label, *(f"{m:.3f}" for m in mma)])
        rows.append([f"{label}: matches", *(f"{m:.0f}" for m in matches)])
    return table(["method", *(f"{a:g}°" for a in angles)], rows)


def main(argv: list[str] | None = None) -> dict[str, list[PairResult]]:
    """Parse arguments, write the rotated sequences, evaluate, publish; returns the pair results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", action="append", required=True, help="folder of photos (repeatable)")
    parser.add_argument("--method", action="append", required=True, help="sift | CONF | CONF=WEIGHTS (repeatable)")
    parser.add_argument("--max-photos", type=int, default=4, help="evenly spaced photos of the folders")
    parser.add_argument("--max-side", type=int, default=640, help="photos are downscaled to this longer side")
    parser.add_argument("--angles", type=float, nargs="+", default=list(DEFAULT_ANGLES))
    parser.add_argument("--threshold", type=float, default=3.0, choices=list(MMA_THRESHOLDS), help="MMA px")
    parser.add_argument("--out", type=Path, default=Path("outputs/rotation"), help="rotated sequences")
    parser.add_argument("--cache", type=Path, default=Path("outputs/cache"), help="shared feature cache")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        photos = list_photos(args.images, args.max_photos)
    except TrainingPhotoError as error:
        parser.error(str(error))
    angles = tuple(args.angles)
    write_rotation_sequences(photos, args.out, angles, args.max_side)
    names = {f"r_{p.stem}" for p in photos}
    sequences = [s for s in list_sequences(args.out) if s.name in names]

    results: dict[str, list[PairResult]] = {}
    for spec in args.method:
        method = parse_method(spec)
        logger.info("rotation: %s", method.label)
        results[method.label] = evaluate_method(method, sequences, args.out, args.cache)

    body = (
        f"{len(photos)} photo(s) ({', '.join(p.name for p in photos)}), longer side {args.max_side} px, "
        f"each rotated about its centre onto a canvas that holds all of it (black corners), exact "
        f"ground truth, no photometric change. Mutual nearest neighbours from the upright photo, "
        f"every method at its conf's settings. MMA@{args.threshold:g} px per angle (mean over the "
        f"photos), and the mean number of matches.\n\n"
        + angle_table(results, angles, args.threshold)
        + "\n"
    )
    publish(KEY, TITLE, body, dry_run=args.no_write, echo=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
