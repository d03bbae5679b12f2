"""Retrieval evaluation: revisited Oxford/Paris mAP, Tokyo 24/7 recall@N, label mAP, covisibility.

- Revisited ROxford/RParis (Radenović et al. 2018): a ground truth with ``imlist``,
  ``qimlist`` and per query ``easy``/``hard``/``junk`` database indices (and ``bbx``).
  Easy: easy images are positives, hard and junk are ignored; Medium: easy and hard are
  positives, junk ignored; Hard: hard are positives, easy and junk ignored. Ignored images
  are removed from the ranking before AP is computed. AP is the revisitop one (trapezoid
  between the precisions before and at each positive); queries without positives are left
  out of the mean. The official ``gnd_*.pkl`` files are read with a restricted unpickler
  that only builds dicts, lists, strings, numbers and numpy arrays (never arbitrary
  objects); a JSON file with the same keys works too.
- Tokyo 24/7 style geo-localisation: a query is correct at N if one of its top-N database
  images lies within ``threshold`` metres (25 m) of it. Ground-truth format (text, one image
  per line, whitespace separated, ``#`` comments): ``db|query NAME EASTING NORTHING`` with
  UTM coordinates in metres (convert Tokyo 24/7's ``tokyo247.mat`` fields ``dbImageFns``,
  ``utmDb``, ``qImageFns``, ``utmQ`` to it once).
- Label mAP: images with the same label are positives of each other (a query is never its
  own positive); images given as junk for a query are ignored.
- Strecha covisibility from ground-truth cameras (:func:`strecha_covisibility`).
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import DatasetError, StrechaCamera

PROTOCOLS = ("easy", "medium", "hard")


# --------------------------------------------------------------------------- AP


def average_precision(positive_positions: np.ndarray, num_positives: int) -> float:
    """revisitop AP from the 0-based ranks of the retrieved positives (junk already removed).

    Positives never retrieved simply add nothing; ``num_positives`` is the total.
    """
    if num_positives <= 0:
        raise ValueError("AP is undefined without positives")
    ranks = np.sort(np.asarray(positive_positions, np.float64))
    j = np.arange(len(ranks), dtype=np.float64)
    before = np.where(ranks > 0, j / np.maximum(ranks, 1), 1.0)
    at = (j + 1) / (ranks + 1)
    return float(((before + at) / 2).sum() / num_positives)


def ranking_ap(ranking: Sequence[int] | np.ndarray, positives: Sequence[int], junk: Sequence[int] = ()) -> float:
    """AP of one ranked list of database ids given positive and ignored (junk) ids."""
    ranking = np.asarray(ranking, np.int64)
    kept = ranking[~np.isin(ranking, np.asarray(list(junk), np.int64))]
    positions = np.flatnonzero(np.isin(kept, np.asarray(list(positives), np.int64)))
    return average_precision(positions, len(set(positives)))


def mean_average_precision(
    rankings: Sequence[Sequence[int]], positives: Sequence[Sequence[int]], junk: Sequence[Sequence[int]] | None = None
) -> tuple[float, np.ndarray]:
    """(mAP over queries with positives, per-query AP with NaN where a query has none)."""
    if len(rankings) != len(positives):
        raise ValueError(f"{len(rankings)} rankings for {len(positives)} queries")
    junk = junk if junk is not None else [()] * len(rankings)
    aps = np.array([ranking_ap(r, p, j) if len(p) else np.nan for r, p, j in zip(rankings, positives, junk)])
    valid = ~np.isnan(aps)
    return (float(aps[valid].mean()) if valid.any() else float("nan")), aps


# --------------------------------------------------------------------------- revisited Oxford / Paris


@dataclass
class RevisitedGroundTruth:
    """``imlist`` (database names), ``qimlist`` (query names), ``gnd`` per query (dicts)."""

    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]


class _GroundTruthUnpickler(pickle.Unpickler):
    """Builds only builtin containers/scalars and numpy arrays (what gnd_*.pkl files hold)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "str"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "bytes"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _as_index_list(value, path: Path, what: str) -> list[int]:
    arr = np.asarray(value).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"{path}: {what} holds {arr.dtype}, expected integer indices")
    return [int(v) for v in arr]


def read_revisited_gnd(path: str | Path) -> RevisitedGroundTruth:
    """A revisited Oxford/Paris ground truth (``gnd_roxford5k.pkl`` or a JSON with the same keys)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file not found")
    raw = path.read_bytes()
    try:
        if path.suffix == ".json":
            data = json.loads(raw)
        else:
            data = _GroundTruthUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, ImportError) as err:
        raise DatasetError(f"{path}: not a readable ground-truth file ({err})") from None
    if not isinstance(data, Mapping) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise DatasetError(f"{path}: expected a dict with imlist, qimlist and gnd")
    imlist, qimlist = [str(n) for n in data["imlist"]], [str(n) for n in data["qimlist"]]
    if len(data["gnd"]) != len(qimlist):
        raise DatasetError(f"{path}: {len(data['gnd'])} gnd entries for {len(qimlist)} queries")
    gnd = []
    for i, entry in enumerate(data["gnd"]):
        if not isinstance(entry, Mapping):
            raise DatasetError(f"{path}: gnd[{i}] is not a dict")
        item = {key: _as_index_list(entry.get(key, []), path, f"gnd[{i}].{key}") for key in ("easy", "hard", "junk")}
        for key, ids in item.items():
            if ids and (min(ids) < 0 or max(ids) >= len(imlist)):
                raise DatasetError(f"{path}: gnd[{i}].{key} has indices outside the {len(imlist)} database images")
        if "bbx" in entry and entry["bbx"] is not None:
            item["bbx"] = [float(v) for v in np.asarray(entry["bbx"]).reshape(-1)]
        gnd.append(item)
    return RevisitedGroundTruth(imlist, qimlist, gnd)


def protocol_sets(entry: Mapping, protocol: str) -> tuple[list[int], list[int]]:
    """(positives, ignored) of one query under Easy/Medium/Hard."""
    easy, hard, junk = list(entry["easy"]), list(entry["hard"]), list(entry["junk"])
    if protocol == "easy":
        return easy, junk + hard
    if protocol == "medium":
        return easy + hard, junk
    if protocol == "hard":
        return hard, junk + easy
    raise ValueError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")


def revisited_map(rankings: Sequence[Sequence[int]], gnd: Sequence[Mapping]) -> dict[str, float]:
    """mAP (in [0, 1]) under the Easy, Medium and Hard protocols.

    ``rankings[i]``: database indices (into ``imlist``) ranked for query ``i``.
    """
    out = {}
    for protocol in PROTOCOLS:
        sets = [protocol_sets(entry, protocol) for entry in gnd]
        out[protocol], _ = mean_average_precision(rankings, [s[0] for s in sets], [s[1] for s in sets])
    return out


def names_to_indices(ranked_names: Sequence[str], names: Sequence[str]) -> list[int]:
    """Map a ranked list of names to indices into ``names`` (unknown names raise KeyError)."""
    position = {n: i for i, n in enumerate(names)}
    return [position[n] for n in ranked_names]


# --------------------------------------------------------------------------- Tokyo 24/7


@dataclass
class GeoGroundTruth:
    """Database and query names with UTM positions (metres)."""

    db_names: list[str]
    db_utm: np.ndarray
    query_names: list[str]
    query_utm: np.ndarray


def read_geo_ground_truth(path: str | Path) -> GeoGroundTruth:
    """Read ``db|query NAME EASTING NORTHING`` lines (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file not found")
    rows: dict[str, list[tuple[str, float, float]]] = {"db": [], "query": []}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4 or parts[0] not in rows:
            raise DatasetError(f"{path}:{number}: expected 'db|query NAME EASTING NORTHING', got {line!r}")
        try:
            rows[parts[0]].append((parts[1], float(parts[2]), float(parts[3])))
        except ValueError:
            raise DatasetError(f"{path}:{number}: coordinates are not numbers: {line!r}") from None
    if not rows["db"] or not rows["query"]:
        raise DatasetError(f"{path}: needs at least one db and one query line")

    def unpack(items: list[tuple[str, float, float]]) -> tuple[list[str], np.ndarray]:
        names = [n for n, _, _ in items]
        if len(set(names)) != len(names):
            raise DatasetError(f"{path}: duplicate image names")
        return names, np.array([[e, n] for _, e, n in items], np.float64)

    db_names, db_utm = unpack(rows["db"])
    query_names, query_utm = unpack(rows["query"])
    return GeoGroundTruth(db_names, db_utm, query_names, query_utm)


def recall_at_n(
    rankings: Mapping[str, Sequence[str]], gt: GeoGroundTruth, ns: Sequence[int] = (1, 5, 10, 20), threshold: float = 25.0
) -> dict[int, float]:
    """Fraction of queries with a database image within ``threshold`` m among their top N."""
    db_position = {n: i for i, n in enumerate(gt.db_names)}
    missing = [q for q in gt.query_names if q not in rankings]
    if missing:
        raise KeyError(f"no ranking for {len(missing)} queries, e.g. {missing[:3]}")
    hits = np.zeros((len(gt.query_names), len(ns)), bool)
    for qi, query in enumerate(gt.query_names):
        ranked = [db_position[n] for n in rankings[query][: max(ns)]]
        if not ranked:
            continue
        close = np.linalg.norm(gt.db_utm[ranked] - gt.query_utm[qi], axis=1) <= threshold
        for k, n in enumerate(ns):
            hits[qi, k] = bool(close[:n].any())
    return {int(n): float(hits[:, k].mean()) for k, n in enumerate(ns)}


# --------------------------------------------------------------------------- labels


def label_ground_truth(
    labels: Sequence[str], junk_labels: Mapping[str, Sequence[str]] | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Per image as a query against all others: (positives, junk) indices.

    Positives share its label; the query itself is junk (it is usually excluded anyway);
    images whose label is in ``junk_labels[label]`` are junk too.
    """
    labels = list(labels)
    positives, junk = [], []
    for i, label in enumerate(labels):
        ignored = set((junk_labels or {}).get(label, ()))
        positives.append([j for j, other in enumerate(labels) if other == label and j != i])
        junk.append([i] + [j for j, other in enumerate(labels) if other in ignored and other != label])
    return positives, junk


# --------------------------------------------------------------------------- Strecha covisibility


def _scene_depth(camera: StrechaCamera, others: Sequence[StrechaCamera]) -> float:
    """Depth along ``camera``'s optical axis where it meets the other axes (median of the
    closest points between the axes, over pairs where both points are in front)."""
    axis = camera.R[:, 2]
    depths = []
    for other in others:
        b = other.R[:, 2]
        w = camera.center - other.center
        a_b = axis @ b
        denom = 1.0 - a_b**2
        if denom < 1e-6:
            continue
        s = (a_b * (b @ w) - axis @ w) / denom
        t = ((b @ w) - a_b * (axis @ w)) / denom
        if s > 0 and t > 0:
            depths.append(s)
    if depths:
        return float(np.median(depths))
    return float(np.median([np.linalg.norm(o.center - camera.center) for o in others]))


def view_overlap(source: StrechaCamera, target: StrechaCamera, depth: float, grid: int = 24) -> float:
    """Fraction of a ``grid`` x ``grid`` pixel grid of ``source``, placed at ``depth`` along its
    axis (a fronto-parallel plane), that projects into ``target``'s image in front of it."""
    w, h = source.size
    u, v = np.meshgrid((np.arange(grid) + 0.5) * w / grid, (np.arange(grid) + 0.5) * h / grid)
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    rays = np.linalg.solve(source.K, pixels)
    points = source.R @ (rays * depth) + source.center[:, None]
    cam = target.R.T @ (points - target.center[:, None])
    front = cam[2] > 1e-9
    proj = target.K @ cam
    x = proj[0] / np.where(front, proj[2], 1.0)
    y = proj[1] / np.where(front, proj[2], 1.0)
    inside = front & (x >= 0) & (x < target.size[0]) & (y >= 0) & (y < target.size[1])
    return float(inside.mean())


def strecha_covisibility(cameras: Sequence[StrechaCamera], min_overlap: float = 0.5, grid: int = 24) -> np.ndarray:
    """(n, n) bool: images i != j are covisible when each sees at least ``min_overlap`` of the
    other's view of the scene plane (see :func:`view_overlap`; depth from :func:`_scene_depth`)."""
    cameras = list(cameras)
    n = len(cameras)
    if n < 2:
        return np.zeros((n, n), bool)
    depths = [_scene_depth(c, cameras[:i] + cameras[i + 1 :]) for i, c in enumerate(cameras)]
    overlap = np.eye(n)
    for i in range(n):
        for j in range(n):
            if i != j:
                overlap[i, j] = view_overlap(cameras[i], cameras[j], depths[i], grid)
    covisible = np.minimum(overlap, overlap.T) >= min_overlap
    np.fill_diagonal(covisible, False)
    return covisible


def shortlist_recall(
    rankings: Sequence[Sequence[int]],
    relevant: Sequence[Sequence[int]],
    ks: Sequence[int] = (5, 10, 20),
    junk: Sequence[Sequence[int]] | None = None,
) -> dict[int, float]:
    """Mean over queries (with relevant images) of |top-k ∩ relevant| / |relevant|, junk removed first."""
    junk = junk if junk is not None else [()] * len(rankings)
    values = {int(k): [] for k in ks}
    for ranking, rel, ign in zip(rankings, relevant, junk):
        if not len(rel):
            continue
        ranking = np.asarray(ranking, np.int64)
        kept = ranking[~np.isin(ranking, np.asarray(list(ign), np.int64))]
        hit = np.isin(kept, np.asarray(list(rel), np.int64))
        for k in values:
            values[k].append(hit[:k].sum() / len(set(rel)))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in values.items()}
