"""The homography benchmark: MMA, corner error, RANSAC, summaries, layouts, BENCHMARKS.md blocks."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import homography as bench
from hloc_hndesc.evaluation.datasets import list_sequences, warp_points
from hloc_hndesc.evaluation.homography import (
    PairResult,
    corner_error,
    estimate_homography,
    evaluate_method,
    evaluate_pair,
    image_corners,
    mma,
    reprojection_errors,
    select_sequences,
    summarize,
)
from hloc_hndesc.evaluation.matching import match_descriptors
from hloc_hndesc.evaluation.methods import parse_method
from hloc_hndesc.evaluation.synthetic import warp_image

H_TRUE = np.array([[0.9, 0.1, 12.0], [-0.05, 1.1, -4.0], [2e-4, -1e-4, 1.0]])


def test_mma_of_hand_made_matches() -> None:
    kpts0 = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 15.0], [70.0, 80.0], [5.0, 5.0], [60.0, 60.0]])
    offsets = np.array([0.0, 1.0, 1.5, 3.0, 7.5, 40.0])  # along x; 1.0 and 3.0 sit on thresholds
    kpts1 = warp_points(H_TRUE, kpts0) + np.stack([offsets, np.zeros(6)], 1)
    # shuffle the target keypoints; matches carry the correspondence
    order = np.array([3, 0, 5, 1, 4, 2])
    shuffled = np.empty_like(kpts1)
    shuffled[order] = kpts1
    matches = np.stack([np.arange(6), order], 1)
    errors = reprojection_errors(H_TRUE, kpts0, shuffled, matches)
    np.testing.assert_allclose(errors, offsets, atol=1e-9)
    expected = [2 / 6, 3 / 6, 4 / 6, 4 / 6, 4 / 6, 4 / 6, 4 / 6, 5 / 6, 5 / 6, 5 / 6]
    np.testing.assert_allclose(mma(errors), expected)
    np.testing.assert_array_equal(mma(np.zeros(0)), np.zeros(10))


def test_corner_error_known_values() -> None:
    size = (101, 51)
    np.testing.assert_array_equal(image_corners(size), [[0, 0], [100, 0], [100, 50], [0, 50]])
    shift = np.array([[1, 0, 3.0], [0, 1, 4.0], [0, 0, 1]])
    assert corner_error(shift @ H_TRUE, H_TRUE, size) == pytest.approx(5.0)
    stretched = np.diag([2.1, 2.0, 1.0])
    # corners move by 0.1 x: 0, 10, 10, 0 px
    assert corner_error(stretched, np.diag([2.0, 2.0, 1.0]), size) == pytest.approx(5.0)
    assert corner_error(None, H_TRUE, size) == float("inf")
    assert corner_error(H_TRUE, H_TRUE, size) == 0.0


def test_ransac_recovers_homography_despite_outliers_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    pts0 = rng.uniform(0, 400, (200, 2))
    pts1 = warp_points(H_TRUE, pts0)
    pts1[:60] = rng.uniform(0, 400, (60, 2))
    h = estimate_homography(pts0, pts1)
    assert corner_error(h, H_TRUE, (400, 400)) < 1e-6
    np.testing.assert_array_equal(h, estimate_homography(pts0, pts1))
    assert estimate_homography(pts0[:3], pts1[:3]) is None


def _features(kpts: np.ndarray, desc: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
    return {"keypoints": kpts, "descriptors": desc, "image_size": np.array(size)}


def test_evaluate_pair_uses_mutual_matches_and_zero_for_no_match() -> None:
    rng = np.random.default_rng(1)
    kpts0 = rng.uniform(0, 300, (50, 2))
    desc = rng.normal(size=(16, 50))
    desc /= np.linalg.norm(desc, axis=0)
    kpts1 = warp_points(H_TRUE, kpts0)
    kpts1[:10] += 20.0  # 10 wrong positions
    result = evaluate_pair(_features(kpts0, desc, (300, 300)), _features(kpts1, desc, (300, 300)), H_TRUE, (300, 300))
    assert result.num_matches == 50
    np.testing.assert_allclose(result.mma, 0.8)
    assert result.corner_error < 1e-6
    empty = _features(np.zeros((0, 2)), np.zeros((16, 0)), (300, 300))
    none = evaluate_pair(_features(kpts0, desc, (300, 300)), empty, H_TRUE, (300, 300))
    assert none.num_matches == 0 and np.all(none.mma == 0) and none.corner_error == float("inf")


def _pair(seq: str, kind: str, target: int, mma_value: float, err: float, n: tuple[int, int], m: int) -> PairResult:
    return PairResult(seq, kind, target, n, m, np.full(10, mma_value), err)


def test_summaries_per_kind_count_failures_and_images_once() -> None:
    results = [
        _pair("i_a", "i", 2, 1.0, 0.5, (100, 80), 40),
        _pair("i_a", "i", 3, 0.0, float("inf"), (100, 60), 0),
        _pair("v_b", "v", 2, 0.5, 4.0, (200, 150), 90),
    ]
    i, v, both = (summarize(results, k) for k in ("i", "v", "all"))
    assert i.num_pairs == 2 and i.mma[0] == pytest.approx(0.5)
    assert i.corner_accuracy == {1: 0.5, 3: 0.5, 5: 0.5}
    assert i.mean_corner_error == pytest.approx(0.5) and i.failures == 1
    assert i.median_corner_error == float("inf") and v.median_corner_error == pytest.approx(4.0)
    assert i.mean_keypoints == pytest.approx((100 + 80 + 60) / 3)
    assert v.corner_accuracy == {1: 0.0, 3: 0.0, 5: 1.0}
    assert both.num_pairs == 3 and both.mma[0] == pytest.approx(0.5)
    assert both.mean_matches == pytest.approx(130 / 3)
    assert summarize(results, "i", target=3).failures == 1
    assert summarize(results, "v", target=3) is None


def _write_layouts(photo: np.ndarray, root: Path) -> tuple[Path, Path, np.ndarray]:
    """The same pair in HPatches (``v_x/1.ppm, 2.ppm, H_1_2``) and Oxford (``img1.png, H1to2p``) layouts."""
    h, w = photo.shape[:2]
    c = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]])
    a = np.deg2rad(8)
    rot = np.array([[0.95 * np.cos(a), -0.95 * np.sin(a), 3.0], [0.95 * np.sin(a), 0.95 * np.cos(a), -2.0], [1e-4, 0, 1]])
    hom = c @ rot @ np.linalg.inv(c)
    hom /= hom[2, 2]
    target = np.round(warp_image(photo, hom)).clip(0, 255).astype(np.uint8)
    hp, ox = root / "hp" / "v_x", root / "ox" / "graf_like"
    for folder, names, hname in ((hp, ("1.ppm", "2.ppm"), "H_1_2"), (ox, ("img1.png", "img2.png"), "H1to2p")):
        folder.mkdir(parents=True)
        for name, image in zip(names, (photo, target)):
            cv2.imwrite(str(folder / name), image[..., ::-1])
        np.savetxt(folder / hname, hom, fmt="%.17g")
    return hp.parent, ox, hom


def test_hpatches_and_oxford_layouts_through_the_evaluator(photo_small: np.ndarray, tmp_path: Path) -> None:
    photo = np.round(photo_small * 255).astype(np.uint8)
    hp_root, ox_root, hom = _write_layouts(photo, tmp_path)
    sift = parse_method("sift")
    assert sift.matcher == "ratio"  # the benchmark overrides it with mutual NN
    hp = evaluate_method(sift, list_sequences(hp_root), hp_root, tmp_path / "cache")
    ox = evaluate_method(sift, list_sequences(ox_root), ox_root, tmp_path / "cache")
    assert [(r.sequence, r.kind, r.target) for r in hp] == [("v_x", "v", 2)]
    assert [(r.sequence, r.kind, r.target) for r in ox] == [("graf_like", "", 2)]
    assert hp[0].mma[2] > 0.7 and hp[0].corner_error < 1.0
    # same images, same ground truth: same numbers whatever the layout
    np.testing.assert_allclose(hp[0].mma, ox[0].mma)
    assert hp[0].num_matches == ox[0].num_matches
    # D2-Net protocol: mutual nearest neighbours even for SIFT
    from hloc_hndesc.evaluation.methods import feature_cache, read_features

    path = sift.extract(hp_root, ["v_x/1.ppm", "v_x/2.ppm"], feature_cache(tmp_path / "cache", hp_root))
    f0, f1 = read_features(path, "v_x/1.ppm"), read_features(path, "v_x/2.ppm")
    assert hp[0].num_matches == len(match_descriptors(f0["descriptors"], f1["descriptors"], "mutual"))
    assert hp[0].num_matches > len(match_descriptors(f0["descriptors"], f1["descriptors"], "ratio"))


def test_select_sequences_evenly_per_kind(tmp_path: Path) -> None:
    from hloc_hndesc.evaluation.datasets import HomographySequence

    seqs = [HomographySequence(f"{k}_{n:02d}", [], []) for k in "iv" for n in range(10)]
    picked = [s.name for s in select_sequences(seqs, 3)]
    assert picked == ["i_00", "i_04", "i_09", "v_00", "v_04", "v_09"]
    assert len(select_sequences(seqs, None)) == 20


def test_photo_and_sequence_subsets_share_one_rule(tmp_path: Path) -> None:
    from hloc_hndesc.evaluation.synthetic import list_photos

    for n in range(10):
        cv2.imwrite(str(tmp_path / f"{n:02d}.jpg"), np.full((8, 8, 3), 10 * n, np.uint8))
    assert [p.name for p in list_photos([tmp_path], 3)] == ["00.jpg", "04.jpg", "09.jpg"]
    assert len(list_photos([tmp_path], 0)) == 0 and len(list_photos([tmp_path], 20)) == 10


def test_benchmark_keeps_other_datasets_blocks(photo_small: np.ndarray, tmp_path: Path) -> None:
    photo = np.round(photo_small * 255).astype(np.uint8)
    hp_root, ox_root, _ = _write_layouts(photo, tmp_path)
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- begin other -->\nkeep me\n<!-- end other -->\n")
    common = ["--method", "sift", "--cache", str(tmp_path / "cache"), "--output", str(out)]
    bench.main(["--dataset", str(hp_root), "--name", "A", *common])
    bench.main(["--dataset", str(ox_root), "--name", "B", *common])
    text = out.read_text()
    assert "keep me" in text and "### A" in text and "### B" in text
    shutil.rmtree(ox_root)  # rerunning A must not need B's data nor drop its rows
    bench.main(["--dataset", str(hp_root), "--name", "A", *common])
    blocks = bench.existing_blocks(out)
    assert list(blocks) == ["A", "B"]
    assert "| sift (baseline) | v (viewpoint) |" in blocks["A"]
    assert "| sift (baseline) | all |" in blocks["B"]
    assert out.read_text().count("<!-- begin homography -->") == 1
