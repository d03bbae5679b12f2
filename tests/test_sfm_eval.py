"""SfM evaluation: similarity alignment, camera errors, reconstruction statistics, and one
small reconstruction through the real hloc (skipped without hloc)."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from hloc_hndesc.evaluation.sfm import (
    Poses,
    camera_errors,
    reconstruction_poses,
    reconstruction_stats,
    rotation_angles_deg,
    rotation_offset,
    umeyama,
)

HAS_HLOC = importlib.util.find_spec("hloc") is not None


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([_rotation(rng.normal(size=3), rng.uniform(5, 170)) for _ in range(n)])


def _scene(rng: np.random.Generator, n: int = 8) -> Poses:
    return Poses([f"{i:04d}.jpg" for i in range(n)], _random_rotations(rng, n), rng.uniform(-5, 5, (n, 3)))


def _estimate_of(gt: Poses, scale: float, rotation: np.ndarray, translation: np.ndarray, offset=np.eye(3)) -> Poses:
    """The reconstruction a similarity ``gt = s R x + t`` away, with a camera-side rotation offset."""
    centers = (gt.centers - translation) @ rotation / scale
    rotations = offset.T @ gt.rotations @ rotation
    return Poses(list(gt.names), rotations, centers)


def test_umeyama_recovers_known_similarity_and_agrees_with_pycolmap():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(20, 3))
    rotation, scale, translation = _rotation([1, 2, -1], 73.0), 2.7, np.array([4.0, -1.0, 0.5])
    target = scale * source @ rotation.T + translation
    sim = umeyama(source, target)
    assert sim.scale == pytest.approx(scale, rel=1e-10)
    np.testing.assert_allclose(sim.rotation, rotation, atol=1e-10)
    np.testing.assert_allclose(sim.translation, translation, atol=1e-10)
    np.testing.assert_allclose(sim.apply(source), target, atol=1e-9)
    noisy = target + rng.normal(scale=0.01, size=target.shape)
    ours, theirs = umeyama(source, noisy), pycolmap.estimate_sim3d(source, noisy)
    assert ours.scale == pytest.approx(theirs.scale, rel=1e-6)
    np.testing.assert_allclose(ours.rotation, theirs.rotation.matrix(), atol=1e-6)
    np.testing.assert_allclose(ours.translation, theirs.translation, atol=1e-6)


def test_umeyama_never_returns_a_reflection():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(10, 3))
    mirrored = source * np.array([1.0, 1.0, -1.0])
    sim = umeyama(source, mirrored)
    assert np.linalg.det(sim.rotation) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "points, message",
    [(np.zeros((2, 3)), "at least 3 points"), (np.outer(np.arange(5.0), [1, 2, 3]), "collinear")],
)
def test_umeyama_rejects_degenerate_input(points, message):
    with pytest.raises(ValueError, match=message):
        umeyama(points, points + 1)


def test_camera_errors_vanish_for_an_exact_similarity():
    rng = np.random.default_rng(2)
    gt = _scene(rng)
    est = _estimate_of(gt, 0.3, _rotation([0, 1, 1], -120), np.array([1.0, 2.0, 3.0]))
    errors = camera_errors(gt, est)
    assert errors.names == gt.names and errors.missing == []
    assert errors.similarity.scale == pytest.approx(0.3, rel=1e-9)
    np.testing.assert_allclose(errors.similarity.rotation, _rotation([0, 1, 1], -120), atol=1e-9)
    np.testing.assert_allclose(errors.center_errors, 0, atol=1e-9)
    np.testing.assert_allclose(errors.rotation_errors_raw, 0, atol=1e-5)
    np.testing.assert_allclose(errors.rotation_errors, 0, atol=1e-5)
    assert errors.offset_deg == pytest.approx(0, abs=1e-5)


def test_camera_errors_remove_a_known_common_offset_exactly():
    rng = np.random.default_rng(4)
    gt = _scene(rng)
    offset = _rotation([0.3, -1, 0.2], 0.45)
    est = _estimate_of(gt, 2.0, _rotation([1, 0, 0], 30), np.array([0.0, -3.0, 1.0]), offset)
    errors = camera_errors(gt, est)
    np.testing.assert_allclose(errors.rotation_errors_raw, 0.45, atol=1e-6)
    np.testing.assert_allclose(errors.rotation_errors, 0, atol=1e-5)
    np.testing.assert_allclose(errors.offset, offset, atol=1e-9)
    assert errors.offset_deg == pytest.approx(0.45, abs=1e-6)
    np.testing.assert_allclose(errors.center_errors, 0, atol=1e-9)
    summary = errors.summary()
    assert summary["rotation_raw_median"] == pytest.approx(0.45, abs=1e-6)
    assert summary["rotation_max"] == pytest.approx(0, abs=1e-5)


def test_camera_errors_measure_a_displaced_camera_and_list_missing_ones():
    rng = np.random.default_rng(5)
    gt = _scene(rng, 40)
    est = _estimate_of(gt, 1.0, np.eye(3), np.zeros(3))
    est.centers[3] += [0.0, 0.0, 1.0]
    est.rotations[3] = _rotation([1, 0, 0], 10) @ est.rotations[3]
    kept = [n for i, n in enumerate(gt.names) if i != 7]
    errors = camera_errors(gt, est.subset(kept))
    assert errors.missing == [gt.names[7]]
    # the least-squares alignment spreads the 1 m displacement a little over all cameras
    assert errors.center_errors.argmax() == kept.index(gt.names[3])
    assert 0.85 < errors.center_errors.max() < 1.0
    assert np.median(errors.center_errors) < 0.05
    assert errors.rotation_errors.argmax() == kept.index(gt.names[3])
    assert 8.0 < errors.rotation_errors.max() < 10.0


def test_camera_errors_need_three_common_images():
    rng = np.random.default_rng(6)
    gt = _scene(rng, 5)
    with pytest.raises(ValueError, match="2 images in common"):
        camera_errors(gt, gt.subset(gt.names[:2]))


def test_rotation_offset_is_the_chordal_mean():
    rng = np.random.default_rng(7)
    est = _random_rotations(rng, 6)
    offset = _rotation([1, 1, 0], 3.0)
    noise = np.stack([_rotation(rng.normal(size=3), 0.2) for _ in range(6)])
    gt = noise @ offset @ est
    recovered = rotation_offset(gt, est)
    assert rotation_angles_deg((recovered.T @ offset)[None])[0] < 0.2
    assert rotation_angles_deg(offset[None])[0] == pytest.approx(3.0)


def _hand_built_reconstruction() -> tuple[pycolmap.Reconstruction, np.ndarray]:
    """3 registered images of 5 (2 unregistered), 4 points with tracks 3, 2, 2, 3."""
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_id(1, pycolmap.CameraModelId.PINHOLE, 100.0, 64, 48)
    rec.add_camera_with_trivial_rig(camera)
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (4, 3)) + [0, 0, 6]
    poses = []
    for i in range(5):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(_rotation([0, 1, 0], 3.0 * i)), np.array([-0.3 * i, 0.0, 0.0]))
        keypoints = np.array([camera.img_from_cam(pose * x) for x in points])
        if i == 1:
            keypoints[1] += [3.0, 4.0]  # a 5 px error on one observation of point 1
        image = pycolmap.Image(name=f"{i}.jpg", keypoints=keypoints, camera_id=1, image_id=i + 1)
        if i < 3:
            rec.add_image_with_trivial_frame(image, pose)
        else:
            rec.add_image_with_trivial_frame(image)
        poses.append(pose)
    for j, length in enumerate([3, 2, 2, 3]):
        rec.add_point3D(points[j], pycolmap.Track([pycolmap.TrackElement(i + 1, j) for i in range(length)]))
    return rec, np.stack([p.inverse().translation for p in poses[:3]])


def test_reconstruction_stats_on_a_hand_built_model():
    rec, _ = _hand_built_reconstruction()
    stats = reconstruction_stats(rec, total=5)
    assert (stats.registered, stats.total, stats.points) == (3, 5, 4)
    assert stats.track_length == pytest.approx(2.5)
    # point 1 has observations with errors 0 and 5 px: mean 2.5; the others 0 -> mean over points 0.625
    assert stats.reprojection_error == pytest.approx(0.625, abs=1e-6)


def test_reconstruction_poses_and_empty_stats():
    rec, centers = _hand_built_reconstruction()
    poses = reconstruction_poses(rec)
    assert poses.names == ["0.jpg", "1.jpg", "2.jpg"]
    np.testing.assert_allclose(poses.centers, centers, atol=1e-12)
    empty = reconstruction_stats(None, total=7)
    assert (empty.registered, empty.total, empty.points) == (0, 7, 0)
    assert math.isnan(empty.track_length) and math.isnan(empty.reprojection_error)


@pytest.mark.hloc
@pytest.mark.slow
@pytest.mark.skipif(not HAS_HLOC, reason="hloc is not installed (peer dependency, not on PyPI)")
def test_small_strecha_reconstruction_through_hloc(data_dir: Path, tmp_path: Path):
    import hloc_hndesc  # noqa: F401  (registers)
    from hloc_hndesc.evaluation.datasets import read_strecha_camera
    from hloc_hndesc.evaluation.methods import parse_method
    from hloc_hndesc.evaluation.sfm import run_sfm, strecha_poses

    source = data_dir / "strecha" / "fountain-P11"
    names = [f"{i:04d}.jpg" for i in range(3, 8)]
    (tmp_path / "scene" / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(source / "images" / name, tmp_path / "scene" / "images" / name)
    method = parse_method("sift").with_resize(512)
    result = run_sfm(method, tmp_path / "scene", tmp_path / "out", tmp_path / "cache")
    assert result.names == names
    assert result.stats.registered == len(names) == result.stats.total
    assert result.stats.points > 500 and result.stats.track_length > 2.5
    assert len(result.reconstruction.cameras) == 1
    assert (result.sfm_dir / "images.bin").is_file() and result.matches.is_file()
    truth = strecha_poses([read_strecha_camera(source / "cameras" / f"{n}.camera") for n in names])
    errors = camera_errors(truth, reconstruction_poses(result.reconstruction))
    spread = np.linalg.norm(truth.centers - truth.centers.mean(0), axis=1).max()
    assert errors.center_errors.max() < 0.01 * spread, errors.summary()
    assert errors.rotation_errors.max() < 0.3, errors.summary()
    assert 0.2 < errors.offset_deg < 1.0  # the principal point, fixed at the centre, is ~8 px off
