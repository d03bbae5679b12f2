"""Plots of localised queries from hloc's ``localize_sfm`` / InLoc logs (a few queries, top view)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import logger
from ..evaluation.localization import pnp_result, read_poses
from ..plots import plot_correspondences, plot_positions


def read_logs(results: Path) -> dict:
    """hloc's ``<results>_logs.pkl`` (``{"loc": {query: log}}``)."""
    with open(f"{results}_logs.pkl", "rb") as handle:
        return pickle.load(handle)


def inliers_from_logs(logs: Mapping) -> dict[str, int]:
    """PnP inliers per query basename (0 where PnP failed)."""
    out = {}
    for name, log in logs["loc"].items():
        ret = pnp_result(log)
        out[name.split("/")[-1]] = int(ret["num_inliers"]) if ret is not None and ret.get("num_inliers") is not None else 0
    return out


def _inlier_mask(ret: Mapping | None, size: int) -> np.ndarray:
    if ret is None or ret.get("inlier_mask") is None:
        return np.zeros(size, bool)
    return np.asarray(ret["inlier_mask"], bool).reshape(-1)[:size]


def plot_sfm_queries(
    logs: Mapping, reference, image_dir: Path, features: Path, matches: Path, out_dir: Path, count: int
) -> list[Path]:
    """For ``count`` queries: the query beside the database image sharing most PnP inliers (localize_sfm)."""
    from hloc.utils.io import get_keypoints, get_matches

    paths = []
    for query in sorted(logs["loc"])[:count]:
        log = logs["loc"][query]
        if "log_clusters" in log:
            if log.get("best_cluster") is None:
                continue
            log = log["log_clusters"][log["best_cluster"]]
        ret = log.get("PnP_ret")
        indices = np.asarray(log["keypoint_index_to_db"][0], int)
        inlier_keypoints = set(indices[_inlier_mask(ret, len(indices))].tolist())
        best = None
        for db_id in log["db"]:
            image = reference.images[db_id]
            name = image.name
            pairs, _ = get_matches(matches, query, name)
            with_point = np.array([p.has_point3D() for p in image.points2D], bool)
            pairs = pairs[with_point[pairs[:, 1]]] if len(pairs) else pairs  # the 2D-3D matches PnP saw
            good = np.isin(pairs[:, 0], list(inlier_keypoints)) if len(pairs) else np.zeros(0, bool)
            if best is None or good.sum() > best[2].sum():
                best = (name, pairs, good)
        if best is None:
            continue
        name, pairs, good = best
        kq, kd = get_keypoints(features, query)[pairs[:, 0]], get_keypoints(features, name)[pairs[:, 1]]
        path = out_dir / f"query_{Path(query).stem}.png"
        title = f"{Path(query).name} - {Path(name).name}: {int(good.sum())} PnP inliers / {len(pairs)} matches with 3D"
        paths.append(plot_correspondences(image_dir / query, image_dir / name, kq, kd, good, path, title))
    return paths


def plot_inloc_queries(logs: Mapping, root: Path, out_dir: Path, count: int) -> list[Path]:
    """For ``count`` queries: the query beside the cutout contributing most PnP inliers (localize_inloc)."""
    paths = []
    for query in sorted(logs["loc"])[:count]:
        log = logs["loc"][query]
        if log.get("PnP_ret") is None or not len(log.get("indices_db", [])):
            continue
        indices = np.asarray(log["indices_db"], int)
        mask = _inlier_mask(log["PnP_ret"], len(indices))
        best = int(np.bincount(indices[mask], minlength=indices.max() + 1).argmax()) if mask.any() else int(indices[0])
        keep = indices == best
        cutout = log["db"][best]
        path = out_dir / f"query_{Path(query).stem}.png"
        title = f"{Path(query).name} - {Path(cutout).name}: {int(mask[keep].sum())} PnP inliers / {int(keep.sum())} matches with 3D"
        paths.append(plot_correspondences(
            root / query, root / cutout, log["keypoints_query"][keep], log["keypoints_db"][keep], mask[keep], path, title
        ))
    return paths


def plot_localizations(
    results: Path, database_centres: np.ndarray, ground_truth: Path | None, path: Path, names: Sequence[str] | None = None
) -> Path:
    """Top view of database cameras, estimated query centres and, with ground truth, the true ones."""
    estimates = read_poses(results)
    names = sorted(estimates) if names is None else [n for n in names if n in estimates]
    centre = {n: -r.T @ t for n, (r, t) in estimates.items()}
    groups = {"database": database_centres, "estimated queries": np.array([centre[n] for n in names]).reshape(-1, 3)}
    links = None
    if ground_truth is not None:
        truth = read_poses(ground_truth)
        known = [n for n in names if n in truth]
        estimated = groups.pop("estimated queries")
        groups["true queries (rings)"] = np.array([-truth[n][0].T @ truth[n][1] for n in known]).reshape(-1, 3)
        groups["estimated queries"] = np.array([centre[n] for n in known]).reshape(-1, 3) if known else estimated
        links = ("estimated queries", "true queries (rings)")
    logger.info("Writing the localisation plot %s.", path)
    return plot_positions(path, groups, links, title=f"{len(names)} localised queries (top view)")
