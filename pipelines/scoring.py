"""Scoring a results file against known poses (miniature datasets, or any user ground truth)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import logger
from ..evaluation.localization import QueryResult, evaluate, read_poses
from .steps import write_json_atomic


def score_results(
    results: Path,
    ground_truth: Path,
    conditions: Mapping[str, str],
    inliers: Mapping[str, int],
    thresholds: Sequence[tuple[float, float]],
    output: Path,
) -> dict[str, dict]:
    """Recall per condition (``conditions``: query basename -> e.g. day/night) into ``output`` (JSON).

    A query missing from ``results``, or localised with 0 PnP inliers (hloc's fallback pose),
    counts as not localised. Queries of ``conditions`` without ground truth are left out.
    """
    estimates = read_poses(results)
    truth = read_poses(ground_truth)
    report: dict[str, dict] = {}
    for condition in sorted(set(conditions.values())):
        names = [n for n, c in conditions.items() if c == condition and n in truth]
        if not names:
            continue
        found = {n: QueryResult(n, *estimates[n], num_inliers=int(inliers.get(n, 0))) for n in names if n in estimates}
        summary = evaluate(found, {n: truth[n] for n in names}, thresholds)
        report[condition] = {
            "queries": summary.num_queries,
            "failed": summary.num_failed,
            "thresholds": [list(t) for t in summary.thresholds],
            "recall": [float(r) for r in summary.recall],
            "median_position_error": summary.median_position_error,
            "median_rotation_error": summary.median_rotation_error,
            "per_query": {n: [r.position_error, r.rotation_error, r.num_inliers] for n, r in sorted(found.items())},
        }
        logger.info(
            "%s: recall %s at %s over %d queries (median %.3f, %.2f deg, %d failed).",
            condition, " / ".join(f"{100 * r:.1f}" for r in summary.recall),
            ", ".join(f"({t:g}, {r:g} deg)" for t, r in summary.thresholds), summary.num_queries,
            summary.median_position_error, summary.median_rotation_error, summary.num_failed,
        )
    write_json_atomic(output, report)
    return report

