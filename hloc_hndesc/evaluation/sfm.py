"""Structure from Motion through hloc, its statistics, and camera errors against ground truth.

:func:`run_sfm` runs one method on one scene folder (``images/``): features through
:meth:`Method.extract` into the shared cache, hloc's exhaustive pairs, hloc's
``NN-ratio`` (SIFT) or ``NN-mutual`` matcher, and hloc's COLMAP reconstruction with one
camera for all images. :func:`reconstruction_stats` gives the columns of the ETH SfM
benchmark (HyNet paper, Table 2): registered images, sparse points, mean track length,
mean reprojection error. :func:`camera_errors` compares the registered cameras with
ground truth after a similarity alignment of the camera centres (:func:`umeyama`):
centre errors in the ground truth's units and rotation errors, raw and after removing the
rotation offset shared by all cameras (:func:`rotation_offset`; a principal point fixed at
the image centre while the true one is off tilts every camera by the same small angle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pycolmap

from ..files import write_pairs
from ..io import list_images
from .datasets import DatasetError, StrechaCamera
from .matching import hloc_matcher_conf
from .methods import Method, feature_cache

#: COLMAP camera model of the single camera of a scene: f, cx, cy and one radial term,
#: hloc's (and COLMAP's) default; the principal point stays at the image centre.
DEFAULT_CAMERA_MODEL = "SIMPLE_RADIAL"
#: hloc's matcher confs for our matcher names.

#: HyNet paper (Tian et al., NeurIPS 2020), Table 2, rows of the two Strecha scenes: method
#: (mean features per image in thousands, when given) -> registered images, sparse points,
#: dense points, mean track length, mean reprojection error (px). Full-resolution
#: (3072x2048) images, COLMAP with dense stereo.
PUBLISHED_TABLE2: dict[str, dict[str, tuple[int, int, int, float, float]]] = {
    "Herz-Jesu-P8": {
        "SIFT (11.3K)": (8, 7_500, 241_000, 4.22, 0.43),
        "DoG+HardNet": (8, 8_700, 239_000, 4.30, 0.50),
        "DoG+SOSNet": (8, 8_700, 239_000, 4.31, 0.50),
        "DoG+HyNet": (8, 8_900, 246_000, 4.32, 0.52),
        "SuperPoint (6.1K)": (8, 5_000, 244_000, 4.47, 0.79),
        "D2-Net (13.1K)": (8, 13_000, 221_000, 2.87, 1.37),
        "R2D2 (12.1K)": (8, 10_000, 244_000, 4.48, 1.04),
        "Key.Net+HyNet (11.9K)": (8, 9_400, 246_000, 5.24, 0.69),
    },
    "fountain-P11": {
        "SIFT (11.8K)": (11, 14_700, 292_000, 4.79, 0.39),
        "DoG+HardNet": (11, 16_300, 303_000, 4.91, 0.47),
        "DoG+SOSNet": (11, 16_300, 306_000, 4.92, 0.46),
        "DoG+HyNet": (11, 16_500, 303_000, 4.93, 0.48),
        "SuperPoint (5.5K)": (11, 7_000, 304_000, 4.93, 0.81),
        "D2-Net (12.5K)": (11, 19_000, 301_000, 3.03, 1.40),
        "R2D2 (12.6K)": (11, 13_400, 308_000, 5.02, 1.47),
        "Key.Net+HyNet (11.9K)": (11, 12_000, 307_000, 7.81, 0.69),
    },
}


# --------------------------------------------------------------------------- statistics


@dataclass
class ReconstructionStats:
    """The ETH SfM columns of one reconstruction (``nan`` where nothing was reconstructed)."""

    registered: int
    total: int
    points: int
    track_length: float
    reprojection_error: float


def reconstruction_stats(reconstruction: pycolmap.Reconstruction | None, total: int) -> ReconstructionStats:
    """Registered images (of ``total``), 3D points, mean track length, mean reprojection error (px).

    COLMAP's definitions: the track length is averaged over points, the reprojection error
    is the mean over points of each point's mean error over its observations; the errors
    are recomputed from the current poses, points and cameras first.
    """
    if reconstruction is None or reconstruction.num_points3D() == 0:
        registered = 0 if reconstruction is None else reconstruction.num_reg_images()
        return ReconstructionStats(registered, total, 0, math.nan, math.nan)
    reconstruction.update_point_3d_errors()
    return ReconstructionStats(
        reconstruction.num_reg_images(),
        total,
        reconstruction.num_points3D(),
        float(reconstruction.compute_mean_track_length()),
        float(reconstruction.compute_mean_reprojection_error()),
    )


# --------------------------------------------------------------------------- alignment


@dataclass
class Similarity:
    """``y = scale * rotation @ x + translation``."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) points -> (N, 3) transformed points."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation


def umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool = True) -> Similarity:
    """Least-squares similarity (Umeyama 1991) mapping ``source`` (N, 3) onto ``target`` (N, 3).

    Needs at least 3 points not all on a line (raises ``ValueError`` otherwise).
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(f"umeyama: expected two (N, 3) arrays, got {source.shape} and {target.shape}")
    if len(source) < 3:
        raise ValueError(f"umeyama: needs at least 3 points, got {len(source)}")
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    covariance = xt.T @ xs / len(source)
    u, d, vt = np.linalg.svd(covariance)
    if d[1] <= 1e-12 * max(d[0], 1e-300):
        raise ValueError("umeyama: the points are (nearly) collinear; the rotation is undetermined")
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rotation = (u * sign) @ vt
    variance = (xs**2).sum() / len(source)
    scale = float((d * sign).sum() / variance) if with_scale else 1.0
    return Similarity(scale, rotation, mu_t - scale * rotation @ mu_s)


def rotation_angles_deg(rotations: np.ndarray) -> np.ndarray:
    """Angles (degrees) of a batch of rotation matrices (N, 3, 3)."""
    rotations = np.asarray(rotations, np.float64)
    cos = (np.trace(rotations, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def project_to_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation nearest (Frobenius) to a 3x3 matrix."""
    u, _, vt = np.linalg.svd(matrix)
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ sign @ vt


def rotation_offset(r_gt: np.ndarray, r_est: np.ndarray) -> np.ndarray:
    """The rotation ``R_off`` minimising ``sum_i ||R_gt_i - R_off R_est_i||_F^2`` over (N, 3, 3) stacks.

    With world-to-camera rotations this is a rotation of every camera frame by the same
    amount, e.g. the tilt of a principal point fixed at the wrong place.
    """
    return project_to_rotation(np.einsum("nij,nkj->ik", np.asarray(r_gt, np.float64), np.asarray(r_est, np.float64)))


@dataclass
class Poses:
    """Cameras by image name: world-to-camera rotations (N, 3, 3) and centres (N, 3)."""

    names: list[str]
    rotations: np.ndarray
    centers: np.ndarray

    def subset(self, names: list[str]) -> Poses:
        """The cameras of ``names``, in that order."""
        index = {n: i for i, n in enumerate(self.names)}
        rows = [index[n] for n in names]
        return Poses(list(names), self.rotations[rows], self.centers[rows])


def strecha_poses(cameras: list[StrechaCamera]) -> Poses:
    """Ground-truth :class:`Poses` of a Strecha scene (names are the image file names)."""
    if not cameras:
        raise DatasetError("no camera given")
    return Poses(
        [c.name for c in cameras],
        np.stack([c.cam_from_world[0] for c in cameras]),
        np.stack([np.asarray(c.center, np.float64) for c in cameras]),
    )


def reconstruction_poses(reconstruction: pycolmap.Reconstruction) -> Poses:
    """:class:`Poses` of the registered images of a reconstruction, sorted by name."""
    images = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        return Poses([], np.zeros((0, 3, 3)), np.zeros((0, 3)))
    return Poses(
        [im.name for im in images],
        np.stack([im.cam_from_world().rotation.matrix() for im in images]),
        np.stack([im.projection_center() for im in images]),
    )


@dataclass
class CameraErrors:
    """Per registered camera errors against ground truth, after a similarity alignment.

    ``rotation_errors_raw``: angle of ``R_gt_i^T R_i`` with ``R_i`` the aligned estimate;
    ``rotation_errors``: the same after the common offset ``offset`` (world-to-camera side,
    ``R_gt_i ~ offset R_i``) is removed; ``offset_deg`` its angle. Centre errors are in
    the ground truth's units. ``missing``: ground-truth images that were not registered.
    """

    names: list[str]
    center_errors: np.ndarray
    rotation_errors_raw: np.ndarray
    rotation_errors: np.ndarray
    offset: np.ndarray
    similarity: Similarity
    missing: list[str] = field(default_factory=list)

    @property
    def offset_deg(self) -> float:
        """Angle of the common rotation offset (degrees)."""
        return float(rotation_angles_deg(self.offset[None])[0])

    def summary(self) -> dict[str, float]:
        """Median and max of the centre and rotation errors, and the offset angle."""
        return {
            "center_median": float(np.median(self.center_errors)),
            "center_max": float(np.max(self.center_errors)),
            "rotation_raw_median": float(np.median(self.rotation_errors_raw)),
            "rotation_raw_max": float(np.max(self.rotation_errors_raw)),
            "rotation_median": float(np.median(self.rotation_errors)),
            "rotation_max": float(np.max(self.rotation_errors)),
            "offset_deg": self.offset_deg,
        }


def camera_errors(ground_truth: Poses, estimate: Poses) -> CameraErrors:
    """Align ``estimate``'s centres to ``ground_truth``'s (similarity) and measure the cameras.

    Only images present in both are compared (at least 3, raising ``ValueError`` otherwise).
    """
    registered = set(estimate.names)
    common = [n for n in ground_truth.names if n in registered]
    if len(common) < 3:
        raise ValueError(f"camera_errors: {len(common)} images in common with the ground truth, need 3")
    gt, est = ground_truth.subset(common), estimate.subset(common)
    similarity = umeyama(est.centers, gt.centers)
    centers = similarity.apply(est.centers)
    rotations = est.rotations @ similarity.rotation.T
    offset = rotation_offset(gt.rotations, rotations)
    relative = np.swapaxes(gt.rotations, 1, 2) @ rotations
    return CameraErrors(
        common,
        np.linalg.norm(centers - gt.centers, axis=1),
        rotation_angles_deg(relative),
        rotation_angles_deg(np.swapaxes(gt.rotations, 1, 2) @ offset @ rotations),
        offset,
        similarity,
        [n for n in ground_truth.names if n not in registered],
    )


# --------------------------------------------------------------------------- running


@dataclass
class SfMResult:
    """One method on one scene: the files written, the model and its statistics."""

    scene: str
    method: str
    names: list[str]
    features: Path
    matches: Path
    sfm_dir: Path
    reconstruction: pycolmap.Reconstruction | None
    stats: ReconstructionStats
    keypoints_per_image: float


def mean_keypoints(features: Path, names: list[str]) -> float:
    """Mean number of keypoints per image in an hloc-layout features file."""
    with h5py.File(features, "r") as handle:
        return float(np.mean([handle[n]["keypoints"].shape[0] for n in names]))


def run_sfm(
    method: Method,
    scene_dir: str | Path,
    out_dir: str | Path,
    cache: str | Path,
    camera_model: str = DEFAULT_CAMERA_MODEL,
    camera_mode: pycolmap.CameraMode = pycolmap.CameraMode.SINGLE,
    seed: int | None = 0,
    mapper_options: dict | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> SfMResult:
    """Reconstruct ``scene_dir/images`` with ``method`` through hloc; files go to ``out_dir``.

    Features are extracted into (or read from) ``feature_cache(cache, images)``; pairs
    (exhaustive unless ``pairs`` are given, e.g. a retrieval shortlist), matches and the COLMAP
    model (``out_dir/sfm``) are rewritten. Cameras are of model ``camera_model``, one shared by
    all images by default (``camera_mode``; hloc's default is ``AUTO``). ``seed`` seeds COLMAP's
    random generator (RANSAC), ``None`` leaves it.
    Needs hloc (raises ``ImportError`` without it).
    """
    from hloc import match_features, pairs_from_exhaustive, reconstruction

    scene_dir, out_dir = Path(scene_dir), Path(out_dir)
    image_dir = scene_dir / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{scene_dir}: no images/ folder")
    names = list_images(image_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features = method.extract(image_dir, names, feature_cache(cache, image_dir))
    if pairs is None:
        pairs_path = out_dir / "pairs-exhaustive.txt"
        pairs_from_exhaustive.main(pairs_path, image_list=names)
    else:
        pairs_path = write_pairs(out_dir / "pairs-given.txt", pairs)
    matches = out_dir / "matches.h5"
    match_features.main(
        hloc_matcher_conf(method.matcher), pairs_path, features, matches=matches, overwrite=True
    )
    if seed is not None:
        pycolmap.set_random_seed(seed)
    model = reconstruction.main(
        out_dir / "sfm",
        image_dir,
        pairs_path,
        features,
        matches,
        camera_mode=camera_mode,
        image_list=names,
        image_options={"camera_model": camera_model},
        mapper_options=mapper_options,
    )
    return SfMResult(
        scene_dir.name,
        method.label,
        names,
        features,
        matches,
        out_dir / "sfm",
        model,
        reconstruction_stats(model, len(names)),
        mean_keypoints(features, names),
    )
