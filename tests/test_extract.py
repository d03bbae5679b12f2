"""Standalone extraction (`hloc-hndesc extract`): layout, resume, and one test per bad input."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from conftest import random_checkpoint, write_image
from hloc_hndesc.cli import main as cli_main
from hloc_hndesc.config import ConfigError
from hloc_hndesc.confs import get_conf
from hloc_hndesc.extract import MAX_INPUT_PIXELS, extract
from hloc_hndesc.h5io import INCOMPLETE, complete_names
from hloc_hndesc.weights import read_registry
from test_io import exif_rotated_jpeg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_checkpoint("hynet", tmp_path_factory.mktemp("w") / "hynet.pth")


def small_conf(resize_max: int = 256) -> dict:
    conf = get_conf("hynet")
    conf["model"]["max_keypoints"] = 64
    conf["preprocessing"]["resize_max"] = resize_max
    return conf


@pytest.fixture
def image_dir(tmp_path, sacre_coeur):
    root = tmp_path / "images"
    root.mkdir()
    for path in sorted(sacre_coeur.glob("*.jpg"))[:2]:
        shutil.copy(path, root / path.name)
    return root


def _read(path, name):
    with h5py.File(path) as fd:
        return {k: fd[name][k][()] for k in fd[name].keys()}


def test_hloc_layout_and_original_resolution(image_dir, tmp_path, weights):
    out = tmp_path / "f.h5"
    report = extract(small_conf(), image_dir, out, weights=weights)
    assert sorted(report.written) == sorted(p.name for p in image_dir.iterdir())
    entry = _read(out, report.written[0])
    w, h = entry["image_size"]
    assert max(w, h) > 256  # stored at the original resolution
    assert entry["keypoints"].dtype == np.float32 and entry["keypoints"].shape == (64, 2)
    assert entry["descriptors"].shape == (128, 64) and entry["scores"].shape == (64,)
    assert entry["keypoints"][:, 0].max() <= w - 0.5 and entry["keypoints"].max() > 256
    np.testing.assert_allclose(np.linalg.norm(entry["descriptors"], axis=0), 1, atol=1e-4)


def test_resume_skips_complete_and_redoes_interrupted(image_dir, tmp_path, weights):
    out = tmp_path / "f.h5"
    first = extract(small_conf(), image_dir, out, weights=weights)
    victim = first.written[1]
    with h5py.File(out, "a") as fd:  # simulate a crash while writing `victim`
        del fd[victim]
        fd.create_group(f"{INCOMPLETE}/{victim}").create_dataset("keypoints", data=np.zeros((1, 2)))
    assert victim not in complete_names(out)
    second = extract(small_conf(), image_dir, out, weights=weights)
    assert second.existing == [first.written[0]] and second.written == [victim]
    with h5py.File(out) as fd:
        assert INCOMPLETE not in fd


def test_corrupt_file_is_skipped_and_named(image_dir, tmp_path, weights):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg \xff\xd9")
    report = extract(small_conf(), image_dir, tmp_path / "f.h5", weights=weights)
    assert "broken.jpg" in report.skipped["broken.jpg"] and "not a readable image" in report.skipped["broken.jpg"]
    assert len(report.written) == 2


def test_truncated_file_is_skipped_and_named(image_dir, tmp_path, weights):
    data = next(image_dir.iterdir()).read_bytes()
    (image_dir / "cut.jpg").write_bytes(data[: len(data) // 3])
    report = extract(small_conf(), image_dir, tmp_path / "f.h5", weights=weights)
    assert "truncated JPEG" in report.skipped["cut.jpg"] and len(report.written) == 2


@pytest.fixture
def grey_reference(tmp_path, weights, photo_small):
    """Keypoints of the photo's green channel saved as an 8-bit grey PNG."""
    write_image(tmp_path / "ref" / "grey.png", (photo_small[..., 1] * 255).astype(np.uint8))
    extract(small_conf(), tmp_path / "ref", tmp_path / "ref.h5", weights=weights)
    return _read(tmp_path / "ref.h5", "grey.png")


def test_grayscale_input(grey_reference):
    assert len(grey_reference["keypoints"]) > 0
    assert grey_reference["descriptors"].shape == (128, len(grey_reference["keypoints"]))


def test_rgba_input(tmp_path, weights, photo_small):
    rgb8 = (photo_small * 255).astype(np.uint8)
    write_image(tmp_path / "a" / "rgba.png", np.dstack([rgb8, np.full(rgb8.shape[:2], 200, np.uint8)]))
    write_image(tmp_path / "a" / "rgb.png", rgb8)
    report = extract(small_conf(), tmp_path / "a", tmp_path / "f.h5", weights=weights)
    assert sorted(report.written) == ["rgb.png", "rgba.png"]
    rgba, rgb = _read(tmp_path / "f.h5", "rgba.png"), _read(tmp_path / "f.h5", "rgb.png")
    np.testing.assert_array_equal(rgba["keypoints"], rgb["keypoints"])  # alpha ignored


def test_16bit_input(tmp_path, weights, photo_small, grey_reference):
    write_image(tmp_path / "d" / "deep.png", (photo_small[..., 1] * 65535).astype(np.uint16))
    extract(small_conf(), tmp_path / "d", tmp_path / "f.h5", weights=weights)
    deep = _read(tmp_path / "f.h5", "deep.png")
    # the 16-bit copy of the same channel gives the same keypoints as the 8-bit one
    np.testing.assert_allclose(np.sort(deep["keypoints"], 0), np.sort(grey_reference["keypoints"], 0), atol=0.05)


def test_exif_rotation_applied(tmp_path, weights, photo_small):
    root = tmp_path / "exif"
    root.mkdir()
    exif_rotated_jpeg(root / "rot.jpg", (photo_small * 255).astype(np.uint8))
    extract(small_conf(), root, tmp_path / "f.h5", weights=weights)
    h, w = photo_small.shape[:2]
    assert tuple(_read(tmp_path / "f.h5", "rot.jpg")["image_size"]) == (h, w)  # width = original height


def test_image_smaller_than_a_patch_gets_valid_empty_entry(tmp_path, weights):
    write_image(tmp_path / "tiny" / "t.png", np.full((20, 30, 3), 128, np.uint8))
    report = extract(small_conf(), tmp_path / "tiny", tmp_path / "f.h5", weights=weights)
    entry = _read(tmp_path / "f.h5", "t.png")
    assert report.empty == ["t.png"] and entry["keypoints"].shape == (0, 2)
    assert entry["descriptors"].shape == (128, 0) and tuple(entry["image_size"]) == (30, 20)


def test_image_too_large_at_chosen_resolution(tmp_path, weights):
    write_image(tmp_path / "big" / "b.png", np.zeros((60, 90), np.uint8))
    conf = small_conf()
    conf["preprocessing"].update(resize_max=6000, resize_force=True)
    assert 6000 * 4000 > MAX_INPUT_PIXELS
    report = extract(conf, tmp_path / "big", tmp_path / "f.h5", weights=weights)
    assert "b.png: 6000x4000 px at the chosen resolution exceeds" in report.skipped["b.png"]
    assert complete_names(tmp_path / "f.h5") == set()


def test_image_without_keypoints_gets_valid_empty_entry(tmp_path, weights):
    write_image(tmp_path / "flat" / "f.png", np.full((200, 300, 3), 90, np.uint8))
    report = extract(small_conf(), tmp_path / "flat", tmp_path / "f.h5", weights=weights)
    assert report.empty == ["f.png"] and "f.png" in complete_names(tmp_path / "f.h5")


def test_directory_without_images(tmp_path, weights):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no images found"):
        extract(small_conf(), tmp_path / "empty", tmp_path / "f.h5", weights=weights)
    assert cli_main(["extract", "--conf", "hynet", str(tmp_path / "empty"), str(tmp_path / "f.h5")]) == 2


def test_unknown_conf(tmp_path, image_dir, capsys):
    with pytest.raises(KeyError, match="Unknown conf 'hndesc-r2d3'; available: hndesc-caps, hndesc-r2d2"):
        extract("hndesc-r2d3", image_dir, tmp_path / "f.h5")
    assert cli_main(["extract", "--conf", "hndesc-r2d3", str(image_dir), str(tmp_path / "f.h5")]) == 2


def test_unknown_config_key(tmp_path, image_dir, weights):
    conf = small_conf()
    conf["model"]["max_keypiont"] = 10
    with pytest.raises(ConfigError, match="unknown config key 'max_keypiont'"):
        extract(conf, image_dir, tmp_path / "f.h5", weights=weights)
    conf = small_conf()
    conf["preprocessing"]["resize"] = 10
    with pytest.raises(ConfigError, match=r"preprocessing: unknown config key\(s\) \['resize'\]"):
        extract(conf, image_dir, tmp_path / "f.h5", weights=weights)


def test_missing_weights_is_a_clear_cli_error(tmp_path, image_dir, caplog):
    unshipped = [c for c in ("hndesc-caps", "hndesc-r2d2", "how") if c not in read_registry()]
    for conf in unshipped[:1]:  # a conf whose weights do not ship: refused, nothing written
        assert cli_main(["extract", "--conf", conf, str(image_dir), str(tmp_path / "f.h5")]) == 2
    assert cli_main(["extract", "--conf", "hynet", str(image_dir), str(tmp_path / "f.h5"),
                     "--weights", str(tmp_path / "none.pth")]) == 2
    assert not (tmp_path / "f.h5").exists()


def test_tiny_image_for_a_global_descriptor_is_skipped(tmp_path):
    write_image(tmp_path / "tiny" / "t.png", np.full((20, 30, 3), 128, np.uint8))
    weights = random_checkpoint("how", tmp_path / "how.pth")
    report = extract("how", tmp_path / "tiny", tmp_path / "g.h5", weights=weights)
    assert "t.png: image of 30x20 px is smaller than 32 px" in report.skipped["t.png"]
    assert complete_names(tmp_path / "g.h5") == set()


def test_tiny_image_empty_entry_has_the_extractor_dimension(tmp_path):
    write_image(tmp_path / "tiny" / "t.png", np.full((20, 30, 3), 128, np.uint8))
    weights = random_checkpoint("hndesc-caps", tmp_path / "caps.pth")
    extract("hndesc-caps", tmp_path / "tiny", tmp_path / "c.h5", weights=weights)
    assert _read(tmp_path / "c.h5", "t.png")["descriptors"].shape == (256, 0)


def test_list_names_each_confs_shipped_weights(capsys):
    from hloc_hndesc.confs import CONFS

    assert cli_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.split()[0] in CONFS}
    assert set(rows) == set(CONFS)
    assert rows["hndesc-r2d2-rot4"].endswith("shipped weights (hndesc-r2d2-rot45)")
    assert rows["hndesc-r2d2-rot8"].endswith("shipped weights (hndesc-r2d2-rot45)")
    assert rows["hndesc-r2d2"].endswith("shipped weights (hndesc-r2d2)")
    assert len({line.index(CONFS[name]["output"]) for name, line in rows.items()}) == 1  # aligned columns
