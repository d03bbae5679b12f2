"""Visual localisation against a reference model triangulated at ground-truth poses.

The protocol follows hloc's pipelines (7Scenes, Cambridge, Aachen), with the reference
built from known cameras instead of an SfM model:

1. :func:`split_database_queries` divides a scene's images into database and queries
   (every ``step``-th image is a query, deterministic).
2. :func:`reference_from_ground_truth` makes an empty ``pycolmap.Reconstruction`` with
   the ground-truth intrinsics (``PINHOLE``, corner convention) and poses of the
   database images; :func:`triangulate_reference` runs hloc's ``triangulation.main``
   on it with the database features and matches (points are triangulated, poses stay).
3. :func:`localize` writes the query list with intrinsics and runs hloc's
   ``localize_sfm.main`` with the retrieval pairs, features and matches; it returns the
   estimated ``cam_from_world`` poses and PnP inlier counts.
4. :func:`pose_errors` and :func:`pose_recall` score them against the ground truth:
   camera-centre distance (units of the scene, metres for Strecha) and rotation angle.

hloc is imported inside the functions that need it, so the metrics work without hloc.
"""

from __future__ import annotations

import hashlib
import pickle
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import pycolmap

from .. import logger
from ..files import atomic_path
from .datasets import StrechaCamera
from .matching import hloc_matcher_conf
from .pose import pinhole_camera as pinhole_from_K
from .pose import rotation_error
from .sfm import project_to_rotation

#: (position metres, rotation degrees) thresholds of the Aachen day-night / hloc benchmarks.
THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
#: hloc's ``localize_sfm`` RANSAC threshold (pixels), its default for Aachen.
RANSAC_THRESHOLD = 12.0
#: hloc matcher conf for each of our matchers (:attr:`Method.matcher`).


# --------------------------------------------------------------------------- split


def split_database_queries(names: Sequence[str], step: int = 3, offset: int = 2) -> tuple[list[str], list[str]]:
    """(database, queries) of the sorted ``names``: the images at ``offset, offset + step, ...`` are queries."""
    if step < 2 or not 0 <= offset < step:
        raise ValueError(f"need step >= 2 and 0 <= offset < step, got step={step}, offset={offset}")
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("image names are not unique")
    queries = ordered[offset::step]
    query_set = set(queries)
    return [n for n in ordered if n not in query_set], queries


def neighbours_on_both_sides(
    cameras: Sequence[StrechaCamera], database: Sequence[str], query: str, radius: float
) -> bool:
    """Whether database cameras within ``radius`` of the query's centre lie left and right of it.

    Sides are taken along the query camera's x axis (image right), in world units.
    """
    by_name = {c.name: c for c in cameras}
    q = by_name[query]
    offsets = np.stack([by_name[n].center - q.center for n in database])
    near = np.linalg.norm(offsets, axis=1) <= radius
    along_x = offsets[near] @ q.R[:, 0]
    return bool((along_x < 0).any() and (along_x > 0).any())


# --------------------------------------------------------------------------- cameras and poses


def pinhole_camera(camera: StrechaCamera, camera_id: int = 1) -> pycolmap.Camera:
    """The ``PINHOLE`` camera of a ground-truth camera (K in the corner convention, as COLMAP's)."""
    result = pinhole_from_K(camera.K, *camera.size)
    result.camera_id = camera_id
    return result


def rigid_from_camera(camera: StrechaCamera) -> pycolmap.Rigid3d:
    """The ground-truth ``cam_from_world`` of a camera as ``pycolmap.Rigid3d``.

    The rotation is projected onto SO(3) (text files give it to ~6 digits) and the
    translation is taken from the projected rotation, so the camera centre is kept exactly.
    """
    r = project_to_rotation(camera.R.T)
    return pycolmap.Rigid3d(pycolmap.Rotation3d(r), -r @ camera.center)


def rescale_camera(camera: StrechaCamera, scale: float) -> StrechaCamera:
    """The camera of the image resized by ``scale`` (corner convention: ``K' = diag(s, s, 1) K``).

    ``scale`` must map both sides to whole pixels, else the resized image and K disagree.
    """
    k = np.diag([scale, scale, 1.0]) @ camera.K
    width, height = camera.size
    size = (int(round(width * scale)), int(round(height * scale)))
    if abs(size[0] - width * scale) > 1e-6 or abs(size[1] - height * scale) > 1e-6:
        raise ValueError(f"scale {scale} maps {width}x{height} to {width * scale}x{height * scale}, not whole pixels")
    return StrechaCamera(camera.name, k, camera.R.copy(), camera.center.copy(), size)


def reference_from_ground_truth(cameras: Sequence[StrechaCamera]) -> pycolmap.Reconstruction:
    """An empty reconstruction (no points) with one ``PINHOLE`` camera and the GT pose per image.

    Image and camera ids are 1, 2, ... in the given order; names are the cameras' names.
    """
    reconstruction = pycolmap.Reconstruction()
    for index, camera in enumerate(cameras, 1):
        reconstruction.add_camera_with_trivial_rig(pinhole_camera(camera, index))
        image = pycolmap.Image(name=camera.name, camera_id=index, image_id=index)
        reconstruction.add_image_with_trivial_frame(image, rigid_from_camera(camera))
    return reconstruction


def write_query_list(path: str | Path, cameras: Mapping[str, pycolmap.Camera]) -> Path:
    """hloc's query list with intrinsics: ``name MODEL width height params...`` per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        " ".join([name, camera.model.name, str(camera.width), str(camera.height), *(repr(float(p)) for p in camera.params)])
        for name, camera in cameras.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def exhaustive_pairs(names: Sequence[str], references: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Every pair among ``names`` (i < j), or every ``names x references`` pair."""
    if references is None:
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return [(q, r) for q in names for r in references if q != r]


def read_poses(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """hloc's results file (``name qw qx qy qz tx ty tz``) -> name: (R, t) of ``cam_from_world``."""
    poses = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 8:
            raise ValueError(f"{path}:{number}: expected 'name qw qx qy qz tx ty tz', got {len(fields)} fields")
        qw, qx, qy, qz, *t = map(float, fields[1:])
        rotation = pycolmap.Rotation3d(np.array([qx, qy, qz, qw])).matrix()
        poses[fields[0]] = (rotation, np.array(t))
    return poses


def write_poses(path: str | Path, poses: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``cam_from_world`` poses (name: (R, t)) in hloc's results format, names as given.

    The file is written to a temporary name and renamed, so it is either complete or absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (rotation, translation) in poses.items():
        qx, qy, qz, qw = pycolmap.Rotation3d(project_to_rotation(rotation)).quat
        values = [qw, qx, qy, qz, *np.asarray(translation, np.float64).reshape(3)]
        lines.append(" ".join([name, *(repr(float(v)) for v in values)]))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    return path


def median_point_depth(reconstruction: pycolmap.Reconstruction) -> float:
    """Median over images of the median depth of the 3D points each image observes (scene units)."""
    medians = []
    for image in reconstruction.images.values():
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        if not ids:
            continue
        xyz = np.stack([reconstruction.points3D[i].xyz for i in ids])
        pose = image.cam_from_world()
        depth = xyz @ pose.rotation.matrix()[2] + pose.translation[2]
        medians.append(np.median(depth))
    if not medians:
        raise ValueError("the reconstruction has no observed 3D point")
    return float(np.median(medians))


# --------------------------------------------------------------------------- synthetic night queries


def write_night_queries(
    image_dir: str | Path, names: Sequence[str], out_root: str | Path, seed: int = 0
) -> tuple[Path, dict[str, str]]:
    """Synthetic-night versions of ``names`` (PNG), and the map image name -> night image name.

    Each image gets ``render_night`` (:mod:`hloc_hndesc.evaluation.synthetic`) with its own
    generator, seeded by ``seed`` and the image name, so the set is reproducible and one
    image does not depend on the others. The folder ``out_root/night-s<seed>-<digest>`` is
    named after the rendered content: a changed renderer gets a new folder, hence no stale
    cached features or matches.
    """
    from .synthetic import render_night

    image_dir = Path(image_dir)
    rendered, digest = {}, hashlib.sha256()
    for name in sorted(names):
        bgr = cv2.imread(str(image_dir / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"{image_dir / name}: cannot read the image")
        image = np.ascontiguousarray(bgr[..., ::-1])
        night = np.asarray(render_night(image, np.random.default_rng([seed, zlib.crc32(name.encode())])))
        if night.dtype != np.uint8 or night.shape != image.shape:
            raise ValueError(f"render_night returned {night.dtype} {night.shape} for a uint8 {image.shape} image")
        rendered[name] = night
        digest.update(name.encode() + night.tobytes())
    folder = Path(out_root) / f"night-s{seed}-{digest.hexdigest()[:10]}"
    folder.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for name, night in rendered.items():
        mapping[name] = Path(name).stem + ".png"
        path = folder / mapping[name]
        if not path.is_file():
            with atomic_path(path) as tmp:
                if not cv2.imwrite(str(tmp), np.ascontiguousarray(night[..., ::-1])):
                    raise OSError(f"{path}: cannot write the image")
    return folder, mapping


# --------------------------------------------------------------------------- metrics


def pose_errors(
    r_est: np.ndarray, t_est: np.ndarray, r_gt: np.ndarray, t_gt: np.ndarray
) -> tuple[float, float]:
    """(camera-centre distance, rotation angle in degrees) between two ``cam_from_world`` poses.

    The angle of ``R_est R_gt^T`` is ``atan2(sin, cos)`` from its skew part and trace, accurate
    for small angles even when a ground-truth rotation is orthonormal only to the ~6 digits
    of its text file (``arccos`` of the trace alone would floor small errors at ~0.1 degree).
    """
    r_est, r_gt = np.asarray(r_est, np.float64), np.asarray(r_gt, np.float64)
    center_est = -r_est.T @ np.asarray(t_est, np.float64)
    center_gt = -r_gt.T @ np.asarray(t_gt, np.float64)
    return float(np.linalg.norm(center_est - center_gt)), rotation_error(r_est, r_gt)


def pose_recall(
    position_errors: Sequence[float] | np.ndarray,
    rotation_errors: Sequence[float] | np.ndarray,
    thresholds: Sequence[tuple[float, float]] = THRESHOLDS,
) -> np.ndarray:
    """Fraction of queries with position error < t and rotation error < r, per (t, r) threshold.

    Unlocalised queries count as failures: pass ``inf`` (or NaN) for them.
    """
    dt = np.asarray(position_errors, np.float64).reshape(-1)
    dr = np.asarray(rotation_errors, np.float64).reshape(-1)
    if dt.shape != dr.shape:
        raise ValueError(f"{dt.size} position errors but {dr.size} rotation errors")
    if dt.size == 0:
        raise ValueError("no query")
    return np.array([np.mean((dt < t) & (dr < r)) for t, r in thresholds])


@dataclass
class QueryResult:
    """One query: estimated ``cam_from_world`` (R, t), PnP inliers (0: hloc's fallback pose), errors."""

    name: str
    R: np.ndarray
    t: np.ndarray
    num_inliers: int
    position_error: float = float("nan")
    rotation_error: float = float("nan")


@dataclass
class LocalizationSummary:
    """Recall per threshold, median errors, counts."""

    recall: np.ndarray
    median_position_error: float
    median_rotation_error: float
    num_queries: int
    num_failed: int
    thresholds: tuple[tuple[float, float], ...] = THRESHOLDS


def evaluate(
    results: Mapping[str, QueryResult],
    ground_truth: Mapping[str, tuple[np.ndarray, np.ndarray]],
    thresholds: Sequence[tuple[float, float]] = THRESHOLDS,
) -> LocalizationSummary:
    """Score ``results`` against ``ground_truth`` (name: ``cam_from_world`` (R, t)), filling their errors.

    A query without a result, or whose PnP failed (hloc then writes the pose of the first
    retrieved database image), counts with infinite error.
    """
    dt, dr, failed = [], [], 0
    for name, (r_gt, t_gt) in ground_truth.items():
        result = results.get(name)
        if result is None or result.num_inliers == 0:
            failed += 1
            dt.append(np.inf)
            dr.append(180.0)
            continue
        result.position_error, result.rotation_error = pose_errors(result.R, result.t, r_gt, t_gt)
        dt.append(result.position_error)
        dr.append(result.rotation_error)
    recall = pose_recall(dt, dr, thresholds)
    return LocalizationSummary(recall, float(np.median(dt)), float(np.median(dr)), len(dt), failed, tuple(thresholds))


# --------------------------------------------------------------------------- hloc


def match_pairs(
    matcher: str, pairs: Path, features: Path, matches: Path, features_ref: Path | None = None
) -> Path:
    """hloc ``match_features.main`` over ``pairs`` (resumed: existing pairs are kept)."""
    from hloc import match_features

    return match_features.main(hloc_matcher_conf(matcher), pairs, features, matches=matches, features_ref=features_ref)


def count_matches(matches: str | Path) -> int:
    """Matched keypoints over every pair of an hloc matches file (``matches0`` entries > -1)."""
    total = 0

    def visit(name: str, node: object) -> None:
        nonlocal total
        if name.endswith("matches0") and isinstance(node, h5py.Dataset):
            total += int((node[()] > -1).sum())

    with h5py.File(matches, "r") as fd:
        fd.visititems(visit)
    return total


def triangulate_reference(
    reference: pycolmap.Reconstruction,
    out_dir: str | Path,
    image_dir: str | Path,
    pairs: Path,
    features: Path,
    matches: Path,
) -> pycolmap.Reconstruction:
    """hloc ``triangulation.main``: 3D points of ``reference``'s images at their fixed poses.

    ``out_dir/empty`` receives the input model and ``out_dir/sfm`` the triangulated one.
    Matches are verified with the known epipolar geometry (hloc's default, 4 px). Without a
    single match (features that find nothing), ``reference`` comes back without 3D points
    (hloc's triangulation would fail on it).
    """
    from hloc import triangulation

    if count_matches(matches) == 0:
        logger.warning("%s: no database pair has a match; the reference model has no 3D point", matches)
        return pycolmap.Reconstruction(reference)
    out_dir = Path(out_dir)
    empty = out_dir / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    reference.write(empty)
    return triangulation.main(out_dir / "sfm", empty, Path(image_dir), pairs, features, matches)


def localize(
    reference: pycolmap.Reconstruction | Path,
    queries: Mapping[str, pycolmap.Camera],
    pairs: Path,
    features: Path,
    matches: Path,
    results: Path,
    ransac_thresh: float = RANSAC_THRESHOLD,
    seed: int = 0,
    covisibility_clustering: bool = False,
) -> dict[str, QueryResult]:
    """hloc ``localize_sfm.main`` for ``queries`` (name: camera), writing ``results``.

    ``features`` holds the query keypoints, ``matches`` the query-database matches of the
    ``pairs`` (retrieval list). RANSAC is seeded (``seed``) so reruns agree. Returns the
    estimated poses with their PnP inlier counts (read from hloc's log; 0 where PnP failed
    and hloc fell back to a database pose). ``covisibility_clustering`` is hloc's option
    (PnP per cluster of covisible database images, the best cluster kept).
    """
    from hloc import localize_sfm

    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    query_list = write_query_list(results.with_name(results.stem + "_queries.txt"), queries)
    config = {"estimation": {"ransac": {"max_error": ransac_thresh, "random_seed": seed}}}
    localize_sfm.main(
        reference, query_list, pairs, features, matches, results, config=config,
        covisibility_clustering=covisibility_clustering,
    )
    poses = read_poses(results)
    with open(f"{results}_logs.pkl", "rb") as handle:
        logs = pickle.load(handle)["loc"]
    out = {}
    for name in queries:
        basename = name.split("/")[-1]  # hloc writes query basenames
        if basename not in poses:
            continue
        ret = pnp_result(logs.get(name, {}))
        inliers = int(ret["num_inliers"]) if ret is not None and ret.get("num_inliers") is not None else 0
        out[name] = QueryResult(name, *poses[basename], num_inliers=inliers)
    return out


def pnp_result(log: Mapping) -> dict | None:
    """The PnP result of one query in hloc's ``localize_sfm`` log (best cluster when clustered)."""
    if "log_clusters" in log:
        best = log.get("best_cluster")
        return None if best is None else log["log_clusters"][best].get("PnP_ret")
    return log.get("PnP_ret")
