"""Dataset readers, matching, methods and the train/evaluation split of hloc_hndesc.evaluation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hloc_hndesc.configs import list_configs, load_config
from hloc_hndesc.evaluation.datasets import (
    DatasetError,
    list_sequences,
    read_scannet_pairs,
    read_sequence,
    read_strecha_scene,
    strecha_pose_pairs,
    to_corner,
    warp_points,
)
from hloc_hndesc.evaluation.matching import match_descriptors
from hloc_hndesc.evaluation.methods import feature_cache, parse_method, read_features
from hloc_hndesc.evaluation.splits import (
    EVALUATION_SOURCES,
    TRAINING_SOURCES,
    SplitError,
    check_not_training,
    check_training_dirs,
    find_overlap,
    is_training_path,
    list_source_images,
    training_dirs_of,
)
from hloc_hndesc.weights import shipped_weights


def _project(camera, points: np.ndarray) -> np.ndarray:
    """Strecha's stated projection x ~ K R^T (X - c), corner convention."""
    x = (camera.K @ camera.R.T @ (points - camera.center).T).T
    return x[:, :2] / x[:, 2:]


def test_strecha_relative_pose_satisfies_epipolar_constraint(data_dir: Path):
    cameras = read_strecha_scene(data_dir / "strecha" / "fountain-P11")
    assert len(cameras) == 11 and cameras[0].size == (1536, 1024)
    pairs = strecha_pose_pairs(data_dir / "strecha" / "fountain-P11")
    assert len(pairs) == 10 + 9
    rng = np.random.default_rng(0)
    centre = np.mean([c.center for c in cameras], 0)
    points = centre + rng.normal(scale=1.0, size=(50, 3)) + 5 * cameras[0].R[:, 2]
    pair = pairs[0]
    x0, x1 = _project(cameras[0], points), _project(cameras[1], points)
    tx = np.array([[0, -pair.t[2], pair.t[1]], [pair.t[2], 0, -pair.t[0]], [-pair.t[1], pair.t[0], 0]])
    f = np.linalg.inv(pair.K1).T @ tx @ pair.R @ np.linalg.inv(pair.K0)
    h0, h1 = np.c_[x0, np.ones(50)], np.c_[x1, np.ones(50)]
    line = h0 @ f.T
    distance = np.abs(np.sum(line * h1, 1)) / np.linalg.norm(line[:, :2], axis=1)
    assert distance.max() < 2e-3  # R is printed with 6 digits: not exactly orthonormal
    assert np.allclose(pair.R @ pair.R.T, np.eye(3), atol=1e-5)


def test_scannet_pairs_read(data_dir: Path):
    pairs = read_scannet_pairs(data_dir / "scannet_sample")
    assert len(pairs) == 10
    assert pairs[0].name0 == "scene0711_00_frame-001680.jpg"
    assert pairs[0].K0[0, 0] == pytest.approx(1163.45) and pairs[0].t[0] == pytest.approx(-1.51061)
    assert np.allclose(pairs[0].R @ pairs[0].R.T, np.eye(3), atol=1e-3)


def test_oxford_layout_read(data_dir: Path):
    (half,) = list_sequences(data_dir / "oxford_affine" / "graf_half")
    assert [p.name for p in half.images] == ["img1.png", "img2.png", "img3.png", "img4.png"]
    assert len(half.homographies) == 3 and half.kind == ""
    assert all(h[2, 2] == pytest.approx(1.0) for h in half.homographies)


def test_hpatches_layout_and_exclusions(tmp_path: Path):
    for name in ("v_a", "i_b", "v_talent"):
        folder = tmp_path / name
        folder.mkdir()
        for k in range(1, 4):
            cv2.imwrite(str(folder / f"{k}.ppm"), np.zeros((8, 8, 3), np.uint8))
        for k in (2, 3):
            np.savetxt(folder / f"H_1_{k}", np.diag([2.0, 2.0, 2.0]))
    sequences = list_sequences(tmp_path)
    assert [s.name for s in sequences] == ["i_b", "v_a"]
    assert [s.kind for s in sequences] == ["i", "v"]
    assert np.allclose(sequences[0].homographies[0], np.eye(3))


def test_bad_sequence_files_are_named(tmp_path: Path):
    folder = tmp_path / "v_bad"
    folder.mkdir()
    cv2.imwrite(str(folder / "1.ppm"), np.zeros((8, 8, 3), np.uint8))
    (folder / "H_1_2").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(DatasetError, match="H_1_2"):
        read_sequence(folder)
    (folder / "H_1_2").write_text("1 0 0 0 1 0 0 0 1")
    with pytest.raises(DatasetError, match="no image 2"):
        read_sequence(folder)
    with pytest.raises(DatasetError, match="no HPatches"):
        list_sequences(tmp_path / "v_bad" / "..", exclude=("v_bad",))


def test_warp_points_and_conventions():
    h = np.array([[2.0, 0, 1], [0, 2, -1], [0, 0, 1]])
    assert np.allclose(warp_points(h, [[0, 0], [1, 2]]), [[1, -1], [3, 3]])
    assert np.allclose(to_corner(np.zeros((1, 2))), 0.5)


def _brute_force(d0: np.ndarray, d1: np.ndarray, ratio: float | None) -> set[tuple[int, int]]:
    dist = np.linalg.norm(d0.T[:, None] - d1.T[None], axis=2)
    out = set()
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i])
        j = order[0]
        if np.argmin(dist[:, j]) != i:
            continue
        if ratio is not None and dist[i, j] > ratio * dist[i, order[1]]:
            continue
        out.add((i, int(j)))
    return out


@pytest.mark.parametrize("matcher,ratio", [("mutual", None), ("ratio", 0.8), ("ratio", 0.95)])
def test_matching_equals_brute_force(matcher: str, ratio: float | None):
    rng = np.random.default_rng(1)
    d0 = rng.normal(size=(16, 60))
    d1 = np.c_[d0[:, :30] + 0.3 * rng.normal(size=(16, 30)), rng.normal(size=(16, 40))]
    d0, d1 = d0 / np.linalg.norm(d0, axis=0), d1 / np.linalg.norm(d1, axis=0)
    got = match_descriptors(d0, d1, matcher, ratio or 0.8)
    assert {tuple(m) for m in got.tolist()} == _brute_force(d0, d1, ratio)
    assert 0 < len(got) <= 60


def test_matching_edge_cases():
    assert match_descriptors(np.zeros((8, 0)), np.ones((8, 3))).shape == (0, 2)
    with pytest.raises(ValueError, match="same D"):
        match_descriptors(np.zeros((8, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="unknown matcher"):
        match_descriptors(np.zeros((8, 2)), np.ones((8, 3)), "nope")


def test_parse_method(tmp_path: Path):
    sift = parse_method("sift")
    assert sift.matcher == "ratio" and sift.weights is None
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    r2d2 = parse_method(f"hndesc-r2d2={weights}")
    assert r2d2.matcher == "mutual" and r2d2.label == "hndesc-r2d2 (w)"
    assert r2d2.key != r2d2.with_resize(640).key and "w" in r2d2.key.split("-")[-1]
    assert r2d2.hloc_conf()["model"]["weights"] == str(weights)
    with pytest.raises(KeyError, match="available"):
        parse_method("nope")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        parse_method(f"hndesc-r2d2={tmp_path / 'missing.pth'}")
    same = parse_method("sift-hynet-kpts@mutual")
    assert same.matcher == "mutual" and same.label == "sift-hynet-kpts [mutual]"
    assert same.key == parse_method("sift-hynet-kpts").key  # one feature cache for both matchers
    assert parse_method(f"hndesc-r2d2={weights}@ratio").matcher == "ratio"
    shipped = shipped_weights("hynet")  # shipped weights are keyed by their file, as any other
    assert parse_method("hynet").key == parse_method(f"hynet={shipped}").key
    assert parse_method("hynet").key != parse_method(f"hynet={weights}").key
    assert parse_method("sift@ratio").label == "sift"
    with pytest.raises(ValueError, match="unknown matcher"):
        parse_method("sift@nope")


def test_sift_method_extracts_and_matches_graf(data_dir: Path, tmp_path: Path):
    (graf,) = list_sequences(data_dir / "oxford_affine" / "graf_half")
    method = parse_method("sift")
    names = [p.name for p in graf.images[:2]]
    path = method.extract(graf.images[0].parent, names, feature_cache(tmp_path, graf.images[0].parent))
    f0, f1 = read_features(path, names[0]), read_features(path, names[1])
    matches = method.match(f0, f1)
    error = np.linalg.norm(warp_points(graf.homographies[0], f0["keypoints"][matches[:, 0]]) - f1["keypoints"][matches[:, 1]], axis=1)
    assert len(matches) > 100 and np.median(error) < 1.5
    assert f0["keypoints"].dtype == np.float32


def test_training_and_evaluation_photos_are_disjoint(data_dir: Path):
    training = list_source_images(data_dir, TRAINING_SOURCES)
    evaluation = list_source_images(data_dir, EVALUATION_SOURCES)
    assert len(training) >= 400 and len(evaluation) >= 80
    assert find_overlap(training, evaluation) == []


def test_overlap_check_catches_a_resized_reencoded_copy(data_dir: Path, tmp_path: Path):
    source = sorted((data_dir / "strecha" / "fountain-P11" / "images").glob("*.jpg"))[3]
    image = cv2.imread(str(source))
    copy = tmp_path / "copy.jpg"
    cv2.imwrite(str(copy), cv2.resize(image, None, fx=0.37, fy=0.37, interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 60])
    other = sorted((data_dir / "strecha" / "fountain-P11" / "images").glob("*.jpg"))[0]
    found = find_overlap([copy, other], [source])
    assert [(a.name, b.name) for a, b, _ in found] == [("copy.jpg", source.name)]


def test_split_guards(data_dir: Path):
    check_not_training([data_dir / "strecha" / "fountain-P11" / "images" / "0000.jpg"])
    with pytest.raises(SplitError, match="training photo"):
        check_not_training([data_dir / "train_natural" / "urban100" / "img_001.jpg"])
    check_training_dirs([data_dir / "train_natural" / "urban100"])
    check_training_dirs([data_dir.parent / "my_own_photos"])  # users train on their own folders
    with pytest.raises(SplitError, match="never come from the evaluation"):
        check_training_dirs([data_dir / "sacre_coeur"])
    with pytest.raises(SplitError, match="'strecha'"):
        check_training_dirs([data_dir / "strecha" / "fountain-P11" / "images"])
    assert training_dirs_of({"data": {"image_dirs": ["a", "b"]}}) == ["a", "b"]


def test_shipped_configs_train_only_on_training_photos(data_dir: Path):
    """Every shipped training config reads existing training folders only (paths relative to the repo root)."""
    root = Path(__file__).resolve().parents[1]
    checked = {}
    for name in list_configs():
        dirs = [root / d if not Path(d).is_absolute() else Path(d) for d in training_dirs_of(load_config(name))]
        check_training_dirs(dirs)
        assert all(is_training_path(d) for d in dirs), f"{name}: shipped configs train on {dirs}"
        if data_dir.resolve() == (root.parent / "shared" / "data").resolve():
            assert all(d.is_dir() for d in dirs), f"{name}: missing training folder in {dirs}"
        checked[name] = dirs
    assert checked["train/stylizer_ae"]


def test_feature_cache_reextracts_changed_images(data_dir: Path, tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    source = sorted((data_dir / "oxford_affine" / "graf_half").glob("img*.png"))
    cv2.imwrite(str(images / "a.png"), cv2.imread(str(source[0])))
    method = parse_method("sift")
    path = method.extract(images, ["a.png"], tmp_path / "cache")
    first = read_features(path, "a.png")["keypoints"]
    assert np.array_equal(read_features(method.extract(images, ["a.png"], tmp_path / "cache"), "a.png")["keypoints"], first)
    cv2.imwrite(str(images / "a.png"), cv2.imread(str(source[2])))
    second = read_features(method.extract(images, ["a.png"], tmp_path / "cache"), "a.png")["keypoints"]
    assert second.shape != first.shape or not np.array_equal(second, first)
