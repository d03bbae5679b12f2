"""Localisation evaluation: pose errors and recall, the split, the ground-truth reference model,
hloc's query/result formats, synthetic-night queries, and a small real hloc run.

The hloc run skips when hloc is absent (it is not on PyPI; CI has none).
"""

from __future__ import annotations

import importlib.util

import cv2
import h5py
import numpy as np
import pycolmap
import pytest

from hloc_hndesc.evaluation.datasets import read_strecha_scene
from hloc_hndesc.evaluation.localization import (
    QueryResult,
    evaluate,
    exhaustive_pairs,
    neighbours_on_both_sides,
    pinhole_camera,
    pose_errors,
    pose_recall,
    read_poses,
    reference_from_ground_truth,
    rescale_camera,
    split_database_queries,
    write_night_queries,
    write_query_list,
)


def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def pose_with_center(r: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cam_from_world`` (R, t) of a camera with rotation ``r`` (cam from world) and centre ``center``."""
    return r, -r @ center


@pytest.fixture(scope="module")
def herz_jesu(data_dir):
    scene = data_dir / "strecha" / "Herz-Jesu-P25"
    if not scene.is_dir():
        pytest.skip(f"{scene} not found")
    return scene


# --------------------------------------------------------------------------- metrics


def test_pose_errors_and_recall_on_hand_made_poses():
    gt = {f"q{i}": pose_with_center(np.eye(3), np.zeros(3)) for i in range(5)}
    # (centre offset in m, rotation in deg) -> expected thresholds passed
    estimates = {
        "q0": (np.array([0.1, 0.0, 0.0]), 1.0),  # all three
        "q1": (np.array([0.0, 0.3, 0.0]), 1.0),  # (0.5, 5) and (5, 10)
        "q2": (np.array([0.0, 0.0, 0.2]), 3.0),  # (0.5, 5) and (5, 10): 3 deg > 2
        "q3": (np.array([3.0, 4.0, 0.0]), 6.0),  # 5 m is not < 5 m: none
        "q4": (np.array([0.0, 0.0, 0.0]), 0.0),  # perfect pose, but PnP failed
    }
    results = {}
    for name, (center, angle) in estimates.items():
        r, t = pose_with_center(rotation_z(angle), center)
        dt, dr = pose_errors(r, t, *gt[name])
        assert dt == pytest.approx(np.linalg.norm(center), abs=1e-12)
        assert dr == pytest.approx(angle, abs=1e-9)
        results[name] = QueryResult(name, r, t, num_inliers=0 if name == "q4" else 100)
    summary = evaluate(results, gt)
    np.testing.assert_allclose(summary.recall, [1 / 5, 3 / 5, 3 / 5])
    assert summary.num_queries == 5 and summary.num_failed == 1
    assert summary.median_position_error == pytest.approx(0.3)
    assert summary.median_rotation_error == pytest.approx(3.0)
    assert np.isnan(results["q4"].position_error)  # failures are not scored
    # a query missing from the results also counts as a failure
    del results["q0"]
    assert evaluate(results, gt).recall[0] == 0 and evaluate(results, gt).num_failed == 2
    np.testing.assert_allclose(pose_recall([0.1, np.inf], [1.0, 180.0], [(0.25, 2.0)]), [0.5])
    with pytest.raises(ValueError, match="position errors"):
        pose_recall([0.1, 0.2], [1.0])


def test_rotation_error_is_accurate_for_small_angles_with_rounded_ground_truth():
    r_gt = rotation_z(30.0) @ np.array([[1, 0, 0], [0, np.cos(0.4), -np.sin(0.4)], [0, np.sin(0.4), np.cos(0.4)]])
    r_gt_file = np.round(r_gt, 6)  # like a Strecha .camera file: orthonormal to ~1e-6 only
    for angle in (0.0, 0.005, 0.03, 0.5):
        _, dr = pose_errors(rotation_z(angle) @ r_gt, np.zeros(3), r_gt_file, np.zeros(3))
        assert dr == pytest.approx(angle, abs=2e-4)


# --------------------------------------------------------------------------- split and reference


def test_split_is_disjoint_deterministic_and_surrounded(herz_jesu):
    cameras = read_strecha_scene(herz_jesu)
    names = [c.name for c in cameras]
    database, queries = split_database_queries(names)
    assert queries == ["0002.jpg", "0005.jpg", "0008.jpg", "0011.jpg", "0014.jpg", "0017.jpg", "0020.jpg", "0023.jpg"]
    assert not set(database) & set(queries) and sorted(database + queries) == sorted(names)
    assert split_database_queries(list(reversed(names))) == (database, queries)
    for query in queries:  # database neighbours left and right within 5 m (baselines ~1-5 m)
        assert neighbours_on_both_sides(cameras, database, query, radius=5.0), query
    # the other offsets put a query at an end of one of the two camera passes
    for offset, end in ((0, "0000.jpg"), (1, "0013.jpg")):
        other_database, other_queries = split_database_queries(names, 3, offset)
        assert end in other_queries
        assert not neighbours_on_both_sides(cameras, other_database, end, radius=5.0)
    with pytest.raises(ValueError, match="step"):
        split_database_queries(names, step=1)


def test_reference_from_ground_truth_projects_like_strecha(herz_jesu):
    cameras = read_strecha_scene(herz_jesu)[:3]
    cameras = cameras[:2] + [rescale_camera(cameras[2], 0.375)]
    reference = reference_from_ground_truth(cameras)
    assert reference.num_images() == 3 and reference.num_points3D() == 0
    rng = np.random.default_rng(0)
    for image_id, cam in enumerate(cameras, 1):
        image = reference.images[image_id]
        camera = reference.cameras[image.camera_id]
        assert image.name == cam.name and image.has_pose
        assert camera.model.name == "PINHOLE" and (camera.width, camera.height) == cam.size
        np.testing.assert_allclose(image.projection_center(), cam.center, atol=1e-5)
        # points 8-15 m in front of the camera, spread over the image
        rays = np.concatenate([rng.uniform(-0.4, 0.4, (20, 2)), np.ones((20, 1))], 1)
        points = cam.center + (rays * rng.uniform(8, 15, (20, 1))) @ cam.R.T
        expected = (cam.K @ cam.R.T @ (points - cam.center).T).T
        expected = expected[:, :2] / expected[:, 2:]
        in_cam = np.stack([image.cam_from_world() * p for p in points])
        projected = camera.img_from_cam(np.ascontiguousarray(in_cam))
        # 1e-2 px: the file's rotation is orthonormal to ~1e-6 only (COLMAP stores a unit quaternion)
        np.testing.assert_allclose(projected, expected, atol=1e-2)
    # the rescaled camera: corner convention, x' = s x
    full = read_strecha_scene(herz_jesu)[2]
    point = full.center + 12 * full.R[:, 2] + full.R[:, 0]
    x_full = full.K @ full.R.T @ (point - full.center)
    x_small = cameras[2].K @ cameras[2].R.T @ (point - full.center)
    np.testing.assert_allclose(x_small[:2] / x_small[2], 0.375 * x_full[:2] / x_full[2])
    assert cameras[2].size == (576, 384)
    with pytest.raises(ValueError, match="whole pixels"):
        rescale_camera(full, 1 / 3)  # 1024 / 3 is not a whole number of rows


# --------------------------------------------------------------------------- hloc formats


def test_query_list_pairs_and_poses_files(tmp_path, herz_jesu):
    cam = read_strecha_scene(herz_jesu)[0]
    path = write_query_list(tmp_path / "q.txt", {"a.jpg": pinhole_camera(cam)})
    name, model, w, h, *params = path.read_text().split()
    assert (name, model, int(w), int(h)) == ("a.jpg", "PINHOLE", 1536, 1024)
    np.testing.assert_allclose([float(p) for p in params], [cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]])
    assert exhaustive_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert exhaustive_pairs(["q"], ["a", "b"]) == [("q", "a"), ("q", "b")]
    # hloc's results line: name qw qx qy qz tx ty tz (cam_from_world)
    r = rotation_z(20.0)
    quat = pycolmap.Rotation3d(r).quat  # x y z w
    (tmp_path / "res.txt").write_text(f"a.jpg {quat[3]} {quat[0]} {quat[1]} {quat[2]} 1 2 3\n")
    rotation, t = read_poses(tmp_path / "res.txt")["a.jpg"]
    np.testing.assert_allclose(rotation, r, atol=1e-12)
    np.testing.assert_allclose(t, [1, 2, 3])
    (tmp_path / "bad.txt").write_text("a.jpg 1 0 0 0 1 2\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_poses(tmp_path / "bad.txt")


@pytest.mark.skipif(
    importlib.util.find_spec("hloc_hndesc.evaluation.synthetic") is None, reason="synthetic night module absent"
)
def test_night_queries_are_seeded_and_named_by_content(tmp_path, herz_jesu):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("0000.jpg", "0001.jpg"):
        small = cv2.resize(cv2.imread(str(herz_jesu / "images" / name)), (96, 64), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(images / name), small)
    folder, names = write_night_queries(images, ["0001.jpg", "0000.jpg"], tmp_path / "out", seed=3)
    assert names == {"0000.jpg": "0000.png", "0001.jpg": "0001.png"}
    first = {n: cv2.imread(str(folder / n)) for n in names.values()}
    day = cv2.imread(str(images / "0000.jpg")).astype(float)
    assert first["0000.png"].shape == (64, 96, 3) and first["0000.png"].mean() < 0.8 * day.mean()
    again, _ = write_night_queries(images, ["0000.jpg", "0001.jpg"], tmp_path / "out", seed=3)
    assert again == folder
    alone, _ = write_night_queries(images, ["0000.jpg"], tmp_path / "alone", seed=3)
    np.testing.assert_array_equal(cv2.imread(str(alone / "0000.png")), first["0000.png"])  # per-image generator
    other, _ = write_night_queries(images, ["0000.jpg", "0001.jpg"], tmp_path / "out", seed=4)
    assert other != folder and folder.name.startswith("night-s3-") and other.name.startswith("night-s4-")


# --------------------------------------------------------------------------- real hloc run


@pytest.mark.hloc
@pytest.mark.slow
def test_small_hloc_localisation_with_sift(tmp_path, herz_jesu):
    pytest.importorskip("hloc", reason="hloc is not installed (peer dependency, not on PyPI)")
    pytest.importorskip("hloc.localize_sfm", reason="hloc is installed but its localize_sfm does not import")
    from hloc_hndesc.evaluation.localization import localize, match_pairs, triangulate_reference
    from hloc_hndesc.files import write_pairs
    from hloc_hndesc.evaluation.methods import parse_method

    scale = 0.375  # 1536x1024 -> 576x384, exact in both directions
    cameras = {c.name: rescale_camera(c, scale) for c in read_strecha_scene(herz_jesu)[:6]}
    images = tmp_path / "images"
    images.mkdir()
    for name, cam in cameras.items():
        full = cv2.imread(str(herz_jesu / "images" / name))
        cv2.imwrite(str(images / name), cv2.resize(full, cam.size, interpolation=cv2.INTER_AREA))
    database, queries = split_database_queries(list(cameras), step=3, offset=1)
    assert queries == ["0001.jpg", "0004.jpg"] and len(database) == 4

    method = parse_method("sift")
    features = method.extract(images, sorted(cameras), tmp_path / "feats")
    db_pairs = write_pairs(tmp_path / "pairs-db.txt", exhaustive_pairs(database))
    db_matches = match_pairs(method.matcher, db_pairs, features, tmp_path / "matches-db.h5")
    reference = triangulate_reference(
        reference_from_ground_truth([cameras[n] for n in database]), tmp_path / "ref", images, db_pairs, features, db_matches
    )
    assert reference.num_points3D() > 200  # 427 measured
    for image in reference.images.values():  # triangulation keeps the ground-truth poses
        np.testing.assert_allclose(image.projection_center(), cameras[image.name].center, atol=1e-5)
    assert reference.compute_mean_reprojection_error() < 1.0

    loc_pairs = write_pairs(tmp_path / "pairs-loc.txt", exhaustive_pairs(queries, database))
    loc_matches = match_pairs(method.matcher, loc_pairs, features, tmp_path / "matches-loc.h5")
    results = localize(
        reference, {q: pinhole_camera(cameras[q]) for q in queries}, loc_pairs, features, loc_matches, tmp_path / "res.txt"
    )
    assert sorted(results) == queries and all(r.num_inliers > 50 for r in results.values())
    summary = evaluate(results, {q: cameras[q].cam_from_world for q in queries})
    assert summary.num_failed == 0
    np.testing.assert_allclose(summary.recall, [1.0, 1.0, 1.0])
    for result in results.values():
        assert result.position_error < 0.1 and result.rotation_error < 0.5


@pytest.mark.hloc
def test_reference_without_any_match_comes_back_without_points(tmp_path, herz_jesu):
    pytest.importorskip("hloc", reason="hloc is not installed (peer dependency, not on PyPI)")
    from hloc_hndesc.evaluation.localization import count_matches, triangulate_reference

    cameras = read_strecha_scene(herz_jesu)[:2]
    matches = tmp_path / "matches.h5"
    with h5py.File(matches, "w") as fd:
        fd.create_dataset(f"{cameras[0].name}/{cameras[1].name}/matches0", data=np.full(5, -1, np.int32))
    assert count_matches(matches) == 0
    reference = triangulate_reference(
        reference_from_ground_truth(cameras), tmp_path / "ref", herz_jesu / "images", tmp_path / "pairs.txt",
        tmp_path / "features.h5", matches,
    )
    assert reference.num_points3D() == 0 and reference.num_images() == 2
    assert not (tmp_path / "ref" / "sfm").exists()  # hloc's triangulation was not called
    with h5py.File(matches, "a") as fd:
        fd[f"{cameras[0].name}/{cameras[1].name}/matches0"][2] = 4
    assert count_matches(matches) == 1
