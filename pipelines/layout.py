"""Dataset layout checks, run before any heavy step: every problem is listed in one error.

Each ``check_*`` reads only names, headers and small text files (plus, for InLoc, the content
of a few ``.mat`` files), collects every missing or malformed file, and raises one
:class:`LayoutError` listing them all; on success it returns what the pipeline needs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..evaluation.datasets import DatasetError, read_strecha_camera
from ..io import IMAGE_SUFFIXES

#: at most this many problems are spelled out; the rest are counted.
MAX_LISTED = 200
AACHEN_IMAGES = "images_upright"
AACHEN_MODEL = "3D-models/aachen_v_1_1"
AACHEN_QUERY_GLOB = "*_time_queries_with_intrinsics.txt"
INLOC_QUERIES = "query/iphone7"
INLOC_CUTOUTS = "database/cutouts"
INLOC_ALIGNMENTS = "database/alignments"
#: the iPhone 7 resolution that hloc's fixed InLoc focal length (4032 * 28 / 36 px) refers to.
INLOC_QUERY_SIZE = (4032, 3024)


class LayoutError(DatasetError):
    """A dataset does not have the expected layout; ``problems`` lists every missing or bad file."""

    def __init__(self, dataset: str, root: Path, problems: list[str]):
        self.problems = problems
        listed = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(
            f"{root} is not a valid {dataset} dataset ({len(problems)} problem{'s' * (len(problems) != 1)}):\n  "
            + "\n  ".join(listed) + more
        )


def _images(folder: Path) -> list[str]:
    """Relative posix names of the images under ``folder`` (recursive, sorted; empty if absent)."""
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header (JPEG/PNG), or ``None`` if unreadable."""
    import cv2

    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except ImportError:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return None if image is None else (image.shape[1], image.shape[0])
    except Exception:
        return None


def _model_problems(path: Path, problems: list[str]) -> pycolmap.Reconstruction | None:
    if not path.is_dir():
        problems.append(f"{path}: missing COLMAP model folder")
        return None
    if not any((path / f"{kind}{ext}").is_file() for kind in ("images",) for ext in (".bin", ".txt")):
        problems.append(f"{path}: no images.bin / images.txt (a COLMAP model is cameras, images, points3D)")
        return None
    try:
        return pycolmap.Reconstruction(path)
    except Exception as error:
        problems.append(f"{path}: unreadable COLMAP model ({error})")
        return None


def read_query_list(path: Path, problems: list[str]) -> dict[str, pycolmap.Camera]:
    """hloc's ``name MODEL width height params...`` list; malformed lines are added to ``problems``."""
    cameras = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, *data = line.split()
        try:
            model, width, height, *params = data
            camera = pycolmap.Camera(model=model, width=int(width), height=int(height), params=np.array(params, float))
            if not camera.verify_params():
                raise ValueError(f"{len(params)} parameters do not fit {model} ({camera.params_info})")
        except Exception as error:
            problems.append(f"{path}:{number}: expected 'name MODEL width height params...' ({error})")
            continue
        cameras[name] = camera
    if not cameras and path.is_file():
        problems.append(f"{path}: no query")
    return cameras


# --------------------------------------------------------------------------- Aachen v1.1


@dataclass
class AachenLayout:
    """What the Aachen v1.1 pipeline needs from the dataset."""

    root: Path
    images: Path
    model: Path
    query_lists: list[Path]
    queries: dict[str, pycolmap.Camera]
    database: list[str]
    condition: dict[str, str] = field(default_factory=dict)  # query name -> list stem (day/night)


def check_aachen(root: str | Path) -> AachenLayout:
    """hloc's Aachen v1.1 layout: ``images_upright/{db,query}``, ``3D-models/aachen_v_1_1``, query lists."""
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        raise LayoutError("Aachen v1.1", root, [f"{root}: not a folder"])
    images = root / AACHEN_IMAGES
    if not (images / "db").is_dir():
        problems.append(f"{images / 'db'}: missing database image folder")
    elif not _images(images / "db"):
        problems.append(f"{images / 'db'}: no image")
    if not (images / "query").is_dir():
        problems.append(f"{images / 'query'}: missing query image folder")
    reference = _model_problems(root / AACHEN_MODEL, problems)
    database = []
    if reference is not None:
        database = sorted(im.name for im in reference.images.values())
        for name in database:
            if not (images / name).is_file():
                problems.append(f"{images / name}: image of the reference model missing")
        if reference.num_points3D() == 0:
            problems.append(f"{root / AACHEN_MODEL}: the reference model has no 3D point (covisibility pairs need them)")
    lists = sorted((root / "queries").glob(AACHEN_QUERY_GLOB)) if (root / "queries").is_dir() else []
    if not lists:
        problems.append(f"{root / 'queries'}: no {AACHEN_QUERY_GLOB} (e.g. day_time_queries_with_intrinsics.txt)")
    queries, condition = {}, {}
    for path in lists:
        for name, camera in read_query_list(path, problems).items():
            queries[name] = camera
            condition[name] = path.name.split("_time_")[0]
            if not (images / name).is_file():
                problems.append(f"{images / name}: query image listed in {path.name} is missing")
    duplicates = [n for n, c in Counter(n.split("/")[-1] for n in queries).items() if c > 1]
    if duplicates:
        problems.append(f"query basenames are not unique (the results file names queries by basename): {', '.join(sorted(duplicates))}")
    if problems:
        raise LayoutError("Aachen v1.1", root, problems)
    return AachenLayout(root, images, root / AACHEN_MODEL, lists, queries, database, condition)


# --------------------------------------------------------------------------- InLoc


@dataclass
class InLocLayout:
    """What the InLoc pipeline needs: query and cutout names relative to the dataset root."""

    root: Path
    queries: list[str]
    database: list[str]
    warnings: list[str] = field(default_factory=list)


def transformation_file(root: Path, cutout: str) -> Path:
    """hloc's alignment file of a cutout: ``database/alignments/<floor>/transformations/<BLD>_trans_<scan>.txt``."""
    parts = cutout.split("/")
    return root / INLOC_ALIGNMENTS / parts[-3] / "transformations" / f"{parts[-1][:3]}_trans_{parts[-2]}.txt"


def _transformation_problems(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path}: missing scan alignment"]
    lines = path.read_text().splitlines()
    if len(lines) < 11:
        return [f"{path}: {len(lines)} lines, hloc reads the 4x4 'After general icp' matrix from lines 8-11"]
    try:
        matrix = np.array([[float(v) for v in lines[i].split()] for i in range(7, 11)])
    except ValueError:
        return [f"{path}: lines 8-11 are not numbers (hloc reads the 'After general icp' matrix there)"]
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        return [f"{path}: lines 8-11 are not a 4x4 rigid transformation"]
    return []


def _xyzcut_problems(path: Path, size: tuple[int, int] | None) -> list[str]:
    try:
        from scipy.io import loadmat
    except ImportError:
        return [f"{path}: cannot be read without scipy (a dependency of hloc's localize_inloc)"]

    try:
        xyz = loadmat(str(path))["XYZcut"]
    except KeyError:
        return [f"{path}: no XYZcut variable"]
    except Exception as error:
        return [f"{path}: unreadable .mat file ({error})"]
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        return [f"{path}: XYZcut has shape {xyz.shape}, expected H x W x 3"]
    if size is not None and xyz.shape[:2] != (size[1], size[0]):
        return [f"{path}: XYZcut is {xyz.shape[1]}x{xyz.shape[0]}, its image is {size[0]}x{size[1]} (it must be dense, one point per pixel)"]
    if xyz.dtype != np.float64:
        return [f"{path}: XYZcut is {xyz.dtype}; hloc samples it with float64 keypoints, it must be float64"]
    if not np.isfinite(xyz).any():
        return [f"{path}: XYZcut has no finite point"]
    return []


def check_inloc(root: str | Path, content_samples: int = 3) -> InLocLayout:
    """hloc's InLoc layout: ``query/iphone7/*``, cutouts with ``.jpg.mat``, per-scan alignments.

    Every cutout's ``.mat`` and alignment file must exist and every alignment must parse; the
    content of the first ``content_samples`` ``.mat`` files (all if negative) is read and checked
    (``XYZcut`` H x W x 3 float64 matching the image). Cutout names must be
    ``<floor>/<scan>/<name>`` under ``database/cutouts`` (hloc takes the building from the first 3
    characters of the name, the floor and scan from the folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError("InLoc", root, [f"{root}: not a folder"])
    problems: list[str] = []
    warnings: list[str] = []
    queries = [f"{INLOC_QUERIES}/{n}" for n in _images(root / INLOC_QUERIES)]
    if not queries:
        problems.append(f"{root / INLOC_QUERIES}: missing or without images")
    database = [f"{INLOC_CUTOUTS}/{n}" for n in _images(root / INLOC_CUTOUTS)]
    if not database:
        problems.append(f"{root / INLOC_CUTOUTS}: missing or without images")
    transformations: dict[Path, list[str]] = {}
    checked = 0
    for name in database:
        parts = name.split("/")
        if len(parts) != 5:
            problems.append(f"{root / name}: expected {INLOC_CUTOUTS}/<floor>/<scan>/<cutout>")
            continue
        mat = root / f"{name}.mat"
        if not mat.is_file():
            problems.append(f"{mat}: missing XYZcut file")
        elif content_samples < 0 or checked < content_samples:
            checked += 1
            problems += _xyzcut_problems(mat, image_size(root / name))
        path = transformation_file(root, name)
        if path not in transformations:
            transformations[path] = _transformation_problems(path)
    for found in transformations.values():
        problems += found
    sizes = {image_size(root / q) for q in queries[:5]}
    if None in sizes:
        problems += [f"{root / q}: unreadable image" for q in queries[:5] if image_size(root / q) is None]
    elif sizes and sizes != {INLOC_QUERY_SIZE}:
        warnings.append(
            f"query images are {', '.join(f'{w}x{h}' for w, h in sorted(sizes))}: hloc's localize_inloc assumes a focal of "
            f"4032*28/36 px at the stored resolution (iPhone 7, {INLOC_QUERY_SIZE[0]}x{INLOC_QUERY_SIZE[1]}); "
            "poses are wrong unless the queries were resampled to it"
        )
    if problems:
        raise LayoutError("InLoc", root, problems)
    return InLocLayout(root, queries, database, warnings)


# --------------------------------------------------------------------------- image folder (ETH SfM)


@dataclass
class ImageFolderLayout:
    """An image folder, and ground truth if found: Strecha cameras per image, or a COLMAP model."""

    root: Path
    images: Path
    names: list[str]
    ground_truth: Path | None = None
    ground_truth_kind: str | None = None  # "strecha" or "colmap"


def check_image_folder(root: str | Path, ground_truth: str | Path | None = None) -> ImageFolderLayout:
    """``root/images`` (or ``root`` itself) with at least 2 readable images; ground truth if given or found.

    Ground truth: ``ground_truth`` (a folder of Strecha ``<image>.camera`` files or a COLMAP
    model), else ``root/cameras`` (Strecha) when present. Every image must then have its
    camera; a COLMAP model must name every image it holds as in the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError("image folder", root, [f"{root}: not a folder"])
    problems: list[str] = []
    images = root / "images" if (root / "images").is_dir() else root
    names = _images(images)
    if len(names) < 2:
        problems.append(f"{images}: {len(names)} image(s), SfM needs at least 2")
    for name in names:
        if image_size(images / name) is None:
            problems.append(f"{images / name}: unreadable image")
    gt = Path(ground_truth) if ground_truth is not None else (root / "cameras" if (root / "cameras").is_dir() else None)
    kind = None
    if gt is not None:
        if not gt.is_dir():
            problems.append(f"{gt}: ground-truth folder not found")
        elif any(gt.glob("images.bin")) or any(gt.glob("images.txt")):
            kind = "colmap"
            model = _model_problems(gt, problems)
            if model is not None:
                known = set(names)
                problems += [f"{gt}: model image {im.name} is not in {images}" for im in model.images.values() if im.name not in known]
        else:
            kind = "strecha"
            for name in names:
                try:
                    read_strecha_camera(gt / f"{name}.camera")
                except DatasetError as error:
                    problems.append(str(error))
    if problems:
        raise LayoutError("image folder", root, problems)
    return ImageFolderLayout(root, images, names, gt, kind)
