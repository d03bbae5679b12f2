"""In-plane rotation sequences (exact ground truth) and the rotation benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import rotation
from hloc_hndesc.evaluation.datasets import read_sequence, warp_points
from hloc_hndesc.evaluation.synthetic import make_rotation_sequence, rotation_homography


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0, 180.0, -60.0])
def test_canvas_holds_the_whole_rotated_image(angle: float) -> None:
    """The photo's outer corners land on the canvas border: none outside, the box touched on all sides."""
    size = (200, 120)
    hom, (w, h) = rotation_homography(size, angle)
    rect = np.array([[-0.5, -0.5], [199.5, -0.5], [199.5, 119.5], [-0.5, 119.5]])
    warped = warp_points(hom, rect)
    assert warped[:, 0].min() >= -0.5 - 1e-6 and warped[:, 1].min() >= -0.5 - 1e-6
    assert warped[:, 0].max() <= w - 0.5 + 1e-6 and warped[:, 1].max() <= h - 0.5 + 1e-6
    assert warped[:, 0].max() - warped[:, 0].min() > w - 1 and warped[:, 1].max() - warped[:, 1].min() > h - 1
    expected = 200 * abs(math.cos(math.radians(angle))) + 120 * abs(math.sin(math.radians(angle)))
    assert abs(w - expected) < 1.0


def test_right_angles_are_exact_pixel_rotations() -> None:
    """90° clockwise and 180° reproduce numpy's rotations pixel for pixel: no half-pixel slip."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 52, 3), dtype=np.uint8)
    seq = make_rotation_sequence(image, (90.0, 180.0))
    assert np.array_equal(seq.images[1], np.rot90(image, k=-1))
    assert np.array_equal(seq.images[2], np.rot90(image, k=2))
    assert [p["rotation"] for p in seq.params] == [90.0, 180.0]


def test_dots_land_where_the_homography_puts_them() -> None:
    """At an oblique angle (bilinear resampling) the intensity centroid of each dot is where H maps it."""
    sigma, spacing = 2.0, 24
    h, w = 150, 200
    centres = np.array([[x + 0.37, y + 0.71] for y in range(spacing, h - spacing, spacing) for x in range(spacing, w - spacing, spacing)])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    grey = sum(np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres)
    image = np.repeat(np.round(250 * grey).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    seq = make_rotation_sequence(image, (37.0,))
    target, hom = seq.images[1][..., 0].astype(np.float64), seq.homographies[0]
    errors = []
    for expected in warp_points(hom, centres):
        x0, y0 = (int(round(v)) for v in expected)
        py, px = np.mgrid[y0 - 8 : y0 + 9, x0 - 8 : x0 + 9]
        patch = target[py, px]
        errors.append(np.array([(patch * px).sum(), (patch * py).sum()]) / patch.sum() - expected)
    assert len(errors) >= 20 and np.abs(np.array(errors)).max() < 0.05


def test_benchmark_measures_sift_rotation_invariance(data_dir: Path, tmp_path: Path) -> None:
    """SIFT (oriented) keeps its accuracy at 90° and 180°; the written sequences carry the exact H."""
    out = tmp_path / "rot"
    results = rotation.main([
        "--images", str(data_dir / "lightglue_pairs"), "--max-photos", "1", "--max-side", "240",
        "--angles", "0", "90", "180", "--method", "sift", "--out", str(out),
        "--cache", str(tmp_path / "cache"), "--no-write",
    ])
    pairs = results["sift"]
    assert [r.target for r in pairs] == [2, 3, 4]
    mma3 = [r.mma[rotation.MMA_THRESHOLDS.index(3.0)] for r in pairs]
    assert min(mma3) > 0.8 and min(r.num_matches for r in pairs) > 50
    seq = read_sequence(next(out.iterdir()))
    assert len(seq.images) == 4 and np.allclose(seq.homographies[2][:2, :2], -np.eye(2))


def test_training_photos_are_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        rotation.main(["--images", str(data_dir / "train_natural"), "--method", "sift", "--out", str(tmp_path), "--no-write"])
