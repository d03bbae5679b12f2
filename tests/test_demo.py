"""The demo on the bundled photos: matches verified by pycolmap, plots, SfM through hloc."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import random_checkpoint

from hloc_hndesc.cli import main as cli_main
from hloc_hndesc.demo import DEMO_SCENE, run_demo, verify_pair
from hloc_hndesc.evaluation.methods import parse_method
from hloc_hndesc.weights import NoWeightsError, read_registry

HAS_HLOC = importlib.util.find_spec("hloc") is not None


def small_scene(tmp_path: Path, count: int = 3) -> Path:
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    for path in sorted((DEMO_SCENE / "images").glob("*.jpg"))[:count]:
        shutil.copy(path, scene / "images" / path.name)
    return scene


def test_bundled_photos_are_installed():
    photos = sorted((DEMO_SCENE / "images").glob("*.jpg"))
    assert len(photos) == 10
    assert all(max(cv2.imread(str(p)).shape[:2]) == 800 for p in photos)


def test_sift_demo_verifies_and_plots_matches(tmp_path: Path, capsys):
    scene = small_scene(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["demo", "--method", "sift", "--scene", str(scene), "--output", str(out), "--no-sfm"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("inliers (pycolmap F)") == 3
    report = run_demo("sift", scene, out, sfm=False)  # features are reused from the first run
    best = max(report.pairs, key=lambda p: p.inliers)
    assert best.inliers >= 30 and best.inliers <= best.matches
    plot = cv2.imread(str(best.plot))
    assert plot is not None and plot.shape[0] == 480 and plot.shape[1] > 480


def test_verify_pair_rejects_random_matches():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 800, (200, 2))
    assert verify_pair(a, rng.uniform(0, 800, (200, 2))).mean() < 0.3
    assert verify_pair(a[:5], a[:5]).sum() == 0  # too few points for a fundamental matrix


def test_demo_with_a_checkpoint_and_without_weights(tmp_path: Path, capsys):
    scene = small_scene(tmp_path, 2)
    weights = random_checkpoint("hynet", tmp_path / "hynet.pth")
    method = parse_method(f"hynet={weights}")
    method.conf["model"]["max_keypoints"] = 300  # random HyNet on the CPU: keep it short
    report = run_demo(method, scene, tmp_path / "out", sfm=False)
    assert len(report.pairs) == 1 and report.pairs[0].plot.is_file()
    if "hynet" not in read_registry():
        with pytest.raises(NoWeightsError):
            run_demo("hynet", scene, tmp_path / "out2", sfm=False)
        assert cli_main(["demo", "--scene", str(scene), "--output", str(tmp_path / "out3")]) == 2
        return
    # the shipped HyNet is trained: on the same DoG keypoints it verifies far more matches
    trained = parse_method("hynet")
    trained.conf["model"]["max_keypoints"] = 300
    shipped = run_demo(trained, scene, tmp_path / "out2", sfm=False)
    assert shipped.pairs[0].inliers >= max(30, 2 * report.pairs[0].inliers)
    assert cli_main(["demo", "--scene", str(scene), "--output", str(tmp_path / "out3"), "--no-sfm"]) == 0


def test_demo_matches_only_the_retrieval_shortlist(tmp_path: Path, capsys):
    scene = small_scene(tmp_path, 4)
    names = sorted(p.name for p in (scene / "images").iterdir())
    out = tmp_path / "out"
    args = ["demo", "--method", "sift", "--scene", str(scene), "--output", str(out), "--no-sfm"]
    assert cli_main(args + ["--retrieval", "sift", "--num-matched", "1"]) == 0  # local: ASMK
    printed = capsys.readouterr().out
    assert "each image's 1 nearest images by sift" in printed
    assert 2 <= printed.count("inliers (pycolmap F)") <= 4  # not the 6 pairs of 4 images
    report = run_demo("sift", scene, out, sfm=False, retrieval="sift", num_matched=1)
    assert {n for p in report.pairs for n in (p.name0, p.name1)} == set(names)
    assert all(p.name0 < p.name1 for p in report.pairs)
    how = parse_method(f"how={random_checkpoint('how', tmp_path / 'how.pth')}")  # global
    how.conf["model"].update(scales=[0.25], max_size=400)
    report = run_demo("sift", scene, out, sfm=False, retrieval=how, num_matched=2)
    assert report.retrieval == how.label and 2 <= len(report.pairs) <= 6
    assert cli_main(args + ["--retrieval", "sift", "--num-matched", "0"]) == 2


@pytest.mark.hloc
@pytest.mark.slow
@pytest.mark.skipif(not HAS_HLOC, reason="hloc is not installed (peer dependency, not on PyPI)")
def test_demo_reconstructs_from_a_retrieval_shortlist(tmp_path: Path):
    report = run_demo("sift", DEMO_SCENE, tmp_path / "out", sfm=True, retrieval="sift", num_matched=4)
    assert len(report.pairs) < 45  # fewer than all pairs of the 10 photos
    pairs_file = (tmp_path / "out" / "sfm" / "pairs-given.txt").read_text().split("\n")
    assert len([line for line in pairs_file if line]) == len(report.pairs)
    # COLMAP's multi-threaded mapper is not bit-reproducible: with 4 neighbours each it registered
    # 10 of 10 in most runs and 9 once (2 cores, after test_retrieval_eval); fewer means the
    # shortlist left photos unconnected
    assert report.sfm is not None and report.sfm["registered"] >= 9


@pytest.mark.hloc
@pytest.mark.slow
@pytest.mark.skipif(not HAS_HLOC, reason="hloc is not installed (peer dependency, not on PyPI)")
def test_sift_demo_reconstructs_the_bundled_photos_through_hloc(tmp_path: Path):
    report = run_demo("sift", DEMO_SCENE, tmp_path / "out", sfm=True)
    assert report.sfm is not None
    assert report.sfm["registered"] == 10 and report.sfm["points"] > 500
    assert report.sfm["reprojection_error"] < 1.0
    top_view = cv2.imread(str(tmp_path / "out" / "sfm" / "model_top_view.png"))
    assert top_view is not None and top_view.std() > 0  # points and cameras drawn


@pytest.mark.skipif("hndesc-caps" not in read_registry(), reason="no shipped hndesc-caps weights")
def test_shipped_caps_verifies_more_matches_than_random_weights(tmp_path: Path):
    """On the 15 pairs of 6 bundled photos the trained weights beat random ones pair by pair.

    Measured when shipped: 15 of 15 pairs, median 55 inliers against 27 (BENCHMARKS.md rows
    and the card give the rest); one pair alone sits too near any threshold to test.
    """
    scene = small_scene(tmp_path, 6)
    inliers = []
    for spec in (f"hndesc-caps={random_checkpoint('hndesc-caps', tmp_path / 'caps.pth')}", "hndesc-caps"):
        method = parse_method(spec)
        method.conf["model"]["max_keypoints"] = 2000
        report = run_demo(method, scene, tmp_path / f"out{len(inliers)}", sfm=False)
        inliers.append(np.array([pair.inliers for pair in report.pairs]))
    random_inliers, shipped_inliers = inliers
    assert len(shipped_inliers) == 15
    assert (shipped_inliers > random_inliers).sum() >= 13
    assert np.median(shipped_inliers) >= max(30, 1.5 * np.median(random_inliers))


@pytest.mark.skipif("hndesc-r2d2" not in read_registry(), reason="no shipped hndesc-r2d2 weights")
def test_shipped_r2d2_verifies_every_pair_of_the_bundled_photos(tmp_path: Path):
    """The shipped detector + descriptor keeps a verified geometry on all 15 pairs of 6 bundled photos.

    Random weights of the network find no keypoint above the 0.7 thresholds (BENCHMARKS.md), so
    the bar is absolute. Measured when shipped: min 25, median 58 inliers (the BENCHMARKS.md
    demo-pairs rows give all 45 pairs).
    """
    scene = small_scene(tmp_path, 6)
    method = parse_method("hndesc-r2d2")
    method.conf["model"]["max_keypoints"] = 2000
    inliers = np.array([pair.inliers for pair in run_demo(method, scene, tmp_path / "out", sfm=False).pairs])
    assert len(inliers) == 15
    assert inliers.min() >= 20 and np.median(inliers) >= 45


@pytest.mark.skipif("how" not in read_registry(), reason="no shipped how weights")
def test_shipped_how_shortlists_a_photo_with_its_synthetic_view(tmp_path: Path):
    """A warped, relit copy of one bundled photo must come first in that photo's HOW shortlist."""
    scene = small_scene(tmp_path, 4)
    first = sorted((scene / "images").glob("*.jpg"))[0]
    image = cv2.imread(str(first))
    h, w = image.shape[:2]
    rotation = cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.3)
    view = cv2.warpAffine(image, rotation, (w, h), borderMode=cv2.BORDER_REFLECT)
    view = np.clip(view.astype(np.float32) * 0.6 + 20, 0, 255).astype(np.uint8)
    cv2.imwrite(str(scene / "images" / "zz_view.jpg"), view)
    how = parse_method("how")
    how.conf["model"].update(max_size=512, scales=[1.0, 0.707, 0.5])
    report = run_demo("sift", scene, tmp_path / "out", sfm=False, retrieval=how, num_matched=1)
    assert (first.name, "zz_view.jpg") in [(p.name0, p.name1) for p in report.pairs]
