"""The synthetic HPatches-style sequence generator: exact ground truth, determinism, grading."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import make_sequences
from hloc_hndesc.evaluation.datasets import read_sequence, warp_points
from hloc_hndesc.evaluation.synthetic import (
    MAX_STRENGTH,
    MIN_OVERLAP,
    ROTATION_DEG,
    SEVERITY,
    TrainingPhotoError,
    generate_sequences,
    list_photos,
    load_photo,
    make_illumination_sequence,
    make_viewpoint_sequence,
    mean_abs_difference,
    minification,
    render_night,
    viewpoint_homography,
    warp_image,
)


@pytest.fixture(scope="module")
def photo_path(data_dir: Path) -> Path:
    return sorted((data_dir / "lightglue_pairs").glob("*.JPG"))[0]


@pytest.fixture(scope="module")
def photo(photo_path: Path) -> np.ndarray:
    return load_photo(photo_path, 200)


def dots_image(size: tuple[int, int], spacing: int = 24, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian dots at irrational sub-pixel positions, rendered analytically: (RGB uint8, centres)."""
    w, h = size
    gx, gy = np.meshgrid(np.arange(spacing, w - spacing, spacing), np.arange(spacing, h - spacing, spacing))
    centres = np.stack([gx.ravel() + 0.37, gy.ravel() + 0.71], 1) + np.sqrt(2) * 0.1 * np.arange(gx.size)[:, None] % 0.5
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.zeros((h, w))
    for cx, cy in centres:
        image += np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    grey = np.round(250 * image).clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), centres


def jacobian_at(h: np.ndarray, point: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Numerical 2x2 Jacobian of the homography at ``point``."""
    cols = [(warp_points(h, point + d) - warp_points(h, point - d))[0] / (2 * eps) for d in np.eye(2) * eps]
    return np.stack(cols, 1)


def test_ground_truth_matches_sampling_grid_to_1e3_px(photo: np.ndarray) -> None:
    """Warping coordinate ramps with the generator's warp gives, at every target pixel p, the
    source position it sampled; H (read back from the written file) must send it to p."""
    rng = np.random.default_rng(3)
    seq = make_viewpoint_sequence(photo, rng)
    h_, w_ = photo.shape[:2]
    ys, xs = np.mgrid[0:h_, 0:w_].astype(np.float64)
    ramps = np.stack([xs, ys], 2)
    targets = np.stack([xs.ravel(), ys.ravel()], 1)
    for k, hom in enumerate(seq.homographies, start=2):
        sampled = warp_image(ramps, hom).reshape(-1, 2)
        # independent: the source of every target pixel through datasets.warp_points and H^-1
        expected = warp_points(np.linalg.inv(hom), targets)
        margin = 8.0  # the anti-aliasing blur is exact on ramps away from the border
        inside = np.all((expected >= margin) & (expected <= np.array([w_ - 1, h_ - 1]) - margin), 1)
        assert inside.mean() > 0.2, f"image {k}: too little overlap to test"
        assert np.abs(sampled[inside] - expected[inside]).max() < 1e-3
        assert np.abs(warp_points(hom, sampled[inside]) - targets[inside]).max() < 1e-3
        outside = ~np.all((expected >= 0) & (expected <= np.array([w_ - 1, h_ - 1])), 1)
        assert np.all(sampled[outside] == 0), "pixels with no source must be black"


def test_written_files_agree_with_their_homographies(photo_path: Path, tmp_path: Path) -> None:
    """Images on disk are the reference warped by the H_1_k stored beside them."""
    folder = generate_sequences([photo_path], tmp_path, seed=5, max_side=160, kinds=("v",))[0]
    seq = read_sequence(folder)
    ref = cv2.imread(str(seq.images[0]))[..., ::-1]
    for path, hom in zip(seq.images[1:], seq.homographies):
        stored = cv2.imread(str(path))[..., ::-1].astype(np.int64)
        rerendered = np.round(warp_image(ref, hom)).clip(0, 255)
        diff = np.abs(stored - rerendered)
        assert diff.max() <= 1 and diff.mean() < 1e-3


def predicted_centroid(hom: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    """Intensity centroid, in the target, of a Gaussian dot of the source warped by ``hom``:
    numerical integration over the source (a warped image keeps values, so target area
    weighs each source point by |det J|)."""
    u = np.linspace(-6 * sigma, 6 * sigma, 121)
    xs, ys = np.meshgrid(u + centre[0], u + centre[1])
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    homog = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ hom.T
    weight = np.exp(-((pts - centre) ** 2).sum(1) / (2 * sigma**2)) / np.abs(homog[:, 2]) ** 3
    return (homog[:, :2] / homog[:, 2:] * weight[:, None]).sum(0) / weight.sum()


def test_dot_centroids_land_on_warped_centres() -> None:
    """End to end on image content: dots of known sub-pixel centres, through the generator's
    uint8 images, have their intensity centroids where H puts them (to 0.04 px; a 0.5 px
    convention slip, or H mismatching the images, would show)."""
    sigma = 2.0
    image, centres = dots_image((240, 180), sigma=sigma)
    seq = make_viewpoint_sequence(image, np.random.default_rng(11))
    radius = 9
    for target, hom in zip(seq.images[1:], seq.homographies):
        m = minification(hom, (240, 180))
        blur = 0.5 * math.sqrt(max(m * m - 1, 0.0))
        sigma_eff = math.hypot(sigma, blur if blur > 0.05 else 0.0)
        grey = target[..., 0].astype(np.float64)
        h, w = grey.shape
        errors = []
        for centre in centres:
            expected = predicted_centroid(hom, centre, sigma_eff)
            x0, y0 = (int(round(v)) for v in expected)
            if not (radius <= x0 < w - radius and radius <= y0 < h - radius):
                continue
            py, px = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
            patch = grey[py, px]
            errors.append(np.array([(patch * px).sum(), (patch * py).sum()]) / patch.sum() - expected)
        errors = np.array(errors)
        assert len(errors) >= 25
        assert np.abs(errors).max() < 0.04
        assert np.abs(errors.mean(0)).max() < 0.01


def test_same_seed_gives_byte_identical_files(photo_path: Path, tmp_path: Path) -> None:
    a = generate_sequences([photo_path], tmp_path / "a", seed=0, max_side=128)
    generate_sequences([photo_path], tmp_path / "b", seed=0, max_side=128)
    generate_sequences([photo_path], tmp_path / "c", seed=1, max_side=128)
    assert [f.name for f in a] == [f"i_{photo_path.stem}", f"v_{photo_path.stem}"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 11
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    differing = [f for f in files if (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()]
    assert len(differing) >= 15, "another seed must give other images and homographies"
    assert {f.name for f in files} >= {f"{k}.ppm" for k in range(1, 7)} | {f"H_1_{k}" for k in range(2, 7)}


def _rotation_tilt_scale(hom: np.ndarray, size: tuple[int, int]) -> tuple[float, float, float]:
    """In-plane rotation (deg), tilt (deg) and log2 scale read off H's Jacobian at the centre."""
    centre = np.array([[(size[0] - 1) / 2, (size[1] - 1) / 2]])
    u, s, vt = np.linalg.svd(jacobian_at(hom, centre))
    rot = u @ vt
    return math.degrees(math.atan2(rot[1, 0], rot[0, 0])), math.degrees(math.acos(s[1] / s[0])), math.log2(s[0])


def test_viewpoint_severity_grows_and_reaches_large_rotations() -> None:
    size = (320, 240)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        measured = [_rotation_tilt_scale(viewpoint_homography(size, g, rng)[0], size) for g in range(1, 6)]
        rotations = [abs(m[0]) for m in measured]
        tilts = [m[1] for m in measured]
        assert rotations == sorted(rotations) and tilts == sorted(tilts)
        assert rotations[0] <= ROTATION_DEG[0][1] + 1e-6
        assert rotations[-1] >= 90.0, "grade 5 must rotate well beyond 30 degrees"
        assert 5 - 1e-3 <= tilts[0] and tilts[-1] <= 55 + 1e-3


def test_viewpoint_keeps_overlap(photo: np.ndarray) -> None:
    ones = np.ones(photo.shape[:2])
    seq = make_viewpoint_sequence(photo, np.random.default_rng(2))
    for hom, params in zip(seq.homographies, seq.params):
        covered = (warp_image(ones, hom, antialias=False) > 0.5).mean()
        assert covered >= MIN_OVERLAP - 0.02
        assert params["seen"] >= MIN_OVERLAP and params["covered"] >= MIN_OVERLAP


def test_illumination_severity_grows_and_night_is_darker(photo: np.ndarray) -> None:
    for seed in range(2):
        seq = make_illumination_sequence(photo, np.random.default_rng(seed))
        assert all(np.array_equal(h, np.eye(3)) for h in seq.homographies)
        diffs = [mean_abs_difference(im, photo) for im in seq.images[1:5]]
        assert diffs == sorted(diffs) and diffs[0] > 1.0
        for d, params in zip(diffs, seq.params):
            assert abs(d - params["target"]) < 0.5 and 0 < params["strength"] <= MAX_STRENGTH
        # targets are the bands' fractions of one photo scale: their ratios stay in the bands' ratios
        ratio = diffs[3] / diffs[0]
        assert SEVERITY[3][0] / SEVERITY[0][1] - 0.1 <= ratio <= SEVERITY[3][1] / SEVERITY[0][0] + 0.1
        night = seq.images[5]
        assert night.mean() < 0.6 * photo.mean()
        assert night.shape == photo.shape and night.dtype == np.uint8


def test_render_night_is_darker_deterministic_and_checks_input(data_dir: Path) -> None:
    photos = list_photos([data_dir / "scannet_sample" / "images"])[:3] + list_photos([data_dir / "lightglue_pairs"])[:1]
    for path in photos:
        day = load_photo(path, 160)
        night = render_night(day, np.random.default_rng(0))
        luma = np.array([0.299, 0.587, 0.114])
        assert (night @ luma).mean() < 0.6 * (day @ luma).mean()
        assert np.array_equal(night, render_night(day, np.random.default_rng(0)))
        assert not np.array_equal(night, render_night(day, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="RGB uint8"):
        render_night(np.zeros((8, 8), np.uint8), np.random.default_rng(0))


def test_training_photos_are_refused(tmp_path: Path) -> None:
    training = tmp_path / "train_natural" / "urban100"
    training.mkdir(parents=True)
    photo = training / "img_001.jpg"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(TrainingPhotoError, match="train_natural"):
        generate_sequences([photo], tmp_path / "out")
    with pytest.raises(TrainingPhotoError, match="training photo"):
        list_photos([training])
    with pytest.raises(SystemExit):
        make_sequences.main(["--images", str(training), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_command_writes_sequences_and_their_record(data_dir: Path, tmp_path: Path) -> None:
    import json

    from hloc_hndesc.evaluation.datasets import list_sequences

    out = tmp_path / "seqs"
    folders = make_sequences.main(
        ["--images", str(data_dir / "lightglue_pairs"), "--out", str(out), "--max-side", "96", "--max-photos", "1"]
    )
    sequences = list_sequences(out)
    assert [s.name for s in sequences] == sorted(f.name for f in folders) and len(sequences) == 2
    assert all(len(s.images) == 6 and len(s.homographies) == 5 for s in sequences)
    record = json.loads((out / make_sequences.RECORD).read_text())
    assert record["seed"] == 0 and record["max_side"] == 96 and len(record["photos"]) == 1
    assert record["command"].startswith("python -m benchmarks.make_sequences --images")
