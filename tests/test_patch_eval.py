"""Patch verification / retrieval evaluation (hloc_hndesc.evaluation.patches)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from kornia.feature import extract_patches_from_pyramid

from conftest import load_photo, random_checkpoint
from hloc_hndesc.evaluation.datasets import list_sequences
from hloc_hndesc.evaluation.patches import (
    JITTER_LEVELS,
    PatchPairs,
    apply_jitter,
    build_patch_pairs,
    cut_target_patches,
    describe_patches,
    detect_references,
    disk_iou,
    evaluate_patch_descriptors,
    fpr_at_recall,
    homography_jacobian,
    raw_pixel_describer,
    retrieval_ap,
    sample_jitter,
    sample_protocol,
    select_reference_keypoints,
    sift_describer,
    suppress_overlaps,
    verification_ap,
)
from hloc_hndesc.models.hynet import build_hynet


def photo(data_dir: Path, index: int) -> np.ndarray:
    """A real grey photo, longer side 256 px, float32 in [0, 1]."""
    path = sorted((data_dir / "phototourism_sample" / "images").glob("*.jpg"))[index]
    return load_photo(path, 256, grayscale=True)


@pytest.fixture(scope="module")
def grey(data_dir: Path) -> np.ndarray:
    return photo(data_dir, 0)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]


def warp(image: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The image seen through ``h`` (reference -> target), pixel centres at integers."""
    return cv2.warpPerspective(image, h, image.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def rotation_scale(image: np.ndarray, degrees: float, scale: float) -> np.ndarray:
    h, w = image.shape
    return np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, scale), [0, 0, 1]])


def ncc(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    d = raw_pixel_describer()
    return (d(a) * d(b)).sum(1).numpy()


# ------------------------------------------------------------------ metrics


def test_fpr_at_95_hand_cases():
    pos = np.arange(1.0, 21.0)
    assert fpr_at_recall(pos, pos + 100) == 0.0
    assert fpr_at_recall(pos + 100, pos) == 1.0
    # threshold = 19th smallest positive (ceil(0.95 * 20)) = 19: negatives 0.5 and 18.5 pass.
    assert fpr_at_recall(pos, np.array([0.5, 18.5, 19.5, 25.0, 30.0])) == pytest.approx(0.4)
    # a tie with the threshold is accepted, so it counts as a false positive.
    assert fpr_at_recall(np.ones(4), np.array([1.0, 2.0])) == 0.5
    assert fpr_at_recall(pos, np.array([19.0])) == 1.0 and fpr_at_recall(pos, np.array([19.01])) == 0.0


def test_verification_and_retrieval_ap_hand_cases():
    assert verification_ap(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    # ranking pos 1, neg 2, pos 3: precisions 1 and 2/3.
    assert verification_ap(np.array([1.0, 3.0]), np.array([2.0])) == pytest.approx((1 + 2 / 3) / 2)
    assert verification_ap(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # ties: the negative ranks first.
    assert verification_ap(np.array([1.0]), np.array([1.0])) == 0.5
    ap = retrieval_ap(np.array([0.1, 0.5, 0.3]), np.array([[0.2, 0.3], [0.1, 0.2], [0.3, 0.9]]))
    np.testing.assert_allclose(ap, [1.0, 1 / 3, 1 / 2])


def test_evaluate_perfect_and_constant_descriptors():
    """Through the whole protocol: exact descriptors -> FPR 0, APs 1; constant -> FPR 1, AP 1/N."""
    r, per_pair = 16, 10
    ref_index = np.concatenate([np.arange(per_pair), np.arange(per_pair), per_pair + np.arange(per_pair - 4)])
    pair = np.repeat([0, 1, 2], [per_pair, per_pair, per_pair - 4])
    sequence = np.repeat([0, 0, 1], [per_pair, per_pair, per_pair - 4])
    pairs = PatchPairs(
        reference=torch.zeros(r, 1, 32, 32),
        target=torch.zeros(len(ref_index), 1, 32, 32),
        ref_index=ref_index,
        pair=pair,
        sequence=sequence,
        ref_sequence=np.repeat([0, 1], [per_pair, r - per_pair]),
        sequences=["i_a", "v_b"],
        groups=["i", "v"],
        pair_names=["i_a/1-2", "i_a/1-3", "v_b/1-2"],
        pair_sequence=np.array([0, 0, 1]),
    )
    protocol = sample_protocol(pairs, seed=3, num_distractors=4)
    ref_desc = torch.nn.functional.normalize(torch.randn(r, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    perfect = evaluate_patch_descriptors(pairs, protocol, ref_desc, ref_desc[ref_index])
    assert set(perfect) == {"i", "v", "all"}
    for m in perfect.values():
        assert m.fpr95 == 0.0 and m.verification_ap == 1.0 and m.retrieval_map == 1.0
    assert perfect["all"].positives == len(ref_index) == perfect["all"].negatives
    assert perfect["i"].positives == 2 * per_pair
    constant = evaluate_patch_descriptors(pairs, protocol, torch.ones(r, 8), torch.ones(len(ref_index), 8))
    assert constant["all"].fpr95 == 1.0
    # database of pair 0: its 10 targets + 4 distractors; of pair 2: 6 + 4.
    assert constant["i"].retrieval_map == pytest.approx(1 / 14)
    assert constant["v"].retrieval_map == pytest.approx(1 / 10)
    with pytest.raises(ValueError, match="do not match"):
        evaluate_patch_descriptors(pairs, protocol, ref_desc[:3], ref_desc[ref_index])


# ------------------------------------------------------------------ geometry


def test_homography_jacobian_matches_finite_differences():
    h = np.array([[0.76, -0.30, 112.8], [0.33, 1.01, -38.5], [6.9e-4, -2.9e-5, 1.0]])
    pts = np.array([[10.0, 20.0], [200.0, 150.0], [390.0, 300.0]])
    eps = 1e-4

    def f(p: np.ndarray) -> np.ndarray:
        q = np.c_[p, np.ones(len(p))] @ h.T
        return q[:, :2] / q[:, 2:]

    numeric = np.stack([(f(pts + [eps, 0]) - f(pts - [eps, 0])) / (2 * eps), (f(pts + [0, eps]) - f(pts - [0, eps])) / (2 * eps)], axis=2)
    np.testing.assert_allclose(homography_jacobian(h, pts), numeric, rtol=1e-6, atol=1e-8)


def test_disk_iou_and_overlap_suppression():
    centres = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 0.0]])
    radii = np.array([2.0, 2.0, 2.0, 1.0, 4.0])
    iou = disk_iou(centres, radii)
    assert iou[0, 1] == pytest.approx(1.0) and iou[0, 3] == 0.0
    assert iou[0, 4] == pytest.approx(0.25)  # concentric, area ratio 1/4
    # two unit... radius-2 disks 1 apart: lens area 2 r^2 acos(d / 2r) - d/2 sqrt(4 r^2 - d^2)
    lens = 2 * 4 * math.acos(1 / 4) - 0.5 * math.sqrt(16 - 1)
    assert iou[0, 2] == pytest.approx(lens / (8 * math.pi - lens))
    keep = suppress_overlaps(centres, radii, np.array([1.0, 2.0, 0.5, 0.1, 3.0]), max_overlap=0.5)
    # 1 beats 0 (IoU 1) and 2 (IoU ~0.68); 3 and 4 overlap nobody above 0.5.
    assert keep.tolist() == [False, True, False, True, True]


def test_jacobian_transfer_cuts_the_same_content(grey):
    """Rotation 35 deg + scale 0.7: target patches equal reference patches up to interpolation."""
    h = rotation_scale(grey, 35.0, 0.7)
    target = as_tensor(warp(grey, h))
    feats = select_reference_keypoints(as_tensor(grey), max_keypoints=150)
    assert len(feats["keypoints"]) > 40
    ref = describe_patches(lambda x: x, _reference_patches(grey, feats))
    patches, keep = cut_target_patches(target, feats["lafs"], h)
    assert len(keep) > 40
    scores = ncc(ref[keep], patches)
    assert np.median(scores) > 0.95 and np.percentile(scores, 10) > 0.85
    # control: the same centres without the Jacobian (frame not rotated nor scaled) differ.
    naive = feats["lafs"].clone()
    naive[0, :, :, 2] = torch.from_numpy(cv2.perspectiveTransform(feats["lafs"][0, :, :, 2].numpy()[None].astype(np.float64), h)[0]).float()
    naive_patches = extract_patches_from_pyramid(target, naive[:, keep], PS=32)[0]
    assert np.median(ncc(ref[keep], naive_patches)) < 0.6


def square_iou(jitter: np.ndarray, grid: int = 121) -> np.ndarray:
    """IoU of the unit square [-1, 1]^2 and its images under (N, 2, 3) jitters, on a grid."""
    g = np.linspace(-2, 2, grid)
    points = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    unit = (np.abs(points) <= 1).all(1)
    local = np.einsum("nij,ngj->ngi", np.linalg.inv(jitter[:, :, :2]), points[None] - jitter[:, None, :, 2])
    inside = (np.abs(local) <= 1).all(-1)
    return (inside & unit).sum(1) / (inside | unit).sum(1)


@pytest.mark.parametrize("level,median", [("easy", 0.85), ("hard", 0.72)])
def test_jitter_levels_match_hpatches_overlaps(level, median):
    jitter = sample_jitter(400, level, np.random.default_rng(0))
    assert np.median(square_iou(jitter)) == pytest.approx(median, abs=0.03)
    rotation, log_scale, shift = JITTER_LEVELS[level]
    assert np.all(np.abs(jitter[:, :, 2]) <= shift)
    det = np.linalg.det(jitter[:, :, :2])
    assert np.all((det >= np.exp(-2 * log_scale) - 1e-9) & (det <= np.exp(2 * log_scale) + 1e-9))
    none = sample_jitter(5, "none", np.random.default_rng(0))
    assert np.allclose(none, np.tile(np.eye(2, 3), (5, 1, 1)))
    with pytest.raises(ValueError, match="unknown jitter level"):
        sample_jitter(1, "tough", np.random.default_rng(0))


def test_apply_jitter_composes_in_the_frame():
    lafs = torch.tensor([[[[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]]]])
    rot90 = np.array([[[0.0, -1.0, 0.5], [1.0, 0.0, 0.0]]])  # rotate the frame, shift half a half-side in x
    out = apply_jitter(lafs, rot90)
    expected = torch.tensor([[[[0.0, -2.0, 11.0], [2.0, 0.0, 20.0]]]])
    assert torch.allclose(out, expected)


def _reference_patches(grey: np.ndarray, feats: dict) -> torch.Tensor:
    from hloc_hndesc.features.hynet import extract_patches

    return extract_patches(as_tensor(grey), feats["keypoints"], feats["scales"], feats["oris"])


def test_points_outside_image_k_are_dropped(grey):
    """A translation by -tx: frames that leave the image are dropped, the rest are identical."""
    height, width = grey.shape
    tx = 8 * (width // 24)  # a multiple of 8: pyramid levels 0-3 shift by whole pixels
    shifted = np.zeros_like(grey)
    shifted[:, : width - tx] = grey[:, tx:]
    h = np.array([[1.0, 0, -tx], [0, 1, 0], [0, 0, 1]])
    feats = select_reference_keypoints(as_tensor(grey), max_keypoints=150)
    patches, keep = cut_target_patches(as_tensor(shifted), feats["lafs"], h)
    # expected, from the keypoints alone: the rotated square of half-side 6 sigma stays in x >= 0
    # (y is unchanged and was inside the reference).
    theta = np.deg2rad(feats["oris"].numpy().astype(np.float64))
    reach = 6.0 * feats["scales"].numpy() * (np.abs(np.cos(theta)) + np.abs(np.sin(theta)))
    expected = np.nonzero(feats["keypoints"].numpy()[:, 0] - tx - reach >= -1e-3)[0]
    margin = np.abs(feats["keypoints"].numpy()[:, 0] - tx - reach) > 1e-2
    assert set(keep.numpy()[margin[keep.numpy()]]) == set(expected[margin[expected]])
    assert 0 < len(keep) < len(feats["keypoints"])
    ref = _reference_patches(grey, feats)[keep]
    assert torch.allclose(patches, ref, atol=1e-4)
    # a homography sending every point behind the camera keeps nothing.
    _, none = cut_target_patches(as_tensor(shifted), feats["lafs"], np.diag([1.0, 1.0, -1.0]))
    assert len(none) == 0


# ------------------------------------------------------------------ sequences and protocol


@pytest.fixture(scope="module")
def sequence_root(data_dir, tmp_path_factory) -> Path:
    """HPatches-layout sequences of two real photos: i_first (illumination: identity
    homographies, gain change), v_first (the same scene, rotation + zoom) and v_second
    (another scene: rotation + zoom, perspective)."""
    root = tmp_path_factory.mktemp("sequences")
    first, second = photo(data_dir, 0), photo(data_dir, 5)
    for name, grey, homographies, gains in [
        ("i_first", first, [np.eye(3), np.eye(3)], [0.6, 1.3]),
        ("v_first", first, [rotation_scale(first, -15, 0.9)], [1.0]),
        ("v_second", second, [rotation_scale(second, 20, 1.15), np.array([[0.9, 0.1, 10], [-0.05, 1.0, 5], [2e-4, 1e-4, 1.0]])], [1.0, 1.0]),
    ]:
        folder = root / name
        folder.mkdir()
        cv2.imwrite(str(folder / "1.png"), np.round(grey * 255).astype(np.uint8))
        for k, (h, gain) in enumerate(zip(homographies, gains), start=2):
            image = np.clip(warp(grey, h) * gain, 0, 1)
            cv2.imwrite(str(folder / f"{k}.png"), np.round(image * 255).astype(np.uint8))
            np.savetxt(folder / f"H_1_{k}", h)
    return root


@pytest.fixture(scope="module")
def patch_pairs(sequence_root) -> PatchPairs:
    sequences = list_sequences(sequence_root)
    return build_patch_pairs(sequences, ["x"] * len(sequences), max_keypoints=60)


def test_patch_pairs_layout(patch_pairs):
    p = patch_pairs
    assert p.sequences == ["i_first", "v_first", "v_second"] and p.groups == ["i", "v", "v"]
    assert p.pair_names == ["i_first/1-2", "i_first/1-3", "v_first/1-2", "v_second/1-2", "v_second/1-3"]
    assert p.scene_of_sequences().tolist() == [0, 0, 1]
    assert p.reference.shape[1:] == (1, 32, 32) and p.target.shape == (len(p.ref_index), 1, 32, 32)
    assert np.all(np.diff(p.pair) >= 0) and np.all(np.diff(p.sequence) >= 0)
    assert np.array_equal(p.ref_sequence[p.ref_index], p.sequence)
    assert np.array_equal(p.pair_sequence[p.pair], p.sequence)
    # illumination pairs (identity H) keep every keypoint; the viewpoint pairs lose some.
    counts = np.bincount(p.pair, minlength=5)
    assert counts[0] == counts[1] == np.sum(p.ref_sequence == 0) > 30
    assert 0 < counts[3] < np.sum(p.ref_sequence == 2)
    # positives are the same content (NCC after the gain change of the i_ sequence too).
    assert np.median(ncc(p.reference[p.ref_index], p.target)) > 0.9


def test_jitter_is_seeded_and_reuses_the_references(sequence_root):
    sequences = list_sequences(sequence_root)[2:]
    references = detect_references(sequences, max_keypoints=30)
    easy = build_patch_pairs(sequences, ["x"], max_keypoints=30, jitter="easy", seed=4)
    again = build_patch_pairs(sequences, ["x"], jitter="easy", seed=4, references=references)
    exact = build_patch_pairs(sequences, ["x"], jitter="none", references=references)
    assert torch.equal(easy.target, again.target) and np.array_equal(easy.ref_index, again.ref_index)
    assert torch.equal(easy.reference, exact.reference)
    common = np.intersect1d(easy.ref_index[easy.pair == 0], exact.ref_index[exact.pair == 0])
    jittered = easy.target[easy.pair == 0][np.isin(easy.ref_index[easy.pair == 0], common)]
    straight = exact.target[exact.pair == 0][np.isin(exact.ref_index[exact.pair == 0], common)]
    # easy jitter moves the frame a little: still the same content, but not the same patch.
    assert len(common) > 10 and 0.6 < np.median(ncc(jittered, straight)) < 0.95
    with pytest.raises(ValueError, match="references"):
        build_patch_pairs(sequences, ["x"], references=references * 2)


def test_negatives_never_include_the_positive(patch_pairs):
    p = patch_pairs
    protocol = sample_protocol(p, seed=0, num_distractors=25)
    assert len(protocol.negative_target) == p.num_positives
    assert np.array_equal(protocol.negative_reference, p.ref_index[protocol.negative_of])
    # a negative's target patch never shows the query's keypoint.
    assert np.all(p.ref_index[protocol.negative_target] != protocol.negative_reference)
    same = protocol.negative_same_pair
    assert np.array_equal(p.pair[protocol.negative_target[same]], p.pair[protocol.negative_of[same]])
    # other-scene negatives and distractors: i_first and v_first show the same scene.
    scene = p.scene_of_sequences()
    assert np.all(scene[p.sequence[protocol.negative_target[~same]]] != scene[p.sequence[protocol.negative_of[~same]]])
    assert np.any(p.sequence[protocol.negative_target[~same]] == 2) and np.any(p.sequence[protocol.negative_target[~same]] < 2)
    assert 0.35 < same.mean() < 0.65
    for q, distractors in enumerate(protocol.distractors):
        assert len(distractors) == 25 == len(set(distractors.tolist()))
        assert np.all(scene[p.sequence[distractors]] != scene[p.pair_sequence[q]])
    again, other = sample_protocol(p, seed=0, num_distractors=25), sample_protocol(p, seed=1, num_distractors=25)
    assert np.array_equal(again.negative_target, protocol.negative_target)
    assert not np.array_equal(other.negative_target, protocol.negative_target)
    # a single scene (i_first, v_first): every negative comes from the same pair, no distractor exists.
    first = p.sequence < 2
    single = PatchPairs(
        p.reference, p.target[first], p.ref_index[first], p.pair[first], p.sequence[first], p.ref_sequence,
        p.sequences[:2], p.groups[:2], p.pair_names[:3], p.pair_sequence[:3],
    )
    alone = sample_protocol(single, seed=0)
    assert alone.negative_same_pair.all() and len(alone.negative_target) == single.num_positives
    assert np.all(single.ref_index[alone.negative_target] != alone.negative_reference)
    assert all(len(d) == 0 for d in alone.distractors)


def test_sift_separates_positives_from_negatives(patch_pairs):
    """The metric discriminates: SIFT beats a descriptor of shuffled patches by far."""
    p = patch_pairs
    protocol = sample_protocol(p, seed=0, num_distractors=50)
    sift = sift_describer()
    ref, tgt = describe_patches(sift, p.reference), describe_patches(sift, p.target)
    good = evaluate_patch_descriptors(p, protocol, ref, tgt)["all"]
    shuffled = evaluate_patch_descriptors(p, protocol, ref, tgt[torch.randperm(len(tgt), generator=torch.Generator().manual_seed(0))])["all"]
    assert good.fpr95 < 0.2 and good.retrieval_map > 0.8
    assert shuffled.fpr95 > 0.8 and shuffled.retrieval_map < 0.2


# ------------------------------------------------------------------ the benchmark's rows


def test_benchmark_rows_load_the_given_hynet(tmp_path):
    """``--hynet WEIGHTS`` loads the checkpoint through load_weights; the control is seeded."""
    from benchmarks.patch_verification import describers, parse_args

    weights = random_checkpoint("hynet", tmp_path / "hynet.pth", seed=7)
    rows = dict(describers(parse_args(["--sequences", "x", "--hynet", str(weights)])))
    assert list(rows)[:2] == ["SIFT (kornia SIFTDescriptor), baseline", "RootSIFT (kornia SIFTDescriptor)"]
    assert "HyNet (hynet.pth)" in rows and "raw pixels (normalised), floor" in rows
    patches = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    expected = build_hynet().eval()(patches)
    assert torch.allclose(describe_patches(rows["HyNet (hynet.pth)"], patches), expected, atol=1e-6)
    control = [label for label in rows if label.startswith("HyNet, random init (seed 0)")]
    again = dict(describers(parse_args(["--sequences", "x"])))
    assert torch.equal(describe_patches(rows[control[0]], patches), describe_patches(again[control[0]], patches))
    assert not torch.allclose(describe_patches(rows[control[0]], patches), expected, atol=1e-3)
