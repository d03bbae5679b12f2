"""Integration with the real hloc: registration and hloc's own main() functions.

hloc is not on PyPI, so CI has no hloc and these tests skip there. Run them against
upstream hloc as the README's "Adding hloc" section says.
"""

from __future__ import annotations

import shutil
import sys

import h5py
import numpy as np
import pytest

from conftest import random_checkpoint

hloc = pytest.importorskip("hloc", reason="hloc is not installed (peer dependency, not on PyPI)")
pytest.importorskip("hloc.extract_features", reason="hloc is installed but its extract_features does not import")

import hloc_hndesc  # noqa: E402,F401  (registers)
from hloc import extract_features, extractors, match_features, pairs_from_exhaustive, pairs_from_retrieval  # noqa: E402
from hloc.utils.base_model import BaseModel, dynamic_load  # noqa: E402
from hloc_hndesc.confs import CONFS, EXTRACTORS  # noqa: E402

pytestmark = pytest.mark.hloc


def test_confs_registered_without_collisions():
    assert hloc_hndesc.HLOC_REGISTERED
    for name in CONFS:
        assert name in extract_features.confs
    hloc_own = {p.stem for p in __import__("pathlib").Path(extractors.__file__).parent.glob("*.py")}
    assert not set(EXTRACTORS) & hloc_own
    for model in EXTRACTORS:
        cls = dynamic_load(extractors, model)
        assert issubclass(cls, BaseModel) and cls.__module__ == f"hloc.extractors.{model}"
        assert sys.modules[f"hloc.extractors.{model}"] is getattr(extractors, model)


@pytest.fixture(scope="module")
def images(sacre_coeur, tmp_path_factory):
    """The 10 sacre_coeur photos (hloc's own demo set)."""
    root = tmp_path_factory.mktemp("images")
    for path in sorted(sacre_coeur.glob("*.jpg")):
        shutil.copy(path, root / path.name)
    return root


def _conf(name: str, weights, resize_max: int = 320) -> dict:
    conf = CONFS[name]
    model = {**conf["model"], "weights": str(weights)}
    if name == "hndesc-r2d2":  # random weights: keep every local maximum
        model.update(reliability_threshold=0.0, repeatability_threshold=0.0)
    if name in ("hynet", "hndesc-caps"):
        model.update(max_keypoints=256)
    return {
        **conf,
        "model": model,
        "preprocessing": {**conf["preprocessing"], "resize_max": resize_max},
    }


@pytest.mark.parametrize("name", ["hynet", "hndesc-r2d2", "hndesc-caps", "how-asmk"])
def test_local_confs_through_hloc(name, images, tmp_path):
    weights = random_checkpoint(name, tmp_path / "w.pth")
    conf = _conf(name, weights)
    feats = extract_features.main(conf, images, tmp_path, as_half=False)
    assert feats.name == conf["output"] + ".h5"
    names = sorted(p.name for p in images.iterdir())
    with h5py.File(feats) as fd:
        assert sorted(fd.keys()) == names
        for n in names:
            kps, desc = fd[n]["keypoints"][()], fd[n]["descriptors"][()]
            w, h = fd[n]["image_size"][()]
            assert kps.dtype == np.float32 and desc.shape[1] == len(kps) > 0
            # hloc rescales to the original resolution, pixel centres at integers
            assert kps.min() >= -0.5 and kps[:, 0].max() <= w - 0.5 and kps[:, 1].max() <= h - 0.5
            assert max(w, h) > 320 and kps.max() > 320 * 0.8
    pairs = tmp_path / "pairs.txt"
    pairs_from_exhaustive.main(pairs, image_list=names)
    matches = match_features.main(match_features.confs["NN-mutual"], pairs, conf["output"], tmp_path)
    with h5py.File(matches) as fd:
        m = fd[f"{names[0]}/{names[1]}"]["matches0"][()]
        assert (m >= -1).all() and (m > -1).sum() > 0


def test_global_conf_through_hloc_retrieval(images, tmp_path):
    weights = random_checkpoint("how", tmp_path / "w.pth")
    conf = _conf("how", weights)
    feats = extract_features.main(conf, images, tmp_path)
    with h5py.File(feats) as fd:
        for n in fd.keys():
            g = fd[n]["global_descriptor"][()].astype(np.float32)
            assert g.shape == (128,) and abs(np.linalg.norm(g) - 1) < 1e-2
    pairs = tmp_path / "pairs.txt"
    pairs_from_retrieval.main(feats, pairs, num_matched=2)
    lines = pairs.read_text().split("\n")
    lines = [line.split() for line in lines if line]
    assert len(lines) == 10 * 2 and all(a != b for a, b in lines)


def test_cli_entry_point_runs_hloc_extract_features(images, tmp_path):
    """`hloc-hndesc hloc extract_features --conf how-...` sees our confs (hloc's CLI would not)."""
    from hloc_hndesc.cli import main

    weights = random_checkpoint("how", tmp_path / "w.pth")
    extract_features.confs["how-cli-test"] = _conf("how", weights, 256)
    try:
        main(["hloc", "extract_features", "--conf", "how-cli-test", "--image_dir", str(images),
              "--export_dir", str(tmp_path)])
    finally:
        extract_features.confs.pop("how-cli-test")
    with h5py.File(tmp_path / (CONFS["how"]["output"] + ".h5")) as fd:
        assert len(fd.keys()) == 10


def _write_pair(sacre_coeur, folder, turn) -> np.ndarray:
    """Write a real photo (half size) as ``a.png`` and ``turn(photo)`` as ``b.png`` into ``folder``;
    return the photo."""
    import cv2

    folder.mkdir()
    photo = cv2.imread(str(sorted(sacre_coeur.glob("*.jpg"))[0]))
    photo = cv2.resize(photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "a.png"), photo)
    cv2.imwrite(str(folder / "b.png"), turn(photo))
    return photo


def _turn_45(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (2, 3) affine turning ``photo`` clockwise by 45 degrees on screen about its centre (cv2
    counts counter-clockwise), and the turned photo, same size (corners leave the frame)."""
    import cv2

    height, width = photo.shape[:2]
    affine = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), -45, 1.0)
    return affine, cv2.warpAffine(photo, affine, (width, height), flags=cv2.INTER_LINEAR)


def _hloc_pair_matches(name: str, root, tmp_path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Conf ``name`` through hloc's own extract_features + NN-mutual on the pair a.png/b.png of
    ``root``: keypoints of a and b, matches0 of a, and a's ``oris``."""
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png b.png\n")
    conf = {**CONFS[name], "output": f"feats-{name}"}
    feats = extract_features.main(conf, root, tmp_path)
    matches = match_features.main(match_features.confs["NN-mutual"], pairs, conf["output"], tmp_path)
    with h5py.File(feats) as fd, h5py.File(matches) as fm:
        k0, k1 = (fd[n]["keypoints"][()].astype(np.float64) for n in ("a.png", "b.png"))
        oris = fd["a.png"]["oris"][()] if "oris" in fd["a.png"] else np.zeros(0)
        return k0, k1, fm["a.png/b.png"]["matches0"][()], oris


def _correct(k0: np.ndarray, k1: np.ndarray, m: np.ndarray, move) -> np.ndarray:
    """Whether each match of ``matches0`` lands within 3 px of where ``move`` takes its keypoint."""
    valid = m > -1
    return np.linalg.norm(move(k0[valid]) - k1[m[valid]], axis=1) < 3


def test_rotated_views_conf_matches_a_photo_turned_by_90_degrees_through_hloc(sacre_coeur, tmp_path):
    """hndesc-r2d2-rot4 through hloc's own extract/match: a photo and the same photo turned 90°
    clockwise match where the upright conf does not (shipped weights, real photo)."""
    import cv2

    root = tmp_path / "images"
    height = _write_pair(sacre_coeur, root, lambda p: cv2.rotate(p, cv2.ROTATE_90_CLOCKWISE)).shape[0]
    precision = {}
    for name in ("hndesc-r2d2", "hndesc-r2d2-rot4"):
        k0, k1, m, oris = _hloc_pair_matches(name, root, tmp_path)
        if name == "hndesc-r2d2-rot4":
            assert sorted(set(oris.tolist())) == [0.0, 90.0, 180.0, 270.0]
        # clockwise by 90°: (x, y) -> (height - 1 - y, x)
        good = _correct(k0, k1, m, lambda k: np.stack([height - 1 - k[:, 1], k[:, 0]], -1))
        precision[name] = float(good.mean()) if len(good) else 0.0
    assert precision["hndesc-r2d2-rot4"] > 0.8 and precision["hndesc-r2d2"] < 0.3, precision


def test_eight_view_conf_matches_a_photo_turned_by_45_degrees_through_hloc(sacre_coeur, tmp_path):
    """hndesc-r2d2-rot8 through hloc's own extract/match: at 45 degrees (the worst relative rotation
    for four right-angle views) its resampled views keep most matches correct, rot4's do not."""
    root = tmp_path / "images"
    affine = _turn_45(_write_pair(sacre_coeur, root, lambda photo: _turn_45(photo)[1]))[0]
    precision, correct = {}, {}
    for name in ("hndesc-r2d2-rot4", "hndesc-r2d2-rot8"):
        k0, k1, m, oris = _hloc_pair_matches(name, root, tmp_path)
        if name == "hndesc-r2d2-rot8":
            assert sorted(set(oris.tolist())) == [0, 45, 90, 135, 180, 225, 270, 315]
            assert len(k0) <= 8 * 2500
        good = _correct(k0, k1, m, lambda k: k @ affine[:, :2].T + affine[:, 2])
        precision[name], correct[name] = float(good.mean()) if len(good) else 0.0, int(good.sum())
    assert precision["hndesc-r2d2-rot8"] > 0.8 and precision["hndesc-r2d2-rot8"] > precision["hndesc-r2d2-rot4"] + 0.15, precision
    assert correct["hndesc-r2d2-rot8"] > 2 * correct["hndesc-r2d2-rot4"], correct
