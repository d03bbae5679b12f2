"""Pipelines without running hloc: layout errors, configs and options, component specs, resumable steps."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from conftest import write_image
from hloc_hndesc.config import ConfigError
from hloc_hndesc.features import r2d2 as r2d2_features
from hloc_hndesc.pipelines import aachen_v1_1, eth_sfm, inloc
from hloc_hndesc.pipelines.components import SpecError, resolve_features, resolve_retrieval
from hloc_hndesc.pipelines.layout import LayoutError, check_aachen, check_image_folder, check_inloc
from hloc_hndesc.pipelines.runner import build_parser, load_settings
from hloc_hndesc.pipelines.steps import Steps, discard_incomplete_groups
from hloc_hndesc.weights import read_registry, shipped_weights

IMAGE = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)


def _model(path: Path, names: list[str]) -> None:
    reconstruction = pycolmap.Reconstruction()
    for index, name in enumerate(names, 1):
        camera = pycolmap.Camera(model="PINHOLE", width=64, height=48, params=[50, 50, 32, 24], camera_id=index)
        reconstruction.add_camera_with_trivial_rig(camera)
        reconstruction.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=index, image_id=index), pycolmap.Rigid3d())
    path.mkdir(parents=True)
    reconstruction.write(path)


def test_aachen_layout_lists_every_problem_and_writes_nothing(tmp_path):
    root = tmp_path / "aachen"
    write_image(root / "images_upright/db/a.jpg", IMAGE)
    (root / "images_upright/query/day").mkdir(parents=True)
    _model(root / "3D-models/aachen_v_1_1", ["db/a.jpg", "db/missing.jpg"])
    (root / "queries").mkdir()
    (root / "queries/day_time_queries_with_intrinsics.txt").write_text(
        "query/day/q1.jpg SIMPLE_RADIAL 64 48 50 32 24 0\nquery/day/q2.jpg PINHOLE 64 48 50\n"
    )
    (root / "queries/night_time_queries_with_intrinsics.txt").write_text("query/night/q1.jpg SIMPLE_RADIAL 64 48 50 32 24 0\n")
    with pytest.raises(LayoutError) as error:
        check_aachen(root)
    problems = "\n".join(error.value.problems)
    assert "db/missing.jpg: image of the reference model missing" in problems
    assert "no 3D point" in problems
    assert "day_time_queries_with_intrinsics.txt:2" in problems  # PINHOLE needs 4 parameters
    assert "query/day/q1.jpg: query image listed in day_time_queries_with_intrinsics.txt is missing" in problems
    assert "query/night/q1.jpg: query image listed in night_time" in problems
    assert "basenames are not unique" in problems and "q1.jpg" in problems
    assert len(error.value.problems) == 6 and str(error.value).count("\n  ") == 6
    outputs = tmp_path / "out"
    assert aachen_v1_1.main(["--dataset", str(root), "--outputs", str(outputs), "--features", "sift", "--retrieval", "exhaustive"]) == 2
    assert not outputs.exists()


def test_aachen_layout_of_an_empty_folder(tmp_path):
    with pytest.raises(LayoutError) as error:
        check_aachen(tmp_path)
    problems = "\n".join(error.value.problems)
    for expected in ("images_upright/db: missing", "images_upright/query: missing", "aachen_v_1_1: missing COLMAP model", "_time_queries_with_intrinsics.txt"):
        assert expected in problems


def test_inloc_layout_lists_every_problem(tmp_path):
    pytest.importorskip("scipy", reason="InLoc's .mat files need scipy (an hloc dependency)")
    from scipy.io import savemat

    root = tmp_path / "inloc"
    write_image(root / "query/iphone7/IMG_1.JPG", IMAGE)
    cutouts = root / "database/cutouts/ABC1/001"
    write_image(cutouts / "ABC_cutout_001_0_0.jpg", IMAGE)
    write_image(cutouts / "ABC_cutout_001_30_0.jpg", IMAGE)
    write_image(root / "database/cutouts/ABC1/ABC_cutout_flat.jpg", IMAGE)
    savemat(str(cutouts / "ABC_cutout_001_0_0.jpg.mat"), {"XYZcut": np.zeros((10, 10, 3))})
    alignments = root / "database/alignments/ABC1/transformations"
    alignments.mkdir(parents=True)
    (alignments / "ABC_trans_001.txt").write_text("Before general icp:\n1 0 0 0\n")
    with pytest.raises(LayoutError) as error:
        check_inloc(root)
    problems = "\n".join(error.value.problems)
    assert "ABC_cutout_001_0_0.jpg.mat: XYZcut is 10x10, its image is 64x48" in problems
    assert "ABC_cutout_001_30_0.jpg.mat: missing XYZcut file" in problems
    assert "ABC_cutout_flat.jpg: expected database/cutouts/<floor>/<scan>/<cutout>" in problems
    assert "ABC_trans_001.txt: 2 lines" in problems
    assert len(error.value.problems) == 4
    outputs = tmp_path / "out"
    assert inloc.main(["--dataset", str(root), "--outputs", str(outputs), "--features", "sift", "--retrieval", "exhaustive"]) == 2
    assert not outputs.exists()


def test_image_folder_layout_and_strecha_ground_truth(tmp_path, data_dir):
    scene = data_dir / "strecha" / "Herz-Jesu-P8"
    layout = check_image_folder(scene)
    assert len(layout.names) == 8 and layout.ground_truth_kind == "strecha"
    broken = tmp_path / "scene"
    for name in ("0000.jpg", "0001.jpg", "0002.jpg"):
        write_image(broken / "images" / name, IMAGE)
    (broken / "cameras").mkdir()
    (broken / "cameras/0000.jpg.camera").write_text((scene / "cameras/0000.jpg.camera").read_text())
    (broken / "cameras/0001.jpg.camera").write_text("1 2 3\n")
    (broken / "images/0003.jpg").write_bytes(b"not an image")
    with pytest.raises(LayoutError) as error:
        check_image_folder(broken)
    problems = "\n".join(error.value.problems)
    assert "0001.jpg.camera: expected 26 numbers" in problems
    assert "0002.jpg.camera: missing" in problems
    assert "0003.jpg: unreadable image" in problems and "0003.jpg.camera: missing" in problems
    assert eth_sfm.main(["--dataset", str(tmp_path / "nothing"), "--outputs", str(tmp_path / "out"), "--features", "sift"]) == 2
    assert not (tmp_path / "out").exists()


def test_settings_defaults_file_and_options(tmp_path):
    parser = build_parser("aachen_v1_1", "test")
    args = parser.parse_args(["--dataset", "d", "--outputs", "o"])
    settings = load_settings("aachen_v1_1", args)
    assert (settings.num_covis, settings.num_loc, settings.retrieval) == (20, 50, "how-asmk")
    user = tmp_path / "user.yaml"
    user.write_text("num_loc: 30\nfeatures: sift\n")
    args = parser.parse_args(["--dataset", "d", "--outputs", "o", "--config", str(user), "--num-loc", "10", "--covisibility-clustering"])
    settings = load_settings("aachen_v1_1", args)
    assert (settings.num_loc, settings.features, settings.covisibility_clustering) == (10, "sift", True)
    assert load_settings("inloc", build_parser("inloc", "t").parse_args(["--dataset", "d", "--outputs", "o"])).skip_matches == 20
    assert load_settings("inloc", build_parser("inloc", "t").parse_args(["--dataset", "d", "--outputs", "o"])).num_loc == 40
    user.write_text("num_locs: 30\n")
    with pytest.raises(ConfigError, match="num_locs"):
        load_settings("aachen_v1_1", parser.parse_args(["--dataset", "d", "--outputs", "o", "--config", str(user)]))


def test_feature_and_retrieval_specs(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:  # no shipped weights (empty checkpoint folder): refused up front
        patch.setattr(r2d2_features, "shipped_weights", functools.partial(shipped_weights, root=tmp_path))
        with pytest.raises(SpecError, match="weights"):
            resolve_features("hndesc-r2d2")
    if "hndesc-r2d2" in read_registry():
        assert resolve_features("hndesc-r2d2").method.weights is None  # the shipped file, checked
    with pytest.raises(SpecError, match="not found"):
        resolve_features("hynet=/no/such/file.pth")
    if "hynet" in read_registry():
        hynet = resolve_features("hynet", resize_max=1024)
        assert hynet.method.conf["preprocessing"]["resize_max"] == 1024 and hynet.default_matcher() == "NN-mutual"
    sift = resolve_features("sift", resize_max=640)
    assert sift.method.conf["preprocessing"]["resize_max"] == 640 and sift.default_matcher() == "NN-ratio"
    assert resolve_retrieval("exhaustive").kind == "exhaustive"
    with pytest.raises(SpecError, match="not found"):
        resolve_retrieval("how=/no/such/file.pth")
    if "how" in read_registry():  # the shipped HOW: global and ASMK retrieval resolve without weights
        assert resolve_retrieval("how").kind != resolve_retrieval("how-asmk").kind
    else:
        with pytest.raises(SpecError, match="weights"):
            resolve_retrieval("how")


def test_steps_skip_done_and_redo_changed(tmp_path):
    calls = []
    source, target = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a")

    def step() -> None:
        calls.append(1)
        target.write_text(source.read_text() * 2)

    steps = Steps(tmp_path / "o")
    assert steps.run("double", step, {"k": 1}, [source], [target])
    assert not Steps(tmp_path / "o").run("double", step, {"k": 1}, [source], [target])
    assert not Steps(tmp_path / "o").run("double", step, {"k": 1}, [source], [target])
    assert len(calls) == 1
    assert Steps(tmp_path / "o").run("double", step, {"k": 2}, [source], [target])  # parameters changed
    time.sleep(0.01)
    source.write_text("b")
    os.utime(source, ns=(time.time_ns(), time.time_ns()))
    assert Steps(tmp_path / "o").run("double", step, {"k": 2}, [source], [target])  # input changed
    target.unlink()
    assert Steps(tmp_path / "o").run("double", step, {"k": 2}, [source], [target])  # output gone
    assert len(calls) == 4

    def crash() -> None:
        target.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Steps(tmp_path / "o").run("crashy", crash, {}, [source], [target])
    assert Steps(tmp_path / "o").run("crashy", step, {}, [source], [target])  # no stamp: redone


def test_incomplete_hloc_entries_are_dropped(tmp_path):
    path = tmp_path / "matches.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("a.jpg/b.jpg").create_dataset("matches0", data=np.zeros(3, np.int16))
        handle.create_group("a.jpg/c.jpg")  # killed between create_group and create_dataset
    assert discard_incomplete_groups(path, ("matches0",)) == 1
    with h5py.File(path, "r") as handle:
        assert "a.jpg/b.jpg" in handle and "a.jpg/c.jpg" not in handle
