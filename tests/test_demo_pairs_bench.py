"""The demo-pairs benchmark: every pair of a scene, inliers per method, a section of BENCHMARKS.md."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import demo_pairs
from hloc_hndesc.demo import DEMO_SCENE


def test_inlier_rows_summarise_each_method() -> None:
    rows = demo_pairs.inlier_rows({"a": np.array([10, 40, 31]), "b": np.array([5])}, min_inliers=30)
    assert rows[0] == ["a", "3", "31", "27.0", "10-40", "2/3"]
    assert rows[1] == ["b", "1", "5", "5.0", "5-5", "0/1"]


def test_demo_pairs_on_three_bundled_photos(tmp_path: Path, capsys) -> None:
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    for path in sorted((DEMO_SCENE / "images").glob("*.jpg"))[:3]:
        shutil.copy(path, scene / "images" / path.name)
    results = demo_pairs.main(
        ["--method", "sift", "--scene", str(scene), "--max-keypoints", "1000", "--out", str(tmp_path / "out"), "--no-write"]
    )
    assert list(results) == ["sift"] and len(results["sift"]) == 3  # all pairs of 3 photos
    assert np.median(results["sift"]) >= 30  # overlapping photos of one facade verify
    assert "| sift | 3 |" in capsys.readouterr().out


def test_demo_pairs_rejects_a_scene_without_images(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        demo_pairs.main(["--method", "sift", "--scene", str(tmp_path), "--no-write"])
