"""Held-out validation of R2D2-family weights on the synthetic pairs of a training run.

    python -m benchmarks.r2d2_validation --weights official=r2d2_WASF_N16.pt --weights earlier=run/model.pt

The pairs are those the trainer validates on (``HNDescR2D2Task.validate``: the validation split
of the training photos, epoch 0, with the homography, photometric and stylization settings of
the run) at the settings of the shipped HNDesc-R2D2 checkpoint, or of ``--settings CKPT`` (one
of this project's training checkpoints), with ``key=value`` overrides on top (e.g. where the
training photos are). Scored: the shipped weights, every ``--weights LABEL=PATH`` (this
project's layout or the official R2D2 one) and randomly initialised weights of the shipped
architecture (seed 0) as the floor, each by the AP of the sampled grid, the MMA@3 and the
repeatability of its top keypoints. SIFT has no dense descriptor map to be scored this way: its
comparisons are in the other sections.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.report import publish, table
from hloc_hndesc.features.r2d2 import official_pickle_globals
from hloc_hndesc.models.r2d2 import arch_from_checkpoint
from hloc_hndesc.training.r2d2 import HNDescR2D2Task, hndesc_r2d2_train_conf
from hloc_hndesc.weights import apply_checkpoint, load_checkpoint, sha256sum, shipped_weights

KEY = "r2d2_validation"
TITLE = "HNDesc-R2D2 held-out validation against other R2D2-family weights (issue 7)"
COLUMNS = ("ap", "mma", "repeatability", "matches")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", type=Path, default=None, help="checkpoint whose training settings give the pairs")
    parser.add_argument("--weights", action="append", default=[], metavar="LABEL=PATH", help="weights to score")
    parser.add_argument("--pairs", type=int, default=None, help="at most this many validation pairs")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the settings (e.g. data.image_dirs=[...])")
    args = parser.parse_args(argv)
    specs = [spec.partition("=") for spec in args.weights]
    for spec, (label, sep, path) in zip(args.weights, specs):
        if not sep or not label or not path:
            parser.error(f"--weights expects LABEL=PATH, got {spec!r}")
    args.weights = [(label, Path(path)) for label, _, path in specs]
    return args


def settings_conf(path: Path, overrides: list[str], pairs: int | None) -> dict:
    """The training config stored in checkpoint ``path``, with ``overrides`` and the pair limit."""
    meta = load_checkpoint(path).get("meta", {})
    if "config" not in meta:
        raise ValueError(f"{path}: no training config in its meta (not one of this project's training checkpoints)")
    conf = OmegaConf.merge(OmegaConf.create(meta["config"]), OmegaConf.from_dotlist(overrides))
    if pairs is not None:
        conf.validation.pairs = pairs
    return OmegaConf.to_container(conf)


def validate(settings: dict, checkpoint: dict | None, source: str, seed: int = 0) -> dict[str, float]:
    """The trainer's held-out validation of one set of weights (random ones of the settings'
    architecture when ``checkpoint`` is None)."""
    model = dict(settings["model"])
    if checkpoint is not None:
        arch = arch_from_checkpoint(checkpoint)
        model |= {"variant": arch.variant, "mchan": arch.mchan, "dim": arch.dim}
    torch.manual_seed(seed)
    task = HNDescR2D2Task(hndesc_r2d2_train_conf({**settings, "model": model}))
    if checkpoint is not None:
        apply_checkpoint(task.model, "r2d2", checkpoint, source)
    task.model.eval()
    with torch.no_grad():
        return task.validate()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Score the shipped, given and random weights on the same held-out pairs; returns the scores."""
    args = parse_args(argv)
    shipped = shipped_weights("hndesc-r2d2")
    settings_path = args.settings or shipped
    settings = settings_conf(settings_path, args.overrides, args.pairs)
    specs = [("shipped", shipped), *args.weights]
    scores: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    for label, path in specs:
        with official_pickle_globals():
            checkpoint = load_checkpoint(path)
        scores[label] = validate(settings, checkpoint, str(path))
        sources[label] = f"`{path.name}` (sha256 {sha256sum(path)[:8]}...)"
        print(f"{label}: {scores[label]}", flush=True)
    scores["random"] = validate(settings, None, "random")
    sources["random"] = "random initialisation, seed 0"
    if not scores["shipped"]:
        raise ValueError(f"{settings_path}: its settings have no validation split (data.val_fraction = 0)")

    rows = [[label, sources[label], *(f"{scores[label][k]:.3f}" if k != "matches" else f"{scores[label][k]:.0f}"
                                     for k in COLUMNS)] for label in scores]
    data = settings["data"]
    body = "\n".join([
        f"Pairs: {int(scores['shipped']['pairs'])} held-out synthetic pairs (the validation split of "
        f"{', '.join(f'`{d}`' for d in data['image_dirs'])}, fraction {data['val_fraction']}, seed {data['seed']}) at "
        f"the settings of `{settings_path.name}`: {data['crop']} px crops, homography difficulty "
        f"{data['homography']['difficulty']} (rotation up to ±{data['homography']['rotation'] * data['homography']['difficulty']:g}°), "
        f"stylization probability {data['stylize_probability']}. AP: quantised AP of the sampled grid "
        "against every anchor farther than the exclusion radius; MMA@3 and repeatability of the "
        f"{settings['validation']['keypoints']} best keypoints per image (mutual nearest neighbours), "
        "as the trainer's validation.",
        "",
        table(["weights", "file", "AP", "MMA@3", "repeatability", "matches / pair"], rows),
    ])
    publish(KEY, TITLE, body, args.no_write)
    return scores


if __name__ == "__main__":
    main()
