"""HNDesc-R2D2 ablation at equal budget: mining modes and stylization, several seeds.

    python -m benchmarks.r2d2_ablation --steps 300 --sequences outputs/sequences --max-sequences 3

Each (variant, seed) trains HNDesc-R2D2 from scratch with the same config, number of updates and
batch (``hloc-hndesc train --config hndesc_r2d2_ablation`` with overrides: the base recipe is pinned
in its own config, not the shipped one's); the variants are ``in_pair``,
``in_batch``, ``global`` (HNDesc's "selfgd": the bank pools the network's own local
descriptors), ``global-how`` (HNDesc's "gd": the bank ranks photos by HOW's global descriptors,
an hloc global-features file of the training photos given by ``--how-global``), ``in_batch-nostyle``
and ``in_pair-nostyle`` (``data.stylize_probability=0``). Each trained model is
measured through the ``hndesc-r2d2`` extractor on generated HPatches-style sequences (MMA@3 of
mutual nearest neighbours on the ``i_`` and ``v_`` sequences, :mod:`benchmarks.homography`'s
protocol) and by the trainer's final held-out validation (AP, MMA). The ``i_`` sequences' last
image is a synthetic night (:func:`hloc_hndesc.evaluation.synthetic.render_night`): its MMA is a
column of its own. With ``--localization SCENE`` each model also localises the plain and
synthetic-night queries of a Strecha scene (:mod:`benchmarks.localization`'s protocol). Rows
give mean ± sd over seeds; runs are resumable (a finished run is not retrained, features and
matches are cached).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.localization import NIGHT_SEED, SPLIT_OFFSET, SPLIT_STEP, query_conditions, run_method
from benchmarks.report import mean_sd, publish, table, timed_once
from hloc_hndesc.evaluation.datasets import list_sequences
from hloc_hndesc.evaluation.homography import MMA_THRESHOLDS, evaluate_method, select_sequences, summarize
from hloc_hndesc.evaluation.methods import parse_method
from hloc_hndesc.files import atomic_path
from hloc_hndesc.training.r2d2 import train_hndesc_r2d2
from hloc_hndesc.training.tasks import load_train_config
from hloc_hndesc.weights import sha256sum

KEY = "r2d2_ablation"
TITLE = "HNDesc-R2D2 ablation: mining and stylization at equal budget (issue 7)"
#: variant name -> overrides of the base config
VARIANTS: dict[str, tuple[str, ...]] = {
    "in_pair": ("mining.mode=in_pair",),
    "in_batch": ("mining.mode=in_batch",),
    "global": ("mining.mode=global",),
    "global-how": ("mining.mode=global", "mining.bank.source=external"),
    "in_batch-nostyle": ("mining.mode=in_batch", "data.stylize_probability=0"),
    "in_pair-nostyle": ("mining.mode=in_pair", "data.stylize_probability=0"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default="hndesc_r2d2_ablation",
        help="base training config (bundled name or YAML; default: the published ablation's, pinned)",
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
        help="variants to run (it takes every following word: give key=value overrides before it or after --)",
    )
    parser.add_argument(
        "--how-global", type=Path, default=None,
        help="hloc global-features h5 of the training photos (keys as the photo pool names them), for global-how",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, required=True, help="updates per run (the equal budget)")
    parser.add_argument("--sequences", type=Path, required=True, help="HPatches-layout evaluation sequences")
    parser.add_argument("--max-sequences", type=int, default=None, help="at most this many sequences per kind")
    parser.add_argument("--cache", type=Path, default=Path("outputs/cache"), help="shared feature cache")
    parser.add_argument("--output-root", type=Path, default=Path("outputs/r2d2_ablation"))
    parser.add_argument(
        "--localization", type=Path, default=None, metavar="SCENE",
        help="also localise plain and synthetic-night queries of this Strecha scene with every model",
    )
    parser.add_argument("overrides", nargs="*", help="extra key=value training overrides for every run")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = parser.parse_args(argv)
    if "global-how" in args.variants and args.how_global is None:
        parser.error("the global-how variant needs --how-global PATH (HOW global descriptors of the training photos)")
    return args


#: the target image of the ``i_`` sequences that is rendered as night
NIGHT_TARGET = 6


def localization_scores(args: argparse.Namespace, weights: Path, label: str, record: Path) -> dict[str, float]:
    """Night recall at the tightest and loosest thresholds and median PnP inliers (plain and night)
    of one model on ``args.localization``; kept in the JSON file ``record`` with the weights'
    sha256 and the query split and night seed, and read back from there while they are unchanged."""
    scene = args.localization
    key = {"weights_sha256": sha256sum(weights), "split": [SPLIT_STEP, SPLIT_OFFSET], "night_seed": NIGHT_SEED}
    if record.is_file():
        stored = json.loads(record.read_text())
        if all(stored.get(k) == v for k, v in key.items()):
            return stored["scores"]
    split, conditions = query_conditions(scene, args.output_root / "localization")
    method = parse_method(f"hndesc-r2d2={weights}")
    scores, _ = run_method(method, scene, conditions, split, args.output_root / "localization" / label, args.cache)
    night, plain = scores["synthetic night"], scores["plain"]
    result = {
        "night_recall_tight": 100 * float(night.summary.recall[0]),
        "night_recall_loose": 100 * float(night.summary.recall[-1]),
        "night_inliers": night.median_inliers,
        "plain_inliers": plain.median_inliers,
    }
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps({**key, "scores": result}))
    return result


def run_variant(args: argparse.Namespace, variant: str, seed: int, sequences: list) -> dict[str, float]:
    """Train (or reuse) one run and measure it; returns its row of numbers."""
    out = args.output_root / f"{variant}-s{seed}"
    extra = [f"mining.bank.global_path={args.how_global}"] if variant == "global-how" else []
    overrides = [
        *VARIANTS[variant], *extra, f"train.seed={seed}", f"data.seed={seed}", f"train.steps={args.steps}",
        f"train.output_dir={out}", *args.overrides,
    ]
    metrics, wall = timed_once(out, lambda: train_hndesc_r2d2(load_train_config(args.config, overrides)))
    results = evaluate_method(parse_method(f"hndesc-r2d2={out / 'model.pt'}"), sequences, args.sequences, args.cache)
    column = MMA_THRESHOLDS.index(3.0)
    row = {
        "val_ap": metrics["val"].get("ap", float("nan")),
        "val_mma": metrics["val"].get("mma", float("nan")),
        "wall": wall,
    }
    for kind in ("i", "v", "all"):
        summary = summarize(results, kind)
        row[f"mma_{kind}"] = float(summary.mma[column]) if summary else float("nan")
        row[f"matches_{kind}"] = summary.mean_matches if summary else float("nan")
    night = summarize(results, "i", NIGHT_TARGET)
    row["mma_night"] = float(night.mma[column]) if night else float("nan")
    if args.localization is not None:
        record = out / f"localization-{args.localization.name}.json"
        row |= localization_scores(args, out / "model.pt", f"{variant}-s{seed}", record)
    return row


def localization_text(args: argparse.Namespace) -> str:
    """The localisation protocol in a sentence, or nothing without ``--localization``."""
    if args.localization is None:
        return ""
    return (
        f" Localisation: `{args.localization.name}` as `benchmarks.localization` (ground-truth reference "
        "triangulated from the database, every query against every database image, hloc's PnP; the "
        "queries plain and as synthetic night, seed 0); recall in %, median PnP inliers."
    )


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    """Train and measure every (variant, seed), then publish the table; returns the rows."""
    args = parse_args(argv)
    sequences = select_sequences(list_sequences(args.sequences), args.max_sequences)
    results: dict[str, list[dict[str, float]]] = {}
    for variant in args.variants:
        for seed in args.seeds:
            row = run_variant(args, variant, seed, sequences)
            results.setdefault(variant, []).append(row)
            print(f"{variant} seed {seed}: {row}")

    localization = ["night_recall_tight", "night_recall_loose", "night_inliers", "plain_inliers"]
    rows = [
        [
            variant, len(items), mean_sd([r["val_ap"] for r in items]), mean_sd([r["val_mma"] for r in items]),
            *(mean_sd([r[f"mma_{k}"] for r in items]) for k in ("i", "v", "all", "night")),
            f"{statistics.fmean(r['matches_all'] for r in items):.0f}",
            *((mean_sd([r[k] for r in items], digits=0) for k in localization) if args.localization else ()),
            f"{statistics.fmean(r['wall'] for r in items):.0f}",
        ]
        for variant, items in results.items()
    ]
    kinds = [s.kind for s in sequences]
    extra = " ".join(f"`{o}`" for o in args.overrides) or "none"
    body = "\n".join([
        f"Budget per run: {args.steps} updates (config `{args.config}`, extra overrides: {extra}); seeds "
        f"{args.seeds} (training and data). Held-out: the trainer's final validation on synthetic pairs of "
        f"the held-out training photos (AP of the sampled grid, MMA@3 of the top keypoints). Evaluation: "
        f"{kinds.count('i')} `i_` and {kinds.count('v')} `v_` sequences of `{args.sequences}`, each model "
        f"through the `hndesc-r2d2` extractor, MMA@3 px with mutual nearest neighbours; \"night\" is the "
        f"`i_` pairs 1→{NIGHT_TARGET}, whose target is a synthetic night.{localization_text(args)} mean ± sd over seeds.",
        "",
        table(["variant", "seeds", "held-out AP", "held-out MMA@3", "MMA@3 i", "MMA@3 v", "MMA@3 all",
               "MMA@3 night", "matches / pair",
               *(["night recall 0.25 m, 2°", "night recall 5 m, 10°", "night PnP inliers", "day PnP inliers"]
                 if args.localization else []),
               "s / run"], rows),
    ])
    publish(KEY, TITLE, body, args.no_write)
    return results


if __name__ == "__main__":
    main()
