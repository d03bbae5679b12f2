"""Two-view relative pose: essential-matrix RANSAC with known intrinsics, pose error, AUC.

Estimation (:func:`estimate_pose`), by default (``estimator="colmap"``), runs pycolmap's
``estimate_essential_matrix``: COLMAP's LO-RANSAC around the five-point solver on calibrated
rays, then the decomposition of E with the cheirality check (no non-linear refinement).
COLMAP turns the pixel threshold into a ray threshold by dividing it by each camera's mean
focal length. ``estimator="opencv"`` is the protocol of SuperGlue's evaluation instead:
OpenCV's plain RANSAC (no local optimisation) on points normalised by K, threshold divided
by the mean focal length, then ``recoverPose``. Keypoints must be in the corner convention
of the intrinsics (:func:`~hloc_hndesc.evaluation.datasets.to_corner`).

Error (:func:`pose_error`): the larger of the rotation angle of ``R_est R_gt^T`` and the
angle between the estimated and true translation directions, in degrees. The translation
angle is the plain one, without SuperGlue's ``min(a, 180 - a)``: the cheirality check fixes
the sign of t, so a flipped direction is a wrong pose. A pair with too few matches or no
RANSAC model gets an infinite error (it counts as not recalled at any threshold).

AUC (:func:`pose_auc`): SuperGlue's exact area under the recall-vs-error curve up to each
threshold, divided by it; the curve is the polyline through the sorted errors (recall
``k / n`` at the k-th error), flat after the last error below the threshold.

RANSAC noise (:func:`auc_over_seeds`): the same matches, solved again with the match order
permuted and the RANSAC seed changed; one seed gives one AUC, the spread over seeds is the
noise below which differences between methods mean nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import pycolmap

from .datasets import PosePair, to_corner

#: the fewest matches the five-point solver is tried on.
MIN_MATCHES = 5
#: ``colmap``: pycolmap's LO-RANSAC (default); ``opencv``: OpenCV's RANSAC as in SuperGlue's evaluation.
ESTIMATORS = ("colmap", "opencv")


@dataclass(frozen=True)
class RansacSettings:
    """RANSAC settings; ``max_error`` in pixels (times :attr:`PoseProblem.error_scale`)."""

    max_error: float = 1.0
    confidence: float = 0.99999
    min_iterations: int = 1000
    max_iterations: int = 100000
    min_inlier_ratio: float = 0.01
    estimator: str = "colmap"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; known: {', '.join(ESTIMATORS)}")

    def options(self, max_error: float, seed: int) -> pycolmap.RANSACOptions:
        """pycolmap options (single-threaded, seeded, hence deterministic)."""
        return pycolmap.RANSACOptions(
            max_error=max_error,
            confidence=self.confidence,
            min_num_trials=self.min_iterations,
            max_num_trials=self.max_iterations,
            min_inlier_ratio=self.min_inlier_ratio,
            random_seed=seed,
            num_threads=1,
        )


@dataclass
class PoseProblem:
    """Matched points (corner convention) of two images, their K, and the true ``x1 = R x0 + t``.

    ``error_scale`` multiplies :attr:`RansacSettings.max_error`: the factor from the resolution
    features were extracted at to the resolution of ``points`` (so that the threshold is the
    same in pixels of the network input whatever the stored image size).
    """

    points0: np.ndarray
    points1: np.ndarray
    K0: np.ndarray
    K1: np.ndarray
    R: np.ndarray
    t: np.ndarray
    error_scale: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        self.points0 = np.asarray(self.points0, np.float64).reshape(-1, 2)
        self.points1 = np.asarray(self.points1, np.float64).reshape(-1, 2)
        if len(self.points0) != len(self.points1):
            raise ValueError(f"{self.name}: {len(self.points0)} points in image 0 but {len(self.points1)} in image 1")


@dataclass
class PoseResult:
    """One estimate: pose ``x1 = R x0 + t`` (``R`` None if it failed), its error, inliers."""

    R: np.ndarray | None
    t: np.ndarray | None
    num_matches: int
    num_inliers: int = 0
    error_R: float = np.inf
    error_t: float = np.inf

    @property
    def error(self) -> float:
        """max(rotation error, translation-direction error), degrees; inf on failure."""
        return max(self.error_R, self.error_t)


@dataclass
class SeedRuns:
    """AUCs (percent) of the same problems solved with several seeds."""

    thresholds: tuple[float, ...]
    seeds: tuple[int, ...]
    aucs: np.ndarray  # (len(seeds), len(thresholds))
    results: list[list[PoseResult]] = field(default_factory=list)  # per seed, per problem

    @property
    def mean(self) -> np.ndarray:
        """Mean AUC over seeds, per threshold."""
        return self.aucs.mean(0)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation (ddof 0) over seeds, per threshold."""
        return self.aucs.std(0)

    @property
    def spread(self) -> np.ndarray:
        """max - min over seeds, per threshold."""
        return self.aucs.max(0) - self.aucs.min(0)


def pinhole_camera(K: np.ndarray, width: int = 0, height: int = 0) -> pycolmap.Camera:
    """A PINHOLE pycolmap camera from a 3x3 K without skew (corner convention)."""
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or abs(K[0, 1]) > 1e-9 * abs(K[0, 0]) or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError(f"expected a pinhole K [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K.tolist()}")
    width = width or int(round(2 * K[0, 2]))
    height = height or int(round(2 * K[1, 2]))
    return pycolmap.Camera(model="PINHOLE", width=width, height=height, params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])


def input_scale(image_size: Sequence[int], resize_max: int | None) -> float:
    """Stored-image pixels per network-input pixel (1 when the image was not downscaled)."""
    longest = float(max(image_size))
    return longest / resize_max if resize_max and longest > resize_max else 1.0


def pose_problem(
    pair: PosePair,
    feats0: dict[str, np.ndarray],
    feats1: dict[str, np.ndarray],
    matches: np.ndarray,
    resize_max: int | None = None,
) -> PoseProblem:
    """The :class:`PoseProblem` of a ground-truth pair and matched hloc features.

    Keypoints (hloc convention, stored-image resolution) go to the corner convention of
    ``pair.K0``/``pair.K1``; ``error_scale`` is the larger :func:`input_scale` of the two.
    """
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    scale = max(input_scale(f["image_size"], resize_max) for f in (feats0, feats1))
    return PoseProblem(
        to_corner(feats0["keypoints"][matches[:, 0]]),
        to_corner(feats1["keypoints"][matches[:, 1]]),
        pair.K0, pair.K1, pair.R, pair.t, scale, f"{pair.name0}-{pair.name1}",
    )


def rotation_error(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle of ``R_est R_gt^T`` in degrees.

    Computed as ``atan2(sin, cos)`` from the antisymmetric part and the trace: ``arccos`` of
    the trace alone turns a 1e-7 departure from orthonormality (6-digit ground truth) into
    a 0.03 degree error.
    """
    m = np.asarray(R_est, np.float64) @ np.asarray(R_gt, np.float64).T
    sin = np.linalg.norm([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / 2
    cos = (np.trace(m) - 1) / 2
    return float(np.degrees(np.arctan2(sin, cos)))


def translation_error(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Angle between two translation directions in degrees (inf if one is zero)."""
    t_est, t_gt = np.asarray(t_est, np.float64), np.asarray(t_gt, np.float64)
    if not np.linalg.norm(t_est) or not np.linalg.norm(t_gt):
        return np.inf
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(t_est, t_gt)), np.dot(t_est, t_gt))))


def pose_error(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray) -> float:
    """max(rotation error, translation-direction error) in degrees."""
    return max(rotation_error(R_est, R_gt), translation_error(t_est, t_gt))


def _colmap_pose(
    points0: np.ndarray, points1: np.ndarray, problem: PoseProblem, settings: RansacSettings, seed: int
) -> tuple[np.ndarray, np.ndarray, int] | None:
    estimate = pycolmap.estimate_essential_matrix(
        points0,
        points1,
        pinhole_camera(problem.K0),
        pinhole_camera(problem.K1),
        settings.options(settings.max_error * problem.error_scale, seed),
    )
    if estimate is None:
        return None
    pose = estimate["cam2_from_cam1"]
    return np.asarray(pose.rotation.matrix()), np.asarray(pose.translation), int(estimate["num_inliers"])


def _opencv_pose(
    points0: np.ndarray, points1: np.ndarray, problem: PoseProblem, settings: RansacSettings
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """OpenCV's plain RANSAC on normalised points (threshold / mean focal), then the
    candidate E whose decomposition puts the most inliers in front of both cameras."""
    n0 = (np.c_[points0, np.ones(len(points0))] @ np.linalg.inv(problem.K0).T)[:, :2]
    n1 = (np.c_[points1, np.ones(len(points1))] @ np.linalg.inv(problem.K1).T)[:, :2]
    focal = np.mean([problem.K0[0, 0], problem.K0[1, 1], problem.K1[0, 0], problem.K1[1, 1]])
    E, mask = cv2.findEssentialMat(
        n0, n1, np.eye(3), method=cv2.RANSAC, prob=settings.confidence,
        threshold=settings.max_error * problem.error_scale / focal, maxIters=settings.max_iterations,
    )
    if E is None or mask is None:
        return None
    best = None
    for candidate in np.split(E, len(E) // 3):
        count, R, t, _ = cv2.recoverPose(candidate, n0, n1, np.eye(3), 1e9, mask=mask.copy())
        if best is None or count > best[2]:
            best = (R, t.ravel(), int(count))
    return best


def estimate_pose(problem: PoseProblem, settings: RansacSettings = RansacSettings(), seed: int = 0) -> PoseResult:
    """Relative pose by RANSAC on the essential matrix (``settings.estimator``); its error.

    The matches are first permuted with ``seed`` (``numpy.random.default_rng``), which is
    also COLMAP's RANSAC seed (OpenCV's RANSAC has a fixed internal seed), so the result is
    a deterministic function of ``seed``.
    """
    n = len(problem.points0)
    if n < MIN_MATCHES:
        return PoseResult(None, None, n)
    order = np.random.default_rng(seed).permutation(n)
    points0, points1 = problem.points0[order], problem.points1[order]
    if settings.estimator == "colmap":
        estimate = _colmap_pose(points0, points1, problem, settings, seed)
    else:
        estimate = _opencv_pose(points0, points1, problem, settings)
    if estimate is None:
        return PoseResult(None, None, n)
    R, t, inliers = estimate
    return PoseResult(R, t, n, inliers, rotation_error(R, problem.R), translation_error(t, problem.t))


def pose_auc(errors: Sequence[float] | np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Area under the recall curve up to each threshold, divided by it (fractions in [0, 1]).

    As SuperGlue's ``pose_auc``: the curve joins ``(0, 0)`` and the points ``(e_k, k / n)`` of
    the sorted errors ``e_k <= threshold`` by straight lines, then stays flat up to the
    threshold; infinite errors count in ``n`` but are never recalled.
    """
    errors = np.sort(np.asarray(errors, np.float64).ravel())
    if errors.size == 0:
        raise ValueError("pose_auc needs at least one error")
    if np.isnan(errors).any():
        raise ValueError("pose_auc: NaN error (use inf for failures)")
    recall = np.arange(1, errors.size + 1) / errors.size
    errors, recall = np.concatenate([[0.0], errors]), np.concatenate([[0.0], recall])
    out = []
    for threshold in thresholds:
        if threshold <= 0:
            raise ValueError(f"thresholds must be positive, got {threshold}")
        last = int(np.searchsorted(errors, threshold, side="right"))
        x = np.concatenate([errors[:last], [threshold]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        out.append(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / threshold))
    return np.array(out)


def auc_over_seeds(
    problems: Sequence[PoseProblem],
    thresholds: Sequence[float] = (5.0, 10.0, 20.0),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    settings: RansacSettings = RansacSettings(),
) -> SeedRuns:
    """Solve every problem once per seed; AUC in percent per seed and threshold."""
    if not seeds:
        raise ValueError("auc_over_seeds needs at least one seed")
    results = [[estimate_pose(p, settings, seed) for p in problems] for seed in seeds]
    aucs = np.array([100 * pose_auc([r.error for r in run], thresholds) for run in results])
    return SeedRuns(tuple(thresholds), tuple(seeds), aucs, results)
