"""InLoc through hloc with our features and retrieval.

python -m hloc_hndesc.pipelines.inloc --dataset datasets/inloc --outputs outputs/inloc \
    [--features hynet] [--retrieval how-asmk] [--num-loc 40] [--skip-matches 20]

Steps (hloc's ``pipeline_InLoc`` notebook): local features of the queries (``query/iphone7``) and
of the cutouts (``database/cutouts``) -> ``--num-loc`` retrieved cutouts per query -> matching ->
hloc's ``localize_inloc``: per query, the 3D points of the matched cutout pixels (``XYZcut`` of
``<cutout>.jpg.mat``, read bilinearly, moved to the building frame by the scan's alignment),
cutouts with fewer than ``--skip-matches`` matches skipped, PnP with the focal length fixed to
4032·28/36 px and the principal point at the image centre. hloc's ``pose_from_cluster`` is called
per query, so that a query without a pose (no cutout with enough matches, PnP failure) is logged
and left out instead of aborting the run. The results file (``name qw qx qy qz tx ty tz``, query
basenames) is the benchmark's submission format, written once, at the end; every step resumes.
Defaults: ``configs/pipelines/inloc.yaml``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from .. import logger
from ..evaluation.datasets import DatasetError
from ..evaluation.localization import write_poses
from ..evaluation.miniature import INLOC_THRESHOLDS
from ..files import atomic_path
from .components import log_components, match, resolve_features, resolve_matcher, resolve_retrieval, spec_tag
from .layout import check_inloc, transformation_file
from .localization_plots import inliers_from_logs, plot_inloc_queries, plot_localizations, read_logs
from .runner import attach_log, detach_log, exit_with, main_of
from .scoring import score_results
from .steps import Steps

NAME = "inloc"


@dataclass
class InLocRun:
    """The files a run wrote, which steps ran, and the queries left without a pose."""

    results: Path
    features: Path
    pairs: Path
    evaluation: Path | None
    steps: Steps
    failed: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def localize(root: Path, pairs: Path, features: Path, matches: Path, results: Path, skip_matches: int | None) -> list[str]:
    """hloc's InLoc localisation of every query of ``pairs``; returns the queries left without a pose.

    Writes ``results`` and ``<results>_logs.pkl`` (hloc's log layout: ``{"loc": {query: ...}}``),
    each through a temporary file.
    """
    from hloc.localize_inloc import pose_from_cluster
    from hloc.utils.parsers import parse_retrieval

    retrieval = parse_retrieval(pairs)
    poses, failed = {}, []
    logs: dict = {"features": features, "matches": matches, "retrieval": pairs, "loc": {}}
    with h5py.File(features, "r", libver="latest") as feature_file, h5py.File(matches, "r", libver="latest") as match_file:
        for query in tqdm(sorted(retrieval), desc="localize_inloc", unit="query"):
            database = retrieval[query]
            try:
                ret, mkpq, mkpr, mkp3d, indices, num_matches = pose_from_cluster(
                    root, query, database, feature_file, match_file, skip_matches
                )
            except (ValueError, TypeError, AssertionError) as error:
                # hloc raises ValueError when every cutout has < skip_matches matches (nothing to
                # concatenate), TypeError when PnP returns no pose, AssertionError for keypoints
                # on the image border.
                logger.warning("%s: not localised (%s: %s)", query, type(error).__name__, error)
                failed.append(query)
                logs["loc"][query] = {"db": database, "PnP_ret": None, "error": f"{type(error).__name__}: {error}"}
                continue
            pose = ret["cam_from_world"]
            poses[query.split("/")[-1]] = (pose.rotation.matrix(), np.asarray(pose.translation))
            logs["loc"][query] = {
                "db": database, "PnP_ret": ret, "keypoints_query": mkpq, "keypoints_db": mkpr,
                "3d_points": mkp3d, "indices_db": indices, "num_matches": num_matches,
            }
    logger.info("Localised %d / %d queries.", len(poses), len(retrieval))
    with atomic_path(f"{results}_logs.pkl") as tmp, open(tmp, "wb") as handle:
        pickle.dump(logs, handle)
    write_poses(results, poses)
    return failed


def scan_positions(root: Path, cutouts: list[str]) -> np.ndarray:
    """(N, 3) scanner positions (translation of each scan's alignment) of the scans of ``cutouts``."""
    files = sorted({transformation_file(root, c) for c in cutouts})
    rows = []
    for path in files:
        lines = path.read_text().splitlines()
        rows.append([float(lines[i].split()[3]) for i in range(7, 10)])
    return np.array(rows, np.float64).reshape(-1, 3)


def run(dataset: Path, outputs: Path, conf: DictConfig) -> InLocRun:
    """Run the pipeline on ``dataset`` into ``outputs`` (see the module docstring)."""
    layout = check_inloc(dataset, conf.check_samples)
    features = resolve_features(conf.features, conf.resize_max)
    matcher = resolve_matcher(conf.matcher, features)
    retrieval = resolve_retrieval(conf.retrieval)
    ground_truth = Path(conf.ground_truth) if conf.ground_truth else None
    if ground_truth is not None and not ground_truth.is_file():
        raise DatasetError(f"{ground_truth}: ground-truth file not found")
    handler = attach_log(outputs)
    try:
        for warning in layout.warnings:
            logger.warning("%s", warning)
        log_components(features, matcher, retrieval)
        steps = Steps(outputs)
        root = layout.root
        names = layout.queries + layout.database
        feature_path = features.path(outputs)
        steps.run("extract", lambda: features.extract(root, names, outputs),
                  {"features": features.key, "names": names}, [root / n for n in names], [feature_path])
        tag = spec_tag(retrieval.spec)
        pairs = outputs / f"pairs-query-{tag}{conf.num_loc}.txt"
        steps.run("pairs-loc", lambda: retrieval.pairs(root, layout.queries, layout.database, conf.num_loc, pairs, outputs),
                  {"retrieval": retrieval.spec, "num_loc": conf.num_loc, "names": names},
                  [root / n for n in names] if retrieval.kind != "exhaustive" else [], [pairs])
        matches = outputs / f"matches_{features.key}_{matcher['output']}_{tag}{conf.num_loc}.h5"
        steps.run("match", lambda: match(matcher, pairs, feature_path, matches), {"matcher": matcher},
                  [pairs, feature_path], [matches])
        results = outputs / f"InLoc_hloc_{features.key}_{tag}{conf.num_loc}.txt"
        failed: list[str] = []
        steps.run("localize", lambda: failed.extend(localize(root, pairs, feature_path, matches, results, conf.skip_matches)),
                  {"skip_matches": conf.skip_matches}, [pairs, feature_path, matches], [results, Path(f"{results}_logs.pkl")])
        logs = read_logs(results)
        failed = failed or [q for q, log in logs["loc"].items() if log.get("PnP_ret") is None]
        logger.info("Results (submission format): %s (%d queries without a pose)", results, len(failed))
        evaluation = None
        if ground_truth is not None:
            evaluation = outputs / "evaluation.json"
            conditions = {q.split("/")[-1]: "InLoc" for q in layout.queries}
            score_results(results, ground_truth, conditions, inliers_from_logs(logs), INLOC_THRESHOLDS, evaluation)
        plots = []
        if conf.plots > 0:
            plots += plot_inloc_queries(logs, root, outputs / "plots", conf.plots)
            plots.append(plot_localizations(results, scan_positions(root, layout.database), ground_truth,
                                            outputs / "plots" / "localizations.png"))
        return InLocRun(results, feature_path, pairs, evaluation, steps, failed, plots)
    finally:
        detach_log(handler)


main = main_of(NAME, __doc__.splitlines()[0], run)

if __name__ == "__main__":
    exit_with(main)
