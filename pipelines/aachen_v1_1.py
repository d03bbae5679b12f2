"""Aachen Day-Night v1.1 through hloc with our features and retrieval.

python -m hloc_hndesc.pipelines.aachen_v1_1 --dataset datasets/aachen_v1.1 --outputs outputs/aachen_v1.1 \
    [--features hynet] [--retrieval how-asmk] [--num-covis 20] [--num-loc 50]

hloc's steps (``hloc/pipelines/Aachen_v1_1/pipeline.py``): local features of every image under
``images_upright/`` -> pairs of the ``--num-covis`` most covisible database images in the reference
SIFT model (``3D-models/aachen_v_1_1``) -> matching -> triangulation of a new reference model at
the SIFT model's poses -> retrieval of ``--num-loc`` database images per query -> matching ->
``localize_sfm`` with ``queries/*_time_queries_with_intrinsics.txt``. The results file
(``name qw qx qy qz tx ty tz``, query basenames, camera-from-world) is the benchmark's
submission format; it is written once, at the end. Every step resumes (:mod:`.steps`).
Defaults: ``configs/pipelines/aachen_v1_1.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pycolmap
from omegaconf import DictConfig

from .. import logger
from ..evaluation.datasets import DatasetError
from ..evaluation.localization import THRESHOLDS, localize
from .components import log_components, match, resolve_features, resolve_matcher, resolve_retrieval, spec_tag
from .layout import check_aachen
from .localization_plots import inliers_from_logs, plot_localizations, plot_sfm_queries, read_logs
from ..plots import camera_centres, write_model_summary
from .runner import attach_log, detach_log, exit_with, main_of
from .scoring import score_results
from .steps import Steps

NAME = "aachen_v1_1"


@dataclass
class AachenRun:
    """The files a run wrote, and which steps ran or were skipped."""

    results: Path
    features: Path
    reference: Path
    sfm_pairs: Path
    loc_pairs: Path
    evaluation: Path | None
    steps: Steps
    plots: list[Path] = field(default_factory=list)


def run(dataset: Path, outputs: Path, conf: DictConfig) -> AachenRun:
    """Run the pipeline on ``dataset`` into ``outputs`` (see the module docstring)."""
    layout = check_aachen(dataset)
    features = resolve_features(conf.features, conf.resize_max)
    matcher = resolve_matcher(conf.matcher, features)
    retrieval = resolve_retrieval(conf.retrieval)
    ground_truth = Path(conf.ground_truth) if conf.ground_truth else None
    if ground_truth is not None and not ground_truth.is_file():
        raise DatasetError(f"{ground_truth}: ground-truth file not found")
    handler = attach_log(outputs)
    try:
        return _run(layout, outputs, conf, features, matcher, retrieval, ground_truth)
    finally:
        detach_log(handler)


def _run(layout, outputs, conf, features, matcher, retrieval, ground_truth) -> AachenRun:
    from hloc import pairs_from_covisibility, triangulation

    log_components(features, matcher, retrieval)
    steps = Steps(outputs)
    queries = sorted(layout.queries)
    names = layout.database + queries
    image_paths = [layout.images / n for n in names]
    feature_path = features.path(outputs)
    steps.run("extract", lambda: features.extract(layout.images, names, outputs),
              {"features": features.key, "names": names}, image_paths, [feature_path])

    sfm_pairs = outputs / f"pairs-db-covis{conf.num_covis}.txt"
    model_files = sorted(layout.model.iterdir())
    steps.run("pairs-sfm", lambda: pairs_from_covisibility.main(layout.model, sfm_pairs, num_matched=conf.num_covis),
              {"num_covis": conf.num_covis}, model_files, [sfm_pairs])

    tag = f"{features.key}_{matcher['output']}"
    sfm_matches = outputs / f"matches-sfm_{tag}_covis{conf.num_covis}.h5"
    steps.run("match-sfm", lambda: match(matcher, sfm_pairs, feature_path, sfm_matches),
              {"matcher": matcher}, [sfm_pairs, feature_path], [sfm_matches])

    reference = outputs / f"sfm_{tag}"
    steps.run("triangulate", lambda: triangulation.main(reference, layout.model, layout.images, sfm_pairs, feature_path, sfm_matches),
              {}, [*model_files, sfm_pairs, feature_path, sfm_matches], [reference / "images.bin", reference / "points3D.bin"])

    loc_pairs = outputs / f"pairs-query-{spec_tag(retrieval.spec)}{conf.num_loc}.txt"
    steps.run("pairs-loc", lambda: retrieval.pairs(layout.images, queries, layout.database, conf.num_loc, loc_pairs, outputs),
              {"retrieval": retrieval.spec, "num_loc": conf.num_loc, "queries": queries, "database": layout.database},
              [layout.images / n for n in names] if retrieval.kind != "exhaustive" else [], [loc_pairs])

    loc_matches = outputs / f"matches-loc_{tag}_{spec_tag(retrieval.spec)}{conf.num_loc}.h5"
    steps.run("match-loc", lambda: match(matcher, loc_pairs, feature_path, loc_matches),
              {"matcher": matcher}, [loc_pairs, feature_path], [loc_matches])

    results = outputs / f"Aachen-v1.1_hloc_{features.key}_{spec_tag(retrieval.spec)}{conf.num_loc}.txt"
    logs = Path(f"{results}_logs.pkl")

    def localize_step() -> None:
        partial = outputs / ".partial" / results.name
        localize(reference, layout.queries, loc_pairs, feature_path, loc_matches, partial,
                 ransac_thresh=conf.ransac_thresh, seed=conf.seed, covisibility_clustering=conf.covisibility_clustering)
        Path(f"{partial}_logs.pkl").replace(logs)
        partial.replace(results)

    steps.run("localize", localize_step,
              {"ransac": conf.ransac_thresh, "seed": conf.seed, "clustering": conf.covisibility_clustering},
              [reference / "images.bin", reference / "points3D.bin", loc_pairs, feature_path, loc_matches], [results, logs])
    logger.info("Results (submission format): %s", results)

    evaluation = None
    if ground_truth is not None:
        evaluation = outputs / "evaluation.json"
        conditions = {n.split("/")[-1]: layout.condition[n] for n in queries}
        score_results(results, ground_truth, conditions, inliers_from_logs(read_logs(results)), THRESHOLDS, evaluation)

    plots = []
    if conf.plots > 0:
        model = pycolmap.Reconstruction(reference)
        plots.append(write_model_summary(model, outputs / "plots", f"Aachen v1.1 reference, {features.label}"))
        plots += plot_sfm_queries(read_logs(results), model, layout.images, feature_path, loc_matches, outputs / "plots", conf.plots)
        plots.append(plot_localizations(results, camera_centres(model), ground_truth, outputs / "plots" / "localizations.png"))
    return AachenRun(results, feature_path, reference, sfm_pairs, loc_pairs, evaluation, steps, plots)


main = main_of(NAME, __doc__.splitlines()[0], run)

if __name__ == "__main__":
    exit_with(main)
