"""The HNDesc-R2D2 ablation benchmark: each variant trains with its overrides, is measured, reruns reuse it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
import yaml

from benchmarks import make_sequences, r2d2_ablation
from hloc_hndesc.evaluation.datasets import read_strecha_scene
from hloc_hndesc.evaluation.localization import rescale_camera
from hloc_hndesc.evaluation.miniature import write_strecha_camera
from hloc_hndesc.weights import shipped_weights


def tiny_inputs(data_dir: Path, tmp_path: Path, data: dict, **conf: object) -> tuple[Path, Path, Path]:
    """4 training photos, a tiny HNDesc-R2D2 config (``data`` and ``conf`` entries on top) and 1 sequence."""
    photos = tmp_path / "train_natural" / "bsd300"
    photos.mkdir(parents=True)
    for path in sorted((data_dir / "train_natural" / "bsd300").glob("*.jpg"))[:4]:
        shutil.copy(path, photos / path.name)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "task": "hndesc_r2d2",
        "data": {"image_dirs": [str(photos.parent)], "crop": 64, "max_size": 128, "photometric": {"enabled": False},
                 **data},
        "model": {"variant": "slim", "mchan": 2},
        "sampling": {"stride": 8, "border": 4},
        "train": {"batch_size": 2, "log_every": 1, "checkpoint_every": 2, "progress": False, "tensorboard": False},
        **conf,
    }))
    sequences = tmp_path / "seqs"
    make_sequences.main(["--images", str(data_dir / "lightglue_pairs"), "--out", str(sequences),
                         "--max-side", "96", "--max-photos", "1"])
    return photos, config, sequences


def test_variants_train_with_their_overrides_and_reruns_reuse_them(data_dir: Path, tmp_path: Path) -> None:
    _, config, sequences = tiny_inputs(
        data_dir, tmp_path, {"val_fraction": 0.3, "stylize_probability": 1.0}, validation={"pairs": 1, "keypoints": 32}
    )
    argv = [
        "--config", str(config), "--variants", "in_batch", "in_batch-nostyle", "--seeds", "3", "--steps", "2",
        "--sequences", str(sequences), "--cache", str(tmp_path / "cache"),
        "--output-root", str(tmp_path / "runs"), "--no-write",
    ]
    first = r2d2_ablation.main(argv)
    assert set(first) == {"in_batch", "in_batch-nostyle"} and all(len(rows) == 1 for rows in first.values())
    for variant, style in (("in_batch", 1.0), ("in_batch-nostyle", 0.0)):
        meta = torch.load(tmp_path / "runs" / f"{variant}-s3" / "model.pt", weights_only=True)["meta"]
        conf = meta["config"]
        assert conf["data"]["stylize_probability"] == style and conf["mining"]["mode"] == "in_batch"
        assert conf["data"]["seed"] == 3 and meta["step"] == 2
        row = first[variant][0]
        assert 0.0 <= row["mma_all"] <= 1.0 and 0.0 <= row["val_ap"] <= 1.0
    walls = {v: json.loads((tmp_path / "runs" / f"{v}-s3" / "ablation_wall.json").read_text()) for v in first}
    stamp = (tmp_path / "runs" / "in_batch-s3" / "model.pt").stat().st_mtime_ns
    second = r2d2_ablation.main(argv)
    assert (tmp_path / "runs" / "in_batch-s3" / "model.pt").stat().st_mtime_ns == stamp
    assert {v: json.loads((tmp_path / "runs" / f"{v}-s3" / "ablation_wall.json").read_text()) for v in first} == walls
    assert second == first


def test_global_how_variant_needs_and_uses_the_how_descriptors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        r2d2_ablation.parse_args(["--steps", "1", "--sequences", str(tmp_path), "--variants", "global-how"])

    photos, config, sequences = tiny_inputs(
        data_dir, tmp_path, {"val_fraction": 0.0, "stylize_probability": 0.0},
        mining={"bank": {"num_neighbours": 2, "locals_per_image": 16}}, bank_image_size=96,
    )
    how = tmp_path / "how_global.h5"
    with h5py.File(how, "w") as fd:
        for i, path in enumerate(sorted(photos.iterdir())):
            fd.create_dataset(f"train_natural/bsd300/{path.name}/global_descriptor",
                              data=np.eye(8, dtype=np.float32)[i])
    rows = r2d2_ablation.main([
        "--config", str(config), "--variants", "global-how", "--seeds", "0", "--steps", "2",
        "--how-global", str(how), "--sequences", str(sequences), "--cache", str(tmp_path / "cache"),
        "--output-root", str(tmp_path / "runs"), "--no-write",
    ])
    mining = torch.load(tmp_path / "runs" / "global-how-s0" / "model.pt", weights_only=True)["meta"]["config"]["mining"]
    assert mining["mode"] == "global" and mining["bank"]["source"] == "external"
    assert mining["bank"]["global_path"] == str(how)
    assert 0.0 <= rows["global-how"][0]["mma_all"] <= 1.0


def small_strecha_scene(source: Path, out: Path, count: int = 6, scale: float = 0.375) -> Path:
    """The first ``count`` images of a Strecha scene at ``scale`` (1536x1024 -> 576x384) with their
    rescaled ground-truth cameras, in the Strecha layout."""
    (out / "images").mkdir(parents=True)
    for camera in read_strecha_scene(source)[:count]:
        small = rescale_camera(camera, scale)
        full = cv2.imread(str(source / "images" / camera.name))
        cv2.imwrite(str(out / "images" / camera.name), cv2.resize(full, small.size, interpolation=cv2.INTER_AREA))
        write_strecha_camera(out / "cameras" / f"{camera.name}.camera", small)
    return out


@pytest.mark.hloc
@pytest.mark.slow
def test_localization_scores_of_the_shipped_model_and_ablation_columns(data_dir: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("hloc", reason="hloc is not installed (peer dependency, not on PyPI)")
    pytest.importorskip("hloc.localize_sfm", reason="hloc is installed but its localize_sfm does not import")
    source = data_dir / "strecha" / "Herz-Jesu-P25"
    if not source.is_dir():
        pytest.skip(f"{source} not found")
    scene = small_strecha_scene(source, tmp_path / "scene")
    assert [c.size for c in read_strecha_scene(scene)] == [(576, 384)] * 6

    args = r2d2_ablation.parse_args([
        "--steps", "1", "--sequences", str(tmp_path), "--localization", str(scene),
        "--cache", str(tmp_path / "cache"), "--output-root", str(tmp_path / "runs"), "--variants", "in_pair",
    ])
    record = tmp_path / "shipped-localization.json"
    shipped = r2d2_ablation.localization_scores(args, shipped_weights("hndesc-r2d2"), "shipped", record)
    # queries 0002 and 0005 between database cameras 0-1, 3-4: the shipped model localises both
    assert shipped["night_recall_tight"] == shipped["night_recall_loose"] == 100.0
    assert shipped["plain_inliers"] > 100 and 0 < shipped["night_inliers"] < shipped["plain_inliers"]
    # the record is reused for the same weights (a wrong stored score proves it was not recomputed)
    stored = json.loads(record.read_text())
    stored["scores"]["night_inliers"] = -1
    record.write_text(json.dumps(stored))
    assert r2d2_ablation.localization_scores(args, shipped_weights("hndesc-r2d2"), "shipped", record)["night_inliers"] == -1

    _, config, sequences = tiny_inputs(data_dir, tmp_path, {"val_fraction": 0.0, "stylize_probability": 0.0})
    rows = r2d2_ablation.main([
        "--config", str(config), "--variants", "in_pair", "--seeds", "0", "--steps", "2", "--sequences",
        str(sequences), "--localization", str(scene), "--cache", str(tmp_path / "cache"),
        "--output-root", str(tmp_path / "runs"), "--no-write",
    ])
    row = rows["in_pair"][0]
    assert 0.0 <= row["mma_night"] <= 1.0 and 0.0 <= row["night_recall_tight"] <= row["night_recall_loose"] <= 100.0
    printed = capsys.readouterr().out
    assert "night recall 0.25 m, 2°" in printed and "MMA@3 night" in printed and "Localisation: `scene`" in printed
