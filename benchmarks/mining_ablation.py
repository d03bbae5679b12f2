"""Mining ablation on HyNet at equal budget: in-pair vs in-batch vs global, several seeds.

Each (mode, seed) trains HyNet from scratch with the same config, number of updates and
batch (``hloc-hndesc train --config hynet`` with overrides), then is measured on
(1) the held-out slice of the training photos (FPR@95 with intra-pair negatives, from the
trainer's final validation) and (2) patch verification / retrieval on evaluation sequences
(``hloc_hndesc.evaluation.patches``, jitter none and hard, pooled ``all`` group). Rows give
mean ± sd over seeds; runs are resumable (a finished run is not retrained).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from benchmarks.report import mean_sd, publish, table, timed_once
from hloc_hndesc.evaluation.datasets import collect_sequences
from hloc_hndesc.evaluation.patches import (
    build_patch_pairs,
    detect_references,
    evaluate_patch_descriptors,
    network_describer,
    sample_protocol,
)
from hloc_hndesc.models.hynet import build_hynet
from hloc_hndesc.training.hynet import train_hynet
from hloc_hndesc.training.tasks import load_train_config
from hloc_hndesc.weights import load_weights

KEY = "mining_ablation"
TITLE = "HyNet mining ablation (issue 6)"
LEVELS = ("none", "hard")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="hynet", help="training config (bundled name or YAML)")
    parser.add_argument("--modes", nargs="+", default=["in_pair", "in_batch", "global"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, required=True, help="updates per run (the equal budget)")
    parser.add_argument("--batch-size", type=int, default=16, help="synthetic pairs per update")
    parser.add_argument("--sequences", action="append", type=Path, required=True, help="evaluation sequences (repeatable)")
    parser.add_argument("--max-keypoints", type=int, default=300)
    parser.add_argument("--output-root", type=Path, default=Path("outputs/ablation"))
    parser.add_argument("overrides", nargs="*", help="extra key=value training overrides for every run")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    return parser.parse_args(argv)


def describe(net: torch.nn.Module, patches: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Descriptors of (N, 1, 32, 32) patches in eval mode."""
    describer = network_describer(net)
    with torch.inference_mode():
        return torch.cat([describer(chunk) for chunk in patches.split(batch)]) if len(patches) else torch.zeros(0, 128)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sequences, groups = collect_sequences(args.sequences)
    references = detect_references(sequences, max_keypoints=args.max_keypoints)
    evaluation = {}
    for level in LEVELS:
        pairs = build_patch_pairs(sequences, groups, jitter=level, seed=0, references=references)
        evaluation[level] = (pairs, sample_protocol(pairs, seed=0))

    results: dict[str, list[dict[str, float]]] = {}
    for mode in args.modes:
        for seed in args.seeds:
            out = args.output_root / f"{mode}-s{seed}"
            overrides = [
                f"mining.mode={mode}", f"train.seed={seed}", f"data.seed={seed}", f"train.steps={args.steps}",
                f"train.batch_size={args.batch_size}", f"train.output_dir={out}", *args.overrides,
            ]
            metrics, wall = timed_once(out, lambda: train_hynet(load_train_config(args.config, overrides)))
            net = build_hynet()
            load_weights(net, "hynet", out / "model.pt")
            row = {"val_fpr95": metrics["val"].get("fpr95", float("nan")), "wall": wall}
            for level, (pairs, protocol) in evaluation.items():
                scores = evaluate_patch_descriptors(pairs, protocol, describe(net, pairs.reference), describe(net, pairs.target))
                row[f"fpr_{level}"] = scores["all"].fpr95
                row[f"map_{level}"] = scores["all"].retrieval_map
            results.setdefault(mode, []).append(row)
            print(f"{mode} seed {seed}: {row}")

    rows = []
    for mode, items in results.items():
        rows.append([
            mode, len(items), mean_sd([r["val_fpr95"] for r in items], 100, 2),
            *(mean_sd([r[f"{k}_{level}"] for r in items], 100, 2) for level in LEVELS for k in ("fpr", "map")),
            f"{statistics.fmean(r['wall'] for r in items):.0f}",
        ])
    extra = " ".join(f"`{o}`" for o in args.overrides) or "none"
    body = "\n".join([
        f"Budget per run: {args.steps} updates x {args.batch_size} synthetic pairs (config `{args.config}`, extra "
        f"overrides: {extra}); seeds {args.seeds} (training and data). Held-out: FPR@95 % on the validation "
        f"slice of the training photos with intra-pair negatives. Evaluation: {len(sequences)} sequences "
        f"({', '.join(f'`{s}`' for s in args.sequences)}), top {args.max_keypoints} DoG frames, patch FPR@95 % "
        f"(lower is better) and retrieval mAP % (higher is better), pooled. mean ± sd over seeds. "
        f"First ablation: no previous numbers; SIFT/RootSIFT on the same patches: see the patch verification section.",
        "",
        table(["mining", "seeds", "held-out FPR@95", "FPR@95 none", "mAP none", "FPR@95 hard", "mAP hard", "s / run"], rows),
    ])
    publish(KEY, TITLE, body, args.no_write)


if __name__ == "__main__":
    main()
