"""Readers of the evaluation datasets' ground truth (layouts of ``../shared/data``).

Coordinates: ground truth here is expressed for keypoints in hloc's convention (pixel
centres at integer coordinates) unless said otherwise. Strecha and ScanNet intrinsics are
in COLMAP's corner convention (pixel centres at +0.5): use :func:`to_corner` on keypoints
before combining them with those K.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..io import IMAGE_SUFFIXES

T = TypeVar("T")

#: HPatches sequences D2-Net's protocol leaves out (images above 1600x1200 px).
HPATCHES_EXCLUDED = (
    "i_contruction",
    "i_crownnight",
    "i_dc",
    "i_pencils",
    "i_whitebuilding",
    "v_artisans",
    "v_astronautis",
    "v_talent",
)


class DatasetError(FileNotFoundError):
    """A dataset file is missing or malformed (the message names it)."""


def _read_matrix(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: missing ground-truth file")
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as error:
        raise DatasetError(f"{path}: not a whitespace-separated list of numbers ({error})") from None
    if values.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: expected {int(np.prod(shape))} numbers, found {values.size}")
    return values.reshape(shape)


def to_corner(keypoints: np.ndarray) -> np.ndarray:
    """hloc keypoints (centres at integers) -> COLMAP/corner convention (centres at +0.5)."""
    return np.asarray(keypoints, np.float64) + 0.5


# --------------------------------------------------------------------------- homographies


@dataclass
class HomographySequence:
    """One sequence: ``images[0]`` is the reference; ``homographies[k]`` maps it to ``images[k + 1]``."""

    name: str
    images: list[Path]
    homographies: list[np.ndarray]

    @property
    def kind(self) -> str:
        """``"i"`` (illumination), ``"v"`` (viewpoint) or ``""`` (unknown, e.g. Oxford)."""
        return self.name[0] if self.name[:2] in ("i_", "v_") else ""


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_sequence(folder: str | Path) -> HomographySequence:
    """Read an HPatches (``1.ppm``, ``H_1_k``) or Oxford (``img1.*``, ``H1tokp``) sequence folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    if (folder / "H_1_2").is_file() or _find_image(folder, "1") is not None:
        ref, targets = _find_image(folder, "1"), sorted(
            int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"H_1_(\d+)", p.name))
        )
        image_of, h_of = (lambda k: _find_image(folder, str(k))), (lambda k: folder / f"H_1_{k}")
    else:
        ref, targets = _find_image(folder, "img1"), sorted(
            int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"H1to(\d+)p", p.name))
        )
        image_of, h_of = (lambda k: _find_image(folder, f"img{k}")), (lambda k: folder / f"H1to{k}p")
    if ref is None:
        raise DatasetError(f"{folder}: no reference image (1.ppm or img1.*)")
    if not targets:
        raise DatasetError(f"{folder}: no homography file (H_1_k or H1tokp)")
    images, homographies = [ref], []
    for k in targets:
        image = image_of(k)
        if image is None:
            raise DatasetError(f"{folder}: homography {h_of(k).name} has no image {k}")
        h = _read_matrix(h_of(k), (3, 3))
        if abs(np.linalg.det(h)) < 1e-12:
            raise DatasetError(f"{h_of(k)}: singular homography")
        images.append(image)
        homographies.append(h / h[2, 2])
    return HomographySequence(folder.name, images, homographies)


def is_sequence(folder: Path) -> bool:
    """Whether ``folder`` holds an HPatches or Oxford sequence."""
    return folder.is_dir() and any(re.fullmatch(r"H_1_\d+|H1to\d+p", p.name) for p in folder.iterdir())


def list_sequences(root: str | Path, exclude: tuple[str, ...] = HPATCHES_EXCLUDED) -> list[HomographySequence]:
    """Every sequence under ``root`` (or ``root`` itself), sorted by name, minus ``exclude``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if is_sequence(root):
        return [read_sequence(root)]
    folders = sorted(p for p in root.iterdir() if is_sequence(p) and p.name not in exclude)
    if not folders:
        raise DatasetError(f"{root}: no HPatches/Oxford sequence folder inside")
    return [read_sequence(p) for p in folders]


def collect_sequences(roots: Iterable[str | Path]) -> tuple[list[HomographySequence], list[str]]:
    """:func:`list_sequences` of every root, and per sequence its root's folder name (a reporting group)."""
    sequences: list[HomographySequence] = []
    groups: list[str] = []
    for root in roots:
        found = list_sequences(root)
        sequences += found
        groups += [Path(root).resolve().name] * len(found)
    return sequences, groups


def warp_points(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through the homography ``h`` (3, 3) -> (N, 2)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], 1) @ np.asarray(h, np.float64).T
    return homogeneous[:, :2] / homogeneous[:, 2:]


# --------------------------------------------------------------------------- Strecha


@dataclass
class StrechaCamera:
    """A Strecha ground-truth camera: ``x ~ K R^T (X - center)`` (R maps camera to world)."""

    name: str
    K: np.ndarray
    R: np.ndarray
    center: np.ndarray
    size: tuple[int, int]

    @property
    def cam_from_world(self) -> tuple[np.ndarray, np.ndarray]:
        """(R, t) with ``x_cam = R X + t``."""
        return self.R.T, -self.R.T @ self.center


def read_strecha_camera(path: Path) -> StrechaCamera:
    """One ``<image>.camera`` file (9 lines: K, distortion, R, centre, size)."""
    values = _read_matrix(path, (26,))
    size = (int(values[24]), int(values[25]))
    r = values[12:21].reshape(3, 3)
    if abs(np.linalg.det(r) - 1) > 1e-3:
        raise DatasetError(f"{path}: the 3x3 block of lines 5-7 is not a rotation (det {np.linalg.det(r):.4f})")
    return StrechaCamera(path.name.removesuffix(".camera"), values[:9].reshape(3, 3), r, values[21:24], size)


def read_strecha_scene(scene: str | Path) -> list[StrechaCamera]:
    """The cameras of a scene folder (``images/``, ``cameras/``), sorted by image name."""
    scene = Path(scene)
    images = scene / "images"
    if not images.is_dir():
        raise DatasetError(f"{scene}: no images/ folder")
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise DatasetError(f"{images}: no image")
    return [read_strecha_camera(scene / "cameras" / f"{n}.camera") for n in names]


def strecha_pairs(cameras: list[StrechaCamera], steps: tuple[int, ...] = (1, 2)) -> list[tuple[int, int]]:
    """DESIGN.md §7's pairs: (i, i + s) for each step s."""
    return [(i, i + s) for s in steps for i in range(len(cameras) - s)]


def relative_pose(cam0: StrechaCamera, cam1: StrechaCamera) -> tuple[np.ndarray, np.ndarray]:
    """(R_01, t_01) with ``x_1 = R_01 x_0 + t_01`` in camera coordinates."""
    r0, t0 = cam0.cam_from_world
    r1, t1 = cam1.cam_from_world
    return r1 @ r0.T, t1 - r1 @ r0.T @ t0


# --------------------------------------------------------------------------- ScanNet


@dataclass
class PosePair:
    """Two images with intrinsics (corner convention) and the relative pose ``x1 = R x0 + t``."""

    name0: str
    name1: str
    K0: np.ndarray
    K1: np.ndarray
    R: np.ndarray
    t: np.ndarray
    extra: dict = field(default_factory=dict)


def read_scannet_pairs(root: str | Path) -> list[PosePair]:
    """SuperGlue's ``pairs_with_gt.txt`` under ``root`` (K for the stored image size)."""
    path = Path(root) / "pairs_with_gt.txt"
    if not path.is_file():
        raise DatasetError(f"{path}: missing pair list")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 38:
            raise DatasetError(f"{path}:{number}: expected 38 fields (names, rotations, K0, K1, T_0to1), got {len(fields)}")
        try:
            values = np.array(fields[2:], np.float64)
        except ValueError:
            raise DatasetError(f"{path}:{number}: non-numeric field") from None
        if values[0] != 0 or values[1] != 0:
            raise DatasetError(f"{path}:{number}: EXIF rotation codes are not supported")
        t = values[20:36].reshape(4, 4)
        pairs.append(PosePair(fields[0], fields[1], values[2:11].reshape(3, 3), values[11:20].reshape(3, 3), t[:3, :3], t[:3, 3]))
    return pairs


def strecha_pose_pairs(scene: str | Path, steps: tuple[int, ...] = (1, 2)) -> list[PosePair]:
    """A Strecha scene as :class:`PosePair` list over :func:`strecha_pairs`."""
    cameras = read_strecha_scene(scene)
    out = []
    for i, j in strecha_pairs(cameras, steps):
        r, t = relative_pose(cameras[i], cameras[j])
        out.append(PosePair(cameras[i].name, cameras[j].name, cameras[i].K, cameras[j].K, r, t))
    return out


def evenly_spaced(items: Sequence[T], count: int | None) -> list[T]:
    """At most ``count`` of ``items``, evenly spaced in their order from the first to the last
    (all if None); the one subsampling rule of the evaluation sets."""
    if count is None or count >= len(items):
        return list(items)
    if count <= 0:
        return []
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))]
