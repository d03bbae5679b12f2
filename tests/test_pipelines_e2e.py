"""The three pipelines end to end through the real hloc, on miniature datasets built from Strecha scenes.

Aachen v1.1 and InLoc layouts are built from fountain-P11 (real photos, ground-truth cameras;
:mod:`hloc_hndesc.evaluation.miniature`), ETH SfM runs on Herz-Jesu-P8. Images are small
(576x384 database images) so the whole module fits the CI budget. Localisation quality is
asserted with the SIFT baseline; our learned confs are run with random weights for plumbing.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import random_checkpoint

pytest.importorskip("hloc", reason="hloc is not installed (peer dependency, not on PyPI)")
pytest.importorskip("hloc.localize_inloc", reason="hloc is installed but its localize_inloc does not import (scipy?)")

from hloc_hndesc.evaluation.localization import read_poses  # noqa: E402
from hloc_hndesc.evaluation.miniature import INLOC_FOCAL, build_aachen, build_inloc, build_strecha  # noqa: E402
from hloc_hndesc.pipelines import aachen_v1_1, eth_sfm, inloc  # noqa: E402
from hloc_hndesc.pipelines.layout import check_inloc, image_size  # noqa: E402
from hloc_hndesc.pipelines.runner import build_parser, load_settings  # noqa: E402

pytestmark = [pytest.mark.hloc, pytest.mark.slow]
SCALE = 0.375  # 1536x1024 -> 576x384


def _settings(name: str, dataset: Path, outputs: Path, *options: str):
    args = build_parser(name, "test").parse_args(["--dataset", str(dataset), "--outputs", str(outputs), *options])
    return load_settings(name, args)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and ".steps" not in p.parts}


@pytest.fixture(scope="module")
def fountain(data_dir: Path) -> Path:
    return data_dir / "strecha" / "fountain-P11"


@pytest.fixture(scope="module")
def aachen(fountain: Path, tmp_path_factory):
    return build_aachen(fountain, tmp_path_factory.mktemp("datasets") / "aachen_v1.1", scale=SCALE)


@pytest.fixture(scope="module")
def inloc_mini(fountain: Path, tmp_path_factory):
    return build_inloc(fountain, tmp_path_factory.mktemp("datasets") / "inloc", scale=SCALE, query_size=(1024, 768))


def _check_results(path: Path, expected: set[str]) -> dict:
    lines = [line.split() for line in path.read_text().splitlines()]
    assert all(len(fields) == 8 for fields in lines)
    assert {fields[0] for fields in lines} == expected  # query basenames
    for fields in lines:
        assert abs(np.linalg.norm(np.array(fields[1:5], float)) - 1) < 1e-6
    return read_poses(path)


def test_aachen_miniature_end_to_end_and_resume(aachen, tmp_path):
    outputs = tmp_path / "out"
    options = ["--features", "sift", "--retrieval", "exhaustive", "--ground-truth", str(aachen.ground_truth), "--plots", "2"]
    assert aachen_v1_1.main(["--dataset", str(aachen.root), "--outputs", str(outputs), *options]) == 0
    results = next(outputs.glob("Aachen-v1.1_hloc_*.txt"))
    _check_results(results, {n.split("/")[-1] for n in aachen.conditions})
    evaluation = json.loads((outputs / "evaluation.json").read_text())
    assert evaluation["day"]["queries"] == 3 and evaluation["night"]["queries"] == 3
    assert evaluation["day"]["recall"][0] == 1.0  # every day query within 0.25 m and 2 degrees
    assert evaluation["night"]["recall"][1] >= 2 / 3  # synthetic night: within 0.5 m, 5 degrees
    assert {"localizations.png", "model_summary.txt", "model_top_view.png"} <= {p.name for p in (outputs / "plots").iterdir()}
    assert len(list((outputs / "plots").glob("query_*.png"))) == 2
    assert (outputs / "pipeline.log").read_text().count("Step localize: done") == 1
    with h5py.File(next(outputs.glob("hndesc_sift*.h5"))) as handle:
        assert handle["db/0000.jpg/keypoints"].dtype == np.float32

    before = _mtimes(outputs)
    again = aachen_v1_1.run(aachen.root, outputs, _settings("aachen_v1_1", aachen.root, outputs, *options))
    assert again.steps.ran == [] and len(again.steps.skipped) == 7
    after = _mtimes(outputs)
    derived = ("pipeline.log", "evaluation.json", "plots")  # appended to, or redrawn, by every run
    assert {k: v for k, v in after.items() if not k.startswith(derived)} == {k: v for k, v in before.items() if not k.startswith(derived)}

    # an interrupted localisation step: its matches half written, no results; only that part is redone
    poses = results.read_text()
    results.unlink()
    loc_matches = next(outputs.glob("matches-loc_*.h5"))
    with h5py.File(loc_matches, "a") as handle:
        first = next(iter(handle))
        del handle[first]
    third = aachen_v1_1.run(aachen.root, outputs, _settings("aachen_v1_1", aachen.root, outputs, *options))
    assert third.steps.ran == ["match-loc", "localize"]
    assert results.read_text() == poses  # seeded: the same poses


def test_inloc_miniature_honours_hloc_conventions(inloc_mini):
    root = inloc_mini.root
    layout = check_inloc(root, content_samples=-1)
    assert layout.warnings and "4032*28/36" in layout.warnings[0]  # small queries: the warning says what hloc assumes
    from scipy.io import loadmat

    cutout = layout.database[0]
    xyz = loadmat(str(root / f"{cutout}.mat"))["XYZcut"]
    assert xyz.dtype == np.float64 and xyz.shape == (384, 576, 3) and 0.3 < np.isfinite(xyz).all(-1).mean()
    assert image_size(root / layout.queries[0]) == (1024, 768)
    assert all(Path(c).name[:3] == "STR" for c in layout.database) and INLOC_FOCAL == pytest.approx(3136.0)


def test_inloc_miniature_end_to_end_and_resume(inloc_mini, tmp_path):
    outputs = tmp_path / "out"
    options = ["--features", "sift", "--retrieval", "exhaustive", "--ground-truth", str(inloc_mini.ground_truth), "--plots", "1"]
    assert inloc.main(["--dataset", str(inloc_mini.root), "--outputs", str(outputs), *options]) == 0
    results = next(outputs.glob("InLoc_hloc_*.txt"))
    _check_results(results, {n.split("/")[-1] for n in inloc_mini.conditions})
    evaluation = json.loads((outputs / "evaluation.json").read_text())["InLoc"]
    assert evaluation["recall"][0] == 1.0 and evaluation["median_position_error"] < 0.05  # fountain-P11 is in metres
    assert (outputs / "plots" / "localizations.png").is_file() and len(list((outputs / "plots").glob("query_*.png"))) == 1
    again = inloc.run(inloc_mini.root, outputs, _settings("inloc", inloc_mini.root, outputs, *options))
    assert again.steps.ran == [] and again.failed == []
    # no cutout with enough matches: hloc's localize_inloc would abort; every query is logged as failed
    options[options.index("--plots") + 1] = "0"
    strict = inloc.run(inloc_mini.root, outputs, _settings("inloc", inloc_mini.root, outputs, *options, "--skip-matches", "1000000"))
    assert strict.steps.ran == ["localize"] and len(strict.failed) == 3 and strict.results.read_text() == ""


@pytest.fixture(scope="module")
def herz_jesu_small(data_dir: Path, tmp_path_factory) -> Path:
    return build_strecha(data_dir / "strecha" / "Herz-Jesu-P8", tmp_path_factory.mktemp("datasets") / "Herz-Jesu-P8", SCALE)


def test_eth_sfm_on_a_strecha_scene(herz_jesu_small, tmp_path):
    outputs = tmp_path / "out"
    assert eth_sfm.main(["--dataset", str(herz_jesu_small), "--outputs", str(outputs), "--features", "sift", "--single-camera", "--plots", "1"]) == 0
    stats = json.loads((outputs / "eth_sfm.json").read_text())
    assert stats["registered"] == 8 and stats["points"] > 1000 and stats["reprojection_error"] < 1.0
    errors = stats["camera_errors"]
    assert errors["center_median"] < 0.05 and errors["rotation_median"] < 0.3  # Strecha units are metres
    assert "| sift |" in (outputs / "eth_table.md").read_text()
    assert {"model_summary.txt", "model_top_view.png"} <= {p.name for p in (outputs / "plots").iterdir()}
    settings = _settings("eth_sfm", herz_jesu_small, outputs, "--features", "sift", "--single-camera", "--plots", "0")
    assert eth_sfm.run(herz_jesu_small, outputs, settings).steps.ran == []
    # the same ground truth as a COLMAP model: the same errors, nothing recomputed
    from hloc_hndesc.evaluation.datasets import read_strecha_scene
    from hloc_hndesc.evaluation.localization import reference_from_ground_truth

    model = tmp_path / "gt_model"
    model.mkdir()
    reference_from_ground_truth(read_strecha_scene(herz_jesu_small)).write(model)
    settings = _settings("eth_sfm", herz_jesu_small, outputs, "--features", "sift", "--single-camera", "--plots", "0",
                         "--ground-truth", str(model))
    run = eth_sfm.run(herz_jesu_small, outputs, settings)
    assert run.steps.ran == [] and run.errors.summary()["center_median"] == pytest.approx(errors["center_median"], abs=1e-6)


def test_eth_sfm_runs_our_conf_with_given_weights(herz_jesu_small, tmp_path):
    weights = random_checkpoint("hndesc-r2d2", tmp_path / "r2d2.pth")
    folder = tmp_path / "four"
    (folder / "images").mkdir(parents=True)
    for name in sorted((herz_jesu_small / "images").iterdir())[:4]:
        (folder / "images" / name.name).write_bytes(name.read_bytes())
    outputs = tmp_path / "out"
    settings = _settings("eth_sfm", folder, outputs, "--features", f"hndesc-r2d2={weights}", "--resize-max", "256", "--plots", "0")
    run = eth_sfm.run(folder, outputs, settings)  # random weights: any model, or none, is a valid outcome
    assert run.steps.ran == ["extract", "pairs", "match", "reconstruct"] and run.stats.total == 4
    assert json.loads((outputs / "eth_sfm.json").read_text())["features"] == f"hndesc-r2d2 ({weights.stem})"


@pytest.mark.parametrize("kind", ["how-asmk", "how"])
def test_learned_retrieval_writes_pairs(aachen, tmp_path, kind):
    """HOW (random weights, plumbing only) -> ASMK over local descriptors, or hloc's global ranking."""
    from hloc_hndesc.pipelines.components import resolve_retrieval
    from hloc_hndesc.pipelines.layout import check_aachen

    layout = check_aachen(aachen.root)
    weights = random_checkpoint(kind, tmp_path / "how.pth")
    retrieval = resolve_retrieval(f"{kind}={weights}", resize_max=128)  # HOW is multi-scale: keep it small
    queries, database = sorted(layout.queries)[::3], layout.database[:4]
    pairs = retrieval.pairs(layout.images, queries, database, 2, tmp_path / "pairs.txt", tmp_path)
    lines = [line.split() for line in pairs.read_text().splitlines()]
    assert len(lines) == 2 * len(queries) and all(q in queries and d in database for q, d in lines)


def test_hloc_own_conf_by_name(herz_jesu_small, tmp_path):
    """hloc's own SIFT (``hloc:sift``, its ``dog`` extractor) through the pipelines' extraction, keypoints kept float32."""
    from hloc_hndesc.pipelines.components import SpecError, resolve_features, resolve_matcher

    features = resolve_features("hloc:sift", resize_max=320)
    assert features.hloc_conf["model"]["name"] == "dog" and resolve_matcher(None, features)["output"] == "matches-NN-mutual-ratio.8"
    path = features.extract(herz_jesu_small / "images", ["0000.jpg", "0001.jpg"], tmp_path)
    with h5py.File(path) as handle:
        assert handle["0000.jpg/keypoints"].dtype == np.float32 and len(handle["0001.jpg/keypoints"]) > 100
    with pytest.raises(SpecError, match="unknown features"):
        resolve_features("no-such-conf")
    with pytest.raises(SpecError, match="torchvision"):
        resolve_features("netvlad")  # hloc's NetVLAD needs torchvision, which the project does not install
