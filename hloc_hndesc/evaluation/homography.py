"""Homography benchmark (HPatches / Oxford sequences), D2-Net's protocol plus homography estimation.

For every sequence the reference image ``1`` is matched to each other image ``k`` with
mutual nearest neighbours (D2-Net's protocol, whatever matcher the method would use
elsewhere). Keypoints are in hloc's convention (pixel centres at integer coordinates), as
the extractors and :func:`hloc_hndesc.evaluation.methods.read_features` give them, and the
ground-truth ``H_1_k`` is applied to them as is.

Metrics, per pair then averaged over pairs:

- ``MMA(t)`` for ``t = 1..10`` px: fraction of matches whose reference keypoint, warped by
  ``H_1_k``, lies within ``t`` px (``<=``) of the matched keypoint; a pair without a match
  counts 0.
- homography estimation: ``H`` fitted to the matches with pycolmap's LO-RANSAC
  (:func:`pycolmap.estimate_homography_matrix`, max error :data:`RANSAC_MAX_ERROR` px, fixed
  seed); corner error = mean distance between the 4 corner pixels of the reference
  (centres ``(0, 0)``, ``(w-1, 0)``, ``(w-1, h-1)``, ``(0, h-1)``, as SuperPoint's
  evaluation) warped by the estimated and by the true ``H``. A pair with fewer than 4
  matches, or where RANSAC finds nothing, has an infinite corner error (it counts as a
  failure under every threshold and is left out of the mean corner error, whose count of
  failures is reported beside it; the median corner error counts it as infinite). The mean
  is dominated by wrong estimates (hundreds of px), the median is not.
- mean number of keypoints per image and of matches per pair.

Results are reported for the illumination (``i``) and viewpoint (``v``) sequences and all
of them together; sequences of unknown kind (Oxford) only enter ``all``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from .datasets import HomographySequence, evenly_spaced, warp_points
from .matching import match_descriptors
from .methods import Method, feature_cache, read_all_features

#: MMA thresholds in pixels (D2-Net's 1..10).
MMA_THRESHOLDS: tuple[int, ...] = tuple(range(1, 11))
#: corner-error thresholds of the homography-estimation accuracy.
CORNER_THRESHOLDS: tuple[int, ...] = (1, 3, 5)
#: LO-RANSAC inlier threshold (px) for homography estimation.
RANSAC_MAX_ERROR = 3.0
#: kinds reported, in order ("all" is every pair).
KINDS: tuple[str, ...] = ("i", "v", "all")


@dataclass
class PairResult:
    """Metrics of one reference-to-``k`` pair."""

    sequence: str
    kind: str
    target: int
    num_keypoints: tuple[int, int]
    num_matches: int
    mma: np.ndarray
    corner_error: float
    reprojection_errors: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def reprojection_errors(h: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray) -> np.ndarray:
    """(M,) distances between ``h`` applied to matched ``kpts0`` and their ``kpts1``."""
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    if len(matches) == 0:
        return np.zeros(0)
    warped = warp_points(h, np.asarray(kpts0, np.float64)[matches[:, 0]])
    return np.linalg.norm(warped - np.asarray(kpts1, np.float64)[matches[:, 1]], axis=1)


def mma(errors: np.ndarray, thresholds: tuple[float, ...] = MMA_THRESHOLDS) -> np.ndarray:
    """Fraction of ``errors`` ``<= t`` for each threshold (zeros when there is no match)."""
    errors = np.asarray(errors, np.float64).reshape(-1)
    if errors.size == 0:
        return np.zeros(len(thresholds))
    return (errors[None] <= np.asarray(thresholds, np.float64)[:, None]).mean(1)


def image_corners(size: tuple[int, int]) -> np.ndarray:
    """(4, 2) centres of the corner pixels of a ``(width, height)`` image (hloc convention)."""
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def corner_error(h_est: np.ndarray | None, h_true: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance of the reference corners warped by ``h_est`` and ``h_true`` (inf if no estimate)."""
    if h_est is None or not np.all(np.isfinite(h_est)):
        return float("inf")
    corners = image_corners(size)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.linalg.norm(warp_points(h_est, corners) - warp_points(h_true, corners), axis=1).mean()
    return float(error) if np.isfinite(error) else float("inf")


def estimate_homography(
    pts0: np.ndarray, pts1: np.ndarray, max_error: float = RANSAC_MAX_ERROR, seed: int = 0
) -> np.ndarray | None:
    """LO-RANSAC homography ``pts0 -> pts1`` ((N, 2) each) with pycolmap, or None (< 4 points / failure)."""
    pts0 = np.ascontiguousarray(pts0, np.float64).reshape(-1, 2)
    pts1 = np.ascontiguousarray(pts1, np.float64).reshape(-1, 2)
    if len(pts0) < 4:
        return None
    options = pycolmap.RANSACOptions(max_error=max_error, random_seed=seed, num_threads=1)
    result = pycolmap.estimate_homography_matrix(pts0, pts1, options)
    if result is None:
        return None
    h = np.asarray(result["H"], np.float64)
    return h / h[2, 2] if abs(h[2, 2]) > 1e-12 else h


def evaluate_pair(
    feats0: dict[str, np.ndarray],
    feats1: dict[str, np.ndarray],
    h_true: np.ndarray,
    size0: tuple[int, int],
    matches: np.ndarray | None = None,
    name: str = "",
    kind: str = "",
    target: int = 2,
    matcher: str = "mutual",
) -> PairResult:
    """Metrics of one pair from two feature dicts (``keypoints`` (N, 2), ``descriptors`` (D, N)).

    ``matches`` (M, 2) defaults to ``matcher`` (mutual nearest neighbours) on the descriptors;
    ``size0`` is the reference image's ``(width, height)``.
    """
    if matches is None:
        matches = match_descriptors(feats0["descriptors"], feats1["descriptors"], matcher)
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    k0, k1 = np.asarray(feats0["keypoints"], np.float64), np.asarray(feats1["keypoints"], np.float64)
    errors = reprojection_errors(h_true, k0, k1, matches)
    h_est = estimate_homography(k0[matches[:, 0]], k1[matches[:, 1]])
    return PairResult(
        sequence=name,
        kind=kind,
        target=target,
        num_keypoints=(len(k0), len(k1)),
        num_matches=len(matches),
        mma=mma(errors),
        corner_error=corner_error(h_est, h_true, size0),
        reprojection_errors=errors,
    )


def sequence_image_names(sequences: list[HomographySequence], root: str | Path) -> list[list[str]]:
    """Names of each sequence's images relative to ``root`` (posix), as the features are stored."""
    root = Path(root).resolve()
    out = []
    for seq in sequences:
        names = []
        for path in seq.images:
            rel = os.path.relpath(Path(path).resolve(), root)
            if rel.startswith(".."):
                raise ValueError(f"{path} is not under the image root {root}")
            names.append(Path(rel).as_posix())
        out.append(names)
    return out


def evaluate_sequences(
    features: dict[str, dict[str, np.ndarray]],
    sequences: list[HomographySequence],
    names: list[list[str]],
    matcher: str = "mutual",
) -> list[PairResult]:
    """Every reference-to-``k`` pair of ``sequences`` from ``features`` (image name -> feature dict)."""
    results = []
    for seq, seq_names in zip(sequences, names):
        ref = features[seq_names[0]]
        size0 = tuple(int(v) for v in ref["image_size"])
        for k, (name, h) in enumerate(zip(seq_names[1:], seq.homographies), start=2):
            results.append(evaluate_pair(
                    ref, features[name], h, size0, name=seq.name, kind=seq.kind, target=k, matcher=matcher
                ))
    return results


def evaluate_method(
    method: Method,
    sequences: list[HomographySequence],
    root: str | Path,
    cache: str | Path,
    matcher: str = "mutual",
) -> list[PairResult]:
    """Extract ``method``'s features (into the shared cache) and evaluate all pairs.

    ``root`` is the folder the image names are relative to (the dataset root given on the
    command line); ``matcher`` is mutual NN (D2-Net's protocol) unless asked otherwise.
    """
    names = sequence_image_names(sequences, root)
    flat = list(dict.fromkeys(n for seq_names in names for n in seq_names))
    path = method.extract(root, flat, feature_cache(cache, root))
    features = read_all_features(path, flat)
    return evaluate_sequences(features, sequences, names, matcher)


@dataclass
class Summary:
    """Averages over the pairs of one kind."""

    num_pairs: int
    mma: np.ndarray
    corner_accuracy: dict[int, float]
    mean_corner_error: float
    median_corner_error: float
    failures: int
    mean_matches: float
    mean_keypoints: float


def summarize(results: list[PairResult], kind: str = "all", target: int | None = None) -> Summary | None:
    """Averages over the pairs of ``kind`` (``"i"``, ``"v"`` or ``"all"``) and, if given, of
    target image ``target`` (2..6); None if there is none."""
    pairs = [r for r in results if (kind == "all" or r.kind == kind) and target in (None, r.target)]
    if not pairs:
        return None
    keypoints = {(r.sequence, 1): r.num_keypoints[0] for r in pairs}
    keypoints |= {(r.sequence, r.target): r.num_keypoints[1] for r in pairs}
    errors = np.array([r.corner_error for r in pairs])
    finite = np.isfinite(errors)
    return Summary(
        num_pairs=len(pairs),
        mma=np.mean([r.mma for r in pairs], axis=0),
        corner_accuracy={t: float((errors <= t).mean()) for t in CORNER_THRESHOLDS},
        mean_corner_error=float(errors[finite].mean()) if finite.any() else float("inf"),
        median_corner_error=float(np.median(errors)),
        failures=int((~finite).sum()),
        mean_matches=float(np.mean([r.num_matches for r in pairs])),
        mean_keypoints=float(np.mean(list(keypoints.values()))),
    )


def select_sequences(sequences: list[HomographySequence], per_kind: int | None) -> list[HomographySequence]:
    """At most ``per_kind`` sequences of each kind, evenly spaced in name order (all if None)."""
    if per_kind is None:
        return list(sequences)
    keep = []
    for kind in dict.fromkeys(s.kind for s in sequences):
        group = [s for s in sequences if s.kind == kind]
        keep += evenly_spaced(group, per_kind)
    return sorted(keep, key=lambda s: s.name)
