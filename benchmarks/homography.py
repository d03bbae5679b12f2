"""Homography benchmark on HPatches-layout or Oxford sequences (D2-Net's protocol).

    python -m benchmarks.homography --dataset ../shared/data/oxford_affine/graf \
        --method sift --method hndesc-r2d2=r2d2_WASF_N16.pt

Every method is matched with mutual nearest neighbours; see
:mod:`hloc_hndesc.evaluation.homography` for the metrics. Writes one table block per
dataset (``--name``, default the folder name plus the subset) into the ``homography``
section of BENCHMARKS.md, keeping the other datasets' blocks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks.report import ROOT, commit, table, write_section
from hloc_hndesc.evaluation.datasets import list_sequences
from hloc_hndesc.evaluation.homography import (
    CORNER_THRESHOLDS,
    KINDS,
    MMA_THRESHOLDS,
    PairResult,
    RANSAC_MAX_ERROR,
    evaluate_method,
    select_sequences,
    summarize,
)
from hloc_hndesc.evaluation.methods import parse_method

KEY = "homography"
TITLE = "Homography: matching accuracy (MMA) and homography estimation, HPatches protocol"
KIND_NAMES = {"i": "i (illumination)", "v": "v (viewpoint)", "all": "all"}
#: DESIGN.md §7 (upstream hloc, same settings), MMA@1/3/5 on Oxford graf 1->3 with mutual NN.
DESIGN_GRAF = "SIFT 0.31 / 0.48 / 0.54, official R2D2 0.24 / 0.64 / 0.75"

INTRO = f"""\
D2-Net's HPatches protocol: every method's features (each method's conf, max side 1024 px,
keypoints in hloc's convention) are matched from image 1 to images 2..6 of each sequence with
mutual nearest neighbours, for every method (SIFT included, so no ratio test here). MMA(t) is the
fraction of matches whose reference keypoint warped by the ground-truth H lies within t px of its
match, averaged over pairs (a pair without match counts 0). Homography estimation: pycolmap
LO-RANSAC ({RANSAC_MAX_ERROR:g} px, fixed seed) on the matches; corner error is the mean distance of
the 4 reference corner pixels warped by the estimated and the true H; accuracy is the fraction of
pairs under {'/'.join(map(str, CORNER_THRESHOLDS))} px, the mean corner error is over pairs with an
estimate (pairs without one are counted in "fail"; the median counts them as infinite; wrong
estimates of hundreds of px dominate the mean). Features are per image, matches per pair.

The generated sequences (`python -m benchmarks.make_sequences`,
`hloc_hndesc.evaluation.synthetic`) come from photos that are not training photos; their
ground truth is exact for hloc-convention keypoints. In the `i_` sequences image 6 is a
**synthetic** night (relit albedo, lamps, lit windows, noise, JPEG): real day/night change cannot
be measured here, as `../shared/data` holds no real night image. `hynet` (the shipped weights) is
the first trained model of ours, so there are no "previous" rows; `sift-hynet-kpts` is RootSIFT on
exactly `hynet`'s DoG keypoints, so the two differ only by the descriptor. Official R2D2 costs ~20 s per image on this CPU, so it runs on an evenly spaced subset
of the generated sequences (`--max-sequences`, SIFT beside it on the same subset); SIFT alone is
also reported on all of them. Each block names the command that produced it (the command above
is the last run's).
"""

BLOCK = re.compile(r"<!-- dataset: (?P<name>[^>]*?) -->\n.*?<!-- /dataset: (?P=name) -->\n?", re.S)


def existing_blocks(path: Path) -> dict[str, str]:
    """The dataset blocks already in the ``homography`` section of BENCHMARKS.md, by name."""
    if not path.exists():
        return {}
    text = path.read_text()
    begin, end = f"<!-- begin {KEY} -->", f"<!-- end {KEY} -->"
    if begin not in text or end not in text:
        return {}
    section = text.split(begin, 1)[1].split(end, 1)[0]
    return {m.group("name"): m.group(0).rstrip("\n") + "\n" for m in BLOCK.finditer(section)}


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def result_tables(results: dict[str, list[PairResult]], per_target: bool) -> str:
    """Markdown tables: MMA per threshold, homography estimation, and (optionally) per target image."""
    mma_rows, h_rows, target_rows = [], [], []
    for label, pairs in results.items():
        present = {r.kind for r in pairs}
        for kind in KINDS:
            s = summarize(pairs, kind)
            if s is None or (kind == "all" and present in ({"i"}, {"v"})):
                continue
            mma_rows.append([label, KIND_NAMES[kind], *[_fmt(v) for v in s.mma]])
            h_rows.append(
                [label, KIND_NAMES[kind], s.num_pairs, f"{s.mean_keypoints:.0f}", f"{s.mean_matches:.0f}"]
                + [_fmt(s.corner_accuracy[t]) for t in CORNER_THRESHOLDS]
                + [_fmt(s.mean_corner_error, 2), _fmt(s.median_corner_error, 2), s.failures]
            )
            if per_target and kind != "all":
                cells = []
                for target in sorted({r.target for r in pairs}):
                    t = summarize(pairs, kind, target)
                    cells.append("-" if t is None else f"{t.mma[2]:.2f} / {t.corner_accuracy[3]:.2f}")
                target_rows.append([label, KIND_NAMES[kind], *cells])
    out = [
        "MMA (mean matching accuracy) at 1..10 px:\n",
        table(["method", "sequences", *[f"@{t}" for t in MMA_THRESHOLDS]], mma_rows),
        "\nHomography estimation:\n",
        table(
            ["method", "sequences", "pairs", "features / image", "matches / pair"]
            + [f"H acc @{t}px" for t in CORNER_THRESHOLDS]
            + ["mean corner err px", "median corner err px", "fail"],
            h_rows,
        ),
    ]
    if per_target and target_rows:
        targets = sorted({r.target for pairs in results.values() for r in pairs})
        out += [
            "\nPer target image (grade = image - 1; i_ image 6 is the synthetic night): MMA@3 / H acc @3px:\n",
            table(["method", "sequences", *[f"1→{t}" for t in targets]], target_rows),
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, list[PairResult]]:
    """Parse arguments, evaluate, and write the block; returns the pair results per method."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="HPatches-layout root, or one sequence folder")
    parser.add_argument("--method", action="append", required=True, help="sift | CONF | CONF=WEIGHTS (repeatable)")
    parser.add_argument("--max-sequences", type=int, default=None, help="at most this many sequences per kind")
    parser.add_argument("--name", default=None, help="block name in BENCHMARKS.md (default: folder and subset)")
    parser.add_argument("--cache", type=Path, default=Path("outputs/cache"), help="shared feature cache")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="the BENCHMARKS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    methods = [parse_method(m) for m in args.method]
    everything = list_sequences(args.dataset)
    sequences = select_sequences(everything, args.max_sequences)
    results = {}
    for method in methods:
        label = method.label + (" (baseline)" if method.label == "sift" else "")
        results[label] = evaluate_method(method, sequences, args.dataset, args.cache)

    kinds = [s.kind for s in sequences]
    name = args.name or args.dataset.name + (f", {args.max_sequences} per kind" if args.max_sequences else "")
    counts = ", ".join(f"{kinds.count(k)} {k}_" for k in ("i", "v") if kinds.count(k))
    command = " ".join(["python", "-m", "benchmarks.homography", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    subset = f", an evenly spaced subset of the {len(everything)} in the folder" if len(sequences) < len(everything) else ""
    lines = [
        f"<!-- dataset: {name} -->",
        f"### {name}\n",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}, commit {commit()}",
        f"- {len(sequences)} sequence(s)" + (f" ({counts})" if counts else "")
        + subset
        + f", {sum(len(s.homographies) for s in sequences)} pairs: {', '.join(s.name for s in sequences[:40])}"
        + (" ..." if len(sequences) > 40 else ""),
    ]
    record = args.dataset / "make_sequences.json"
    if record.is_file():
        made = json.loads(record.read_text())
        lines.append(
            f"- generated by `{made['command']}` (seed {made['seed']}, max side {made['max_side']} px, "
            f"{len(made['photos'])} photos)"
        )
    if args.dataset.name == "graf":
        lines.append(f"- DESIGN.md §7 on graf 1→3, MMA@1/3/5 mutual NN (upstream hloc): {DESIGN_GRAF}")
    lines += ["", result_tables(results, per_target=any(kinds)), f"<!-- /dataset: {name} -->\n"]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        blocks = existing_blocks(args.output)
        blocks[name] = block
        write_section(KEY, TITLE, INTRO + "\n" + "\n".join(blocks.values()), path=args.output)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
