"""Pictures of matches, localisations and models, drawn with OpenCV (no matplotlib needed).

- :func:`plot_matches`: two images side by side with their matches, inliers in green, outliers in
  red; :func:`plot_correspondences` does it for two image files (the demo, the pipelines);
- :func:`plot_positions`: a top view (the plane of the two main axes of all points) of
  database cameras, estimated query positions and, when known, true positions;
- :func:`write_model_summary`: COLMAP's summary of a model as text, and a top view of its
  points and cameras.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from .io import read_image

#: BGR colours of the position plot's groups, in order.
COLOURS = ((160, 160, 160), (0, 160, 255), (0, 200, 0), (220, 80, 0))


def plot_matches(
    image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray, inliers: np.ndarray,
    path: Path, height: int = 480, title: str = "", max_lines: int = 200,
) -> None:
    """Side-by-side PNG of two RGB float images with inlier matches (green) and outliers (red).

    At most ``max_lines`` matches are drawn (an even subsample) so that the plot stays readable;
    the title carries the full counts.
    """
    tiles, scales = [], []
    for image in (image0, image1):
        scale = height / image.shape[0]
        tiles.append(cv2.resize((image * 255).astype(np.uint8), (round(image.shape[1] * scale), height), interpolation=cv2.INTER_AREA))
        scales.append(scale)
    canvas = np.ascontiguousarray(np.concatenate(tiles, 1)[..., ::-1])
    offset = tiles[0].shape[1]
    shown = np.linspace(0, len(kpts0) - 1, min(len(kpts0), max_lines)).round().astype(int) if len(kpts0) else []
    for p0, p1, good in sorted(zip(kpts0[shown], kpts1[shown], inliers[shown]), key=lambda t: t[2]):
        a = (int(round(p0[0] * scales[0])), int(round(p0[1] * scales[0])))
        b = (int(round(p1[0] * scales[1])) + offset, int(round(p1[1] * scales[1])))
        cv2.line(canvas, a, b, (0, 200, 0) if good else (0, 0, 220), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas)


def plot_correspondences(
    image0: Path, image1: Path, kpts0: np.ndarray, kpts1: np.ndarray, inliers: np.ndarray, path: Path, title: str
) -> Path:
    """PNG of two images side by side with their correspondences (inliers green)."""
    plot_matches(read_image(image0), read_image(image1), np.asarray(kpts0), np.asarray(kpts1), np.asarray(inliers, bool), path, title=title)
    return path


def _top_view(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and the two principal axes (rows) of (N, 3) points."""
    centre = np.median(points, 0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    return centre, vt[:2]


def plot_positions(
    path: Path,
    groups: Mapping[str, np.ndarray],
    links: tuple[str, str] | None = None,
    size: int = 800,
    title: str = "",
) -> Path:
    """Top view of labelled groups of (N, 3) positions; ``links`` joins row i of two groups (estimate, truth)."""
    arrays = {k: np.asarray(v, np.float64).reshape(-1, 3) for k, v in groups.items()}
    finite = np.concatenate([a[np.isfinite(a).all(1)] for a in arrays.values()] or [np.zeros((1, 3))])
    if len(finite) < 2:
        finite = np.concatenate([finite, finite + 1])
    centre, axes = _top_view(finite)
    flat = (finite - centre) @ axes.T
    span = max(float(np.abs(flat).max()), 1e-9)
    scale = 0.42 * size / span

    def pixel(p: np.ndarray) -> tuple[int, int]:
        xy = (np.asarray(p) - centre) @ axes.T * scale + size / 2
        return int(round(xy[0])), int(round(size - xy[1]))

    canvas = np.full((size, size, 3), 255, np.uint8)
    if links is not None and links[0] in arrays and links[1] in arrays:
        for a, b in zip(arrays[links[0]], arrays[links[1]]):
            if np.isfinite(a).all() and np.isfinite(b).all():
                cv2.line(canvas, pixel(a), pixel(b), (0, 0, 220), 1, cv2.LINE_AA)
    for index, (label, points) in enumerate(arrays.items()):
        colour = COLOURS[index % len(COLOURS)]
        ring = "rings" in label
        for p in points[np.isfinite(points).all(1)]:
            cv2.circle(canvas, pixel(p), 7 if ring else (3 if index else 2), colour, 2 if ring else -1, cv2.LINE_AA)
        cv2.putText(canvas, label, (10, 50 + 22 * index), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 2, cv2.LINE_AA)
    cv2.putText(canvas, title, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2, cv2.LINE_AA)
    ruler = 10 ** np.floor(np.log10(span))
    cv2.line(canvas, (10, size - 20), (10 + int(ruler * scale), size - 20), (0, 0, 0), 2)
    cv2.putText(canvas, f"{ruler:g} units", (10, size - 28), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas)
    return path


def camera_centres(reconstruction: pycolmap.Reconstruction) -> np.ndarray:
    """(N, 3) centres of the registered images of a model."""
    centres = [im.projection_center() for im in reconstruction.images.values() if im.has_pose]
    return np.array(centres, np.float64).reshape(-1, 3)


def write_model_summary(reconstruction: pycolmap.Reconstruction | None, out_dir: Path, title: str) -> Path:
    """``model_summary.txt`` (COLMAP's summary) and ``model_top_view.png`` (points and cameras) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "model_summary.txt"
    if reconstruction is None:
        text.write_text(f"{title}\nno model was reconstructed\n")
        return text
    text.write_text(f"{title}\n{reconstruction.summary()}\n")
    xyz = np.array([p.xyz for p in reconstruction.points3D.values()], np.float64).reshape(-1, 3)
    if len(xyz) > 20000:
        xyz = xyz[np.random.default_rng(0).choice(len(xyz), 20000, replace=False)]
    if len(xyz):
        low, high = np.percentile(xyz, 2, 0), np.percentile(xyz, 98, 0)
        xyz = xyz[((xyz >= low) & (xyz <= high)).all(1)]
    plot_positions(out_dir / "model_top_view.png", {"3D points": xyz, "cameras": camera_centres(reconstruction)}, title=title)
    return text
