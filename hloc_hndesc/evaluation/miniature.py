"""Miniature Aachen v1.1 and InLoc datasets built from a Strecha scene with ground-truth cameras.

The pipelines read the public datasets' exact layouts; these builders write the same layouts
from real photos whose poses are known, so that a pipeline run can be scored:

- :func:`build_aachen` (hloc's ``pipelines/Aachen_v1_1``): ``images_upright/db/*.jpg``,
  ``images_upright/query/{day,night}/...``, the reference SIFT model ``3D-models/aachen_v_1_1``
  (ground-truth poses, points triangulated by hloc from SIFT matches, as Aachen's own SIFT
  model) and ``queries/{day,night}_time_queries_with_intrinsics.txt``. Night queries are the
  day queries through the synthetic-night renderer (:func:`.localization.write_night_queries`).
- :func:`build_inloc` (hloc's ``localize_inloc``): ``query/iphone7/*.JPG`` resampled so that
  their intrinsics are exactly what hloc assumes (focal 4032·28/36 px, principal point at
  half the image size in hloc's coordinates), cutouts ``database/cutouts/<floor>/<scan>/
  <BLD>_cutout_<scan>_<yaw>_<pitch>.jpg`` with a dense ``XYZcut`` (H x W x 3, scan frame,
  NaN where unknown) in ``<cutout>.jpg.mat``, and ``database/alignments/<floor>/
  transformations/<BLD>_trans_<scan>.txt`` (scan to world, "After general icp" on lines 8-11).

Both write ``ground_truth.txt`` (hloc's results format, query basenames, ``cam_from_world``)
at the dataset root; it is not part of the public layouts and the pipelines ignore it unless
given ``--ground-truth``. Building needs hloc (triangulation) and scipy (``.mat`` files,
Delaunay interpolation), both hloc dependencies.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from .. import logger
from ..files import write_pairs
from .datasets import StrechaCamera, read_strecha_scene
from .localization import (
    exhaustive_pairs,
    match_pairs,
    pinhole_camera,
    reference_from_ground_truth,
    rescale_camera,
    split_database_queries,
    triangulate_reference,
    write_night_queries,
    write_poses,
    write_query_list,
)
from .methods import Method, parse_method

#: hloc's ``localize_inloc`` focal length (px): iPhone 7, 28 mm equivalent at 4032 px width.
INLOC_FOCAL = 4032.0 * 28.0 / 36.0
#: InLoc's (position m, rotation deg) thresholds.
INLOC_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 10.0), (0.5, 10.0), (1.0, 10.0))
AACHEN_MODEL = "3D-models/aachen_v_1_1"
AACHEN_QUERY_LISTS = {
    "day": "queries/day_time_queries_with_intrinsics.txt",
    "night": "queries/night_time_queries_with_intrinsics.txt",
}
GROUND_TRUTH = "ground_truth.txt"
_MARKER = ".miniature.json"


@dataclass
class Miniature:
    """A built dataset: its root, the ground-truth file and each query's condition."""

    root: Path
    ground_truth: Path
    conditions: dict[str, str]  # query name (relative to the image root) -> condition

    def queries(self, condition: str) -> list[str]:
        """Query names of one condition (``day``, ``night``, ``iphone7``)."""
        return sorted(n for n, c in self.conditions.items() if c == condition)


def _done(root: Path, params: dict) -> Miniature | None:
    marker = root / _MARKER
    if not marker.is_file():
        return None
    saved = json.loads(marker.read_text())
    if saved.get("params") != params:
        return None
    return Miniature(root, root / GROUND_TRUTH, saved["conditions"])


def _finish(root: Path, params: dict, conditions: dict[str, str]) -> Miniature:
    (root / _MARKER).write_text(json.dumps({"params": params, "conditions": conditions}, indent=1))
    return Miniature(root, root / GROUND_TRUTH, conditions)


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"{path}: cannot write the image")


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: cannot read the image")
    return np.ascontiguousarray(bgr[..., ::-1])


def _resized(camera: StrechaCamera, image: np.ndarray, scale: float) -> tuple[StrechaCamera, np.ndarray]:
    """The camera and image resized by ``scale`` (corner convention, exact for whole-pixel sizes)."""
    if scale == 1:
        return camera, image
    scaled = rescale_camera(camera, scale)
    return scaled, cv2.resize(image, scaled.size, interpolation=cv2.INTER_AREA)


def _triangulated(
    cameras: Sequence[StrechaCamera], image_dir: Path, work: Path, method: Method
) -> pycolmap.Reconstruction:
    """hloc triangulation of ``cameras`` (names relative to ``image_dir``) at their true poses."""
    names = [c.name for c in cameras]
    features = method.extract(image_dir, names, work / "features")
    pairs = write_pairs(work / "pairs.txt", exhaustive_pairs(names))
    matches = match_pairs(method.matcher, pairs, features, work / "matches.h5")
    return triangulate_reference(reference_from_ground_truth(cameras), work / "reference", image_dir, pairs, features, matches)


def write_strecha_camera(path: Path, camera: StrechaCamera) -> None:
    """A Strecha ``.camera`` file (K, zero distortion, R camera-to-world, centre, size)."""
    rows = [*camera.K, np.zeros(3), *camera.R, camera.center]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows) + f"{camera.size[0]} {camera.size[1]}\n")


def build_strecha(scene: str | Path, root: str | Path, scale: float = 0.5) -> Path:
    """A copy of a Strecha scene (``images/``, ``cameras/``) with images and cameras resized by ``scale``."""
    scene, root = Path(scene), Path(root)
    params = {"kind": "strecha", "scene": str(scene.resolve()), "scale": scale}
    if _done(root, params) is not None:
        return root
    if root.exists():
        shutil.rmtree(root)
    for camera in read_strecha_scene(scene):
        camera, image = _resized(camera, _read_rgb(scene / "images" / camera.name), scale)
        _write_jpeg(root / "images" / camera.name, image)
        write_strecha_camera(root / "cameras" / f"{camera.name}.camera", camera)
    write_poses(root / GROUND_TRUTH, {c.name: c.cam_from_world for c in read_strecha_scene(root)})
    _finish(root, params, {})
    return root


# --------------------------------------------------------------------------- Aachen v1.1


def build_aachen(
    scene: str | Path,
    root: str | Path,
    scale: float = 0.5,
    step: int = 3,
    offset: int = 2,
    night_seed: int = 0,
    method: str = "sift",
) -> Miniature:
    """An Aachen-v1.1-layout dataset of a Strecha ``scene`` in ``root`` (skipped if already built).

    Images are resized by ``scale``; the images at sorted index ``offset + step k`` are the
    queries (day: the photo, night: its synthetic night), the others the database. The
    reference model has the ground-truth ``PINHOLE`` cameras and poses of the database and
    points triangulated from ``method`` features (SIFT, like Aachen's model).
    """
    scene, root = Path(scene), Path(root)
    params = {"kind": "aachen", "scene": str(scene.resolve()), "scale": scale, "step": step, "offset": offset,
              "night_seed": night_seed, "method": method}
    if (done := _done(root, params)) is not None:
        return done
    if root.exists():
        shutil.rmtree(root)
    images = root / "images_upright"
    cameras = {c.name: c for c in read_strecha_scene(scene)}
    database, queries = split_database_queries(sorted(cameras), step, offset)
    db_cameras, day, truth = [], {}, {}
    for name in sorted(cameras):
        camera, image = _resized(cameras[name], _read_rgb(scene / "images" / name), scale)
        stem = Path(name).stem
        relative = f"db/{stem}.jpg" if name in database else f"query/day/milestone/{stem}.jpg"
        if scale == 1 and Path(name).suffix.lower() == ".jpg":
            (images / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(scene / "images" / name, images / relative)  # the original bytes, not re-encoded
        else:
            _write_jpeg(images / relative, image)
        camera = dataclasses.replace(camera, name=relative)
        if name in database:
            db_cameras.append(camera)
        else:
            day[relative] = camera
    night_dir, night_names = write_night_queries(images, sorted(day), root.parent / f"{root.name}-build", night_seed)
    night = {}
    for relative, png in night_names.items():
        target = f"query/night/nexus5x/{Path(relative).stem}_night.jpg"
        _write_jpeg(images / target, _read_rgb(night_dir / png))
        night[target] = dataclasses.replace(day[relative], name=target)
    for group in (day, night):
        for relative, camera in group.items():
            truth[relative.split("/")[-1]] = camera.cam_from_world
    reference = _triangulated(db_cameras, images, root.parent / f"{root.name}-build", parse_method(method))
    model = root / AACHEN_MODEL
    model.mkdir(parents=True)
    reference.write(model)
    write_query_list(root / AACHEN_QUERY_LISTS["day"], {n: pinhole_camera(c) for n, c in day.items()})
    write_query_list(root / AACHEN_QUERY_LISTS["night"], {n: pinhole_camera(c) for n, c in night.items()})
    write_poses(root / GROUND_TRUTH, truth)
    logger.info("Aachen-layout miniature of %s in %s: %d database images, %d day + %d night queries, %d points.",
                scene.name, root, len(db_cameras), len(day), len(night), reference.num_points3D())
    return _finish(root, params, {**{n: "day" for n in day}, **{n: "night" for n in night}})


# --------------------------------------------------------------------------- InLoc


def inloc_query_camera(width: int, height: int) -> np.ndarray:
    """K assumed by hloc's ``localize_inloc`` in hloc coordinates (pixel centres at integers)."""
    return np.array([[INLOC_FOCAL, 0, 0.5 * width], [0, INLOC_FOCAL, 0.5 * height], [0, 0, 1.0]])


def resample_query(image: np.ndarray, camera: StrechaCamera, width: int, height: int) -> np.ndarray:
    """The image of ``camera``'s pose seen with hloc's InLoc intrinsics at ``width`` x ``height``.

    A pure change of intrinsics (the photo is undistorted), ``x_new = K_new K^-1 x``, with
    both K in hloc coordinates (Strecha's K is in the corner convention: shift by 0.5 px).
    """
    k_source = camera.K.copy()
    k_source[:2, 2] -= 0.5
    homography = inloc_query_camera(width, height) @ np.linalg.inv(k_source)
    return cv2.warpPerspective(image, homography, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def dense_points(
    reconstruction: pycolmap.Reconstruction, name: str, camera: StrechaCamera, max_edge: float = 48.0
) -> np.ndarray:
    """World points (H, W, 3) seen by every pixel of image ``name`` (NaN where unknown).

    The depths of the image's triangulated observations are interpolated over their
    Delaunay triangulation, linearly in inverse depth (exact on planar triangles); pixels in
    triangles with an edge longer than ``max_edge`` px, or outside the hull, stay NaN. Pixel
    (i, j) is the hloc keypoint (x=j, y=i), i.e. (j + 0.5, i + 0.5) in the corner convention.
    """
    from scipy.spatial import Delaunay

    image = reconstruction.find_image_with_name(name)
    if image is None:
        raise KeyError(f"{name} is not in the reconstruction")
    observed = [(p.xy, reconstruction.points3D[p.point3D_id].xyz) for p in image.points2D if p.has_point3D()]
    width, height = camera.size
    out = np.full((height, width, 3), np.nan)
    if len(observed) < 3:
        return out
    xy = np.array([o[0] for o in observed], np.float64)
    rotation, translation = camera.cam_from_world
    depth = np.array([o[1] for o in observed]) @ rotation[2] + translation[2]
    triangulation = Delaunay(xy)
    edges = np.linalg.norm(xy[triangulation.simplices] - xy[np.roll(triangulation.simplices, 1, axis=1)], axis=-1)
    good = edges.max(1) <= max_edge
    jj, ii = np.meshgrid(np.arange(width), np.arange(height))
    grid = np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], 1)
    simplex = triangulation.find_simplex(grid)
    inside = (simplex >= 0) & good[np.maximum(simplex, 0)]
    transform = triangulation.transform[simplex[inside]]
    bary2 = np.einsum("nij,nj->ni", transform[:, :2], grid[inside] - transform[:, 2])
    bary = np.concatenate([bary2, 1 - bary2.sum(1, keepdims=True)], 1)
    inverse = (bary * (1.0 / depth[triangulation.simplices[simplex[inside]]])).sum(1)
    z = 1.0 / inverse
    rays = np.concatenate([grid[inside], np.ones((inside.sum(), 1))], 1) @ np.linalg.inv(camera.K).T
    world = (rays * z[:, None]) @ camera.R.T + camera.center
    out.reshape(-1, 3)[inside] = world
    return out


def scan_transform(index: int) -> np.ndarray:
    """A 4x4 scan-to-world transform per scan (a turn about z and a shift), so the tests see it applied."""
    angle = np.radians(20.0 + 35.0 * index)
    c, s = np.cos(angle), np.sin(angle)
    transform = np.eye(4)
    transform[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    transform[:3, 3] = [1.5 * index - 2.0, 0.7 - index, 0.25 * index]
    return transform


def write_transformation(path: Path, transform: np.ndarray) -> None:
    """InLoc's per-scan alignment file: "Before general icp:", 4 rows, blank, "After general icp:", 4 rows."""
    rows = "\n".join(" ".join(f"{v:.10f}" for v in row) for row in transform)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"Before general icp:\n{rows}\n\nAfter general icp:\n{rows}\n\n")


def build_inloc(
    scene: str | Path,
    root: str | Path,
    scale: float = 0.5,
    query_size: tuple[int, int] = (1600, 1200),
    step: int = 3,
    offset: int = 2,
    building: str = "STR",
    method: str = "sift",
    max_edge: float = 48.0,
) -> Miniature:
    """An InLoc-layout dataset of a Strecha ``scene`` in ``root`` (skipped if already built).

    Queries (sorted index ``offset + step k``) become ``query/iphone7/IMG_<stem>.JPG`` of size
    ``query_size`` with hloc's fixed InLoc intrinsics; the other images, resized by
    ``scale``, become cutouts, two per scan, scans alternating between floors
    ``<building>1`` and ``<building>2``, each scan in its own frame (:func:`scan_transform`).
    """
    scene, root = Path(scene), Path(root)
    if len(building) != 3:
        raise ValueError(f"building code {building!r}: hloc takes the first 3 characters of a cutout name")
    params = {"kind": "inloc", "scene": str(scene.resolve()), "scale": scale, "query_size": list(query_size),
              "step": step, "offset": offset, "building": building, "method": method, "max_edge": max_edge}
    if (done := _done(root, params)) is not None:
        return done
    from scipy.io import savemat

    if root.exists():
        shutil.rmtree(root)
    cameras = {c.name: c for c in read_strecha_scene(scene)}
    database, queries = split_database_queries(sorted(cameras), step, offset)
    truth, conditions, cutouts, scans = {}, {}, [], {}
    for name in queries:
        relative = f"query/iphone7/IMG_{Path(name).stem}.JPG"
        _write_jpeg(root / relative, resample_query(_read_rgb(scene / "images" / name), cameras[name], *query_size))
        truth[relative.split("/")[-1]] = cameras[name].cam_from_world
        conditions[relative] = "iphone7"
    for index, name in enumerate(database):
        scan = index // 2
        floor = f"{building}{1 + scan % 2}"
        scan_id = f"{scan + 1:03d}"
        relative = f"database/cutouts/{floor}/{scan_id}/{building}_cutout_{scan_id}_{30 * (index % 2)}_0.jpg"
        camera, image = _resized(cameras[name], _read_rgb(scene / "images" / name), scale)
        _write_jpeg(root / relative, image)
        cutouts.append(dataclasses.replace(camera, name=relative))
        scans[relative] = (floor, scan_id, scan)
    reference = _triangulated(cutouts, root, root.parent / f"{root.name}-build", parse_method(method))
    for camera in cutouts:
        floor, scan_id, scan = scans[camera.name]
        transform = scan_transform(scan)
        world = dense_points(reference, camera.name, camera, max_edge)
        xyz = (world - transform[:3, 3]) @ transform[:3, :3]  # world -> scan frame (NaN stays NaN)
        savemat(str(root / f"{camera.name}.mat"), {"XYZcut": xyz})
        write_transformation(root / "database/alignments" / floor / "transformations" / f"{building}_trans_{scan_id}.txt", transform)
    write_poses(root / GROUND_TRUTH, truth)
    logger.info("InLoc-layout miniature of %s in %s: %d cutouts, %d queries, %d points.",
                scene.name, root, len(cutouts), len(queries), reference.num_points3D())
    return _finish(root, params, conditions)
