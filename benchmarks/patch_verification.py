"""Patch verification (FPR@95) and patch retrieval (mAP) of patch descriptors on homography sequences.

python -m benchmarks.patch_verification --sequences outputs/sequences \\
    --sequences ../shared/data/oxford_affine/graf_half [--hynet WEIGHTS]

DoG keypoints of each reference image give 32x32 patches; their frames are carried into
the other images of the sequence by the ground-truth homography (local affine
approximation), optionally jittered as HPatches does (``--jitter``), so descriptors are
compared on the same patches, apart from any detector. Protocol and metrics:
``hloc_hndesc/evaluation/patches.py`` (module docstring). Rows, in the same run: SIFT
(kornia's SIFTDescriptor on the patches, the baseline) and its RootSIFT variant, HyNet
with each ``--hynet`` checkpoint, a randomly initialised HyNet (seeded; an untrained
control) and the normalised raw pixels (a floor).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import publish, table
from hloc_hndesc.evaluation.datasets import collect_sequences
from hloc_hndesc.evaluation.patches import (
    JITTER_LEVELS,
    Describer,
    PatchMetrics,
    PatchPairs,
    Protocol,
    build_patch_pairs,
    describe_patches,
    detect_references,
    evaluate_patch_descriptors,
    network_describer,
    raw_pixel_describer,
    sample_protocol,
    sift_describer,
)
from hloc_hndesc.models.hynet import PATCH_SIZE, build_hynet
from hloc_hndesc.weights import load_weights

KEY = "patch_verification"
TITLE = "Patch verification and retrieval (HyNet vs SIFT on the same patches)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", action="append", required=True, type=Path,
                        help="a folder of HPatches/Oxford sequences, or one sequence (repeatable)")
    parser.add_argument("--hynet", action="append", default=[], type=Path, help="HyNet checkpoint (repeatable)")
    parser.add_argument("--max-keypoints", type=int, default=500, help="DoG keypoints per reference image")
    parser.add_argument("--jitter", nargs="+", default=["none", "easy", "hard"], choices=sorted(JITTER_LEVELS))
    parser.add_argument("--num-distractors", type=int, default=1000, help="retrieval distractors per image pair")
    parser.add_argument("--seed", type=int, default=0, help="seed of jitter, negatives, distractors, random HyNet")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    return parser.parse_args(argv)


def describers(args: argparse.Namespace) -> list[tuple[str, Describer]]:
    """The rows: (label, describer)."""
    rows: list[tuple[str, Describer]] = [
        ("SIFT (kornia SIFTDescriptor), baseline", sift_describer(rootsift=False)),
        ("RootSIFT (kornia SIFTDescriptor)", sift_describer(rootsift=True)),
    ]
    for weights in args.hynet:
        net = build_hynet()
        load_weights(net, "hynet", weights)
        rows.append((f"HyNet ({weights.name})", network_describer(net)))
    torch.manual_seed(args.seed)
    rows.append((f"HyNet, random init (seed {args.seed}), untrained control", network_describer(build_hynet())))
    rows.append(("raw pixels (normalised), floor", raw_pixel_describer()))
    return rows


def percent(value: float) -> str:
    """A rate as a percentage with one decimal ("-" for NaN)."""
    return "-" if value != value else f"{100 * value:.1f}"


def counts_table(pairs_by_level: dict[str, tuple[PatchPairs, Protocol]]) -> str:
    """Sequences, image pairs, patches, positives and negatives per jitter level and group."""
    rows = []
    for level, (pairs, protocol) in pairs_by_level.items():
        groups = pairs.group_of_targets()
        names = sorted(set(pairs.groups))
        for group in [*names, "all"] if len(names) > 1 else names:
            sel = np.ones(len(groups), bool) if group == "all" else groups == group
            seqs = [s for s, g in enumerate(pairs.groups) if group in ("all", g)]
            neg = protocol.negative_of
            in_group = sel[neg]
            rows.append([
                level, group, len(seqs), int(np.isin(pairs.pair_sequence, seqs).sum()),
                int(np.isin(pairs.ref_sequence, seqs).sum()), int(sel.sum()),
                int((in_group & protocol.negative_same_pair).sum()),
                int((in_group & ~protocol.negative_same_pair).sum()),
            ])
    return table(["jitter", "group", "sequences", "image pairs", "reference patches", "positives (= queries)",
                  "negatives same pair", "negatives other scene"], rows)


def results_table(results: dict[str, dict[str, PatchMetrics]], groups: list[str]) -> str:
    """One row per descriptor: FPR@95 and mAP per group, verification AP over all."""
    header = ["descriptor", *[f"FPR@95 % {g}" for g in groups], *[f"mAP % {g}" for g in groups], "verif. AP % all"]
    rows = []
    for label, metrics in results.items():
        rows.append([
            label,
            *[percent(metrics[g].fpr95) if g in metrics else "-" for g in groups],
            *[percent(metrics[g].retrieval_map) if g in metrics else "-" for g in groups],
            percent(metrics["all"].verification_ap),
        ])
    return table(header, rows)


def main(argv: list[str] | None = None) -> None:
    """Run every descriptor on every jitter level and write the section."""
    args = parse_args(argv)
    sequences, groups = collect_sequences(args.sequences)
    rows = describers(args)
    print(f"{len(sequences)} sequences; rows: {[label for label, _ in rows]}", file=sys.stderr)
    start = time.perf_counter()
    references = detect_references(sequences, max_keypoints=args.max_keypoints)
    print(f"detection: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    sections, pairs_by_level = [], {}
    for level in args.jitter:
        start = time.perf_counter()
        pairs = build_patch_pairs(sequences, groups, jitter=level, seed=args.seed, references=references)
        protocol = sample_protocol(pairs, seed=args.seed, num_distractors=args.num_distractors)
        pairs_by_level[level] = (pairs, protocol)
        print(f"[{level}] {len(pairs.reference)} reference / {len(pairs.target)} target patches "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        results = {}
        for label, describer in rows:
            start = time.perf_counter()
            ref = describe_patches(describer, pairs.reference, args.batch_size, args.device)
            tgt = describe_patches(describer, pairs.target, args.batch_size, args.device)
            results[label] = evaluate_patch_descriptors(pairs, protocol, ref, tgt)
            overall = results[label]["all"]
            print(f"[{level}] {label}: FPR@95 {overall.fpr95:.4f} mAP {overall.retrieval_map:.4f} "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        present = sorted(set(pairs.groups))
        present = [*present, "all"] if len(present) > 1 else present
        sections.append(f"### jitter: {level}\n\n{results_table(results, present)}")
    roots = ", ".join(f"`{r}`" for r in args.sequences)
    jitters = ", ".join(f"{k} {v}" for k, v in JITTER_LEVELS.items() if k in args.jitter)
    hynet_note = (
        f"HyNet rows use the given checkpoints ({', '.join(str(w) for w in args.hynet)})."
        if args.hynet
        else "No HyNet weights were given: no trained HyNet of ours exists yet (no shipped checkpoint), and "
        "kornia's pretrained download is not reachable offline, so only the random-init control runs."
    )
    body = f"""Descriptors judged apart from the detector: DoG keypoints of each reference image (pycolmap,
project defaults; top {args.max_keypoints} by |DoG| after dropping frames outside the image and regions
overlapping a stronger one with IoU > 0.5), HyNet frames (mr_size 12 x sigma, DoG orientation),
{PATCH_SIZE}x{PATCH_SIZE} patches cut with kornia in the reference and, through the ground-truth homography and its
Jacobian (local affine transfer), in each other image; pairs whose frame leaves image k are dropped.
Jitter (HPatches-like, of the target frame: rotation / log-scale / shift bounds): {jitters};
median square-IoU with the exact frame ~0.86 (easy), ~0.72 (hard).
Verification: one negative per positive (same image pair or another scene, 50/50, seed {args.seed};
`i_X` and `v_X` made from one photo are one scene),
L2 distance; FPR@95 = false positive rate at the threshold accepting 95 % of positives (lower is better);
verification AP ranks all pairs by distance. Retrieval: each reference patch queries the target patches
of its image pair plus {args.num_distractors} distractor patches from other scenes (seeded per pair); mAP of
its single true match (higher is better). Groups: HPatches kind (i_ illumination, v_ viewpoint) or the
folder name for sequences of unknown kind (Oxford); `all` pools every query. FPR@95 is set by the
5 % hardest positives: where more than 5 % of a group's positives do not show the same surface (Oxford
graf: the car and fence below the wall are off its plane; 10-15 % of its exact pairs have pixel NCC
< 0.5, against < 0.1 % for the synthetic viewpoint sequences), it says little and
its mAP is the better guide.
Sequences: {roots} ({len(sequences)} sequences). Device: {args.device}.
{hynet_note} Our previous numbers: none (no previous version of ours has weights).

{counts_table(pairs_by_level)}

{chr(10).join(chr(10) + s for s in sections).strip()}
"""
    publish(KEY, TITLE, body, args.no_write, echo=True)


if __name__ == "__main__":
    main()
