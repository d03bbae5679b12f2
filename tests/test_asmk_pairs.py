"""pairs_from_asmk: hloc's pairs_from_retrieval semantics with local descriptors and ASMK."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hloc_hndesc.config import ConfigError
from hloc_hndesc.retrieval import pairs_from_asmk
from hloc_hndesc.retrieval.descriptors import DescriptorFileError
from hloc_hndesc.retrieval.storage import RetrievalFileError

DIM = 32
SCENES = 3


def write_features(path: Path, names: list[str], seed: int = 0, dim: int = DIM, n: int = 150) -> Path:
    """hloc-layout file: per image ``descriptors`` (D, N), scene = index % SCENES.

    Each scene has its own 3D points (descriptors drawn from one distribution for all scenes);
    an image sees a random subset of its scene's points, with noise.
    """
    rng = np.random.default_rng(seed)
    points = np.random.default_rng(99).normal(size=(SCENES, 2 * n, dim))
    with h5py.File(path, "a") as handle:
        for name in names:
            scene = int(name.rsplit("_", 1)[1].split(".")[0]) % SCENES
            x = points[scene, rng.choice(2 * n, n, replace=False)] + 0.15 * rng.normal(size=(n, dim))
            group = handle.require_group(name)
            group.create_dataset("descriptors", data=x.T.astype(np.float16))
            group.create_dataset("keypoints", data=rng.uniform(0, 100, (n, 2)).astype(np.float32))
    return path


def read_pairs(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()]


@pytest.fixture()
def features(tmp_path):
    names = [f"db/img_{i:02d}.jpg" for i in range(24)] + [f"query/day/q_{i}.jpg" for i in range(6)]
    return write_features(tmp_path / "feats.h5", names)


def scene(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0]) % SCENES


def test_pairs_have_num_matched_per_query_no_self_pairs_and_right_scenes(features, tmp_path):
    out = tmp_path / "pairs.txt"
    pairs = pairs_from_asmk.main(features, out, 4, query_prefix="query/", db_prefix="db/")
    assert read_pairs(out) == pairs
    queries = sorted({q for q, _ in pairs})
    assert queries == [f"query/day/q_{i}.jpg" for i in range(6)]
    for q in queries:
        shortlist = [d for qq, d in pairs if qq == q]
        assert len(shortlist) == 4 and all(d.startswith("db/") for d in shortlist)
        assert sum(scene(d) == scene(q) for d in shortlist) >= 3
    # all images against all: every query gets num_matched others, never itself
    pairs = pairs_from_asmk.main(features, out, 50)
    assert all(q != d for q, d in pairs)
    assert len(pairs) == 30 * 29


def test_small_database_and_lists(features, tmp_path):
    (tmp_path / "db.txt").write_text("# database\ndb/img_00.jpg\ndb/img_01.jpg 1 2 3\n\ndb/img_02.jpg\n")
    pairs = pairs_from_asmk.main(
        features, tmp_path / "p.txt", 5, query_list=["query/day/q_0.jpg", "db/img_01.jpg"], db_list=tmp_path / "db.txt"
    )
    assert sorted(d for q, d in pairs if q == "db/img_01.jpg") == ["db/img_00.jpg", "db/img_02.jpg"]
    assert len([p for p in pairs if p[0] == "query/day/q_0.jpg"]) == 3
    # images without any descriptor (D, 0) are valid database images and queries (score 0)
    with h5py.File(features, "a") as handle:
        handle.create_dataset("db/empty_00.jpg/descriptors", data=np.zeros((DIM, 0), np.float16))
    pairs = pairs_from_asmk.main(features, tmp_path / "p.txt", 30, query_list=["db/empty_00.jpg", "query/day/q_1.jpg"], db_prefix="db/")
    assert len(pairs) == 24 + 25 and ("query/day/q_1.jpg", "db/empty_00.jpg") in pairs


def test_index_reuse_and_incremental_extension_match_a_fresh_build(features, tmp_path):
    codebook, index = tmp_path / "cb.npz", tmp_path / "ix.npz"
    first = [f"db/img_{i:02d}.jpg" for i in range(12)]
    pairs_from_asmk.main(features, tmp_path / "a.txt", 5, query_prefix="query/", db_list=first, codebook=codebook, index=index)
    assert codebook.is_file() and index.is_file()
    extended = pairs_from_asmk.main(features, tmp_path / "b.txt", 5, query_prefix="query/", db_prefix="db/", codebook=codebook, index=index)
    fresh = pairs_from_asmk.main(
        features, tmp_path / "c.txt", 5, query_prefix="query/", db_prefix="db/", codebook=codebook, index=tmp_path / "fresh.npz"
    )
    assert extended == fresh
    # the index now holds 24 images; a smaller selection never returns the others
    subset = pairs_from_asmk.main(features, tmp_path / "d.txt", 5, query_prefix="query/", db_list=first, codebook=codebook, index=index)
    assert {d for _, d in subset} <= set(first)
    assert read_pairs(tmp_path / "a.txt") == subset


def test_index_from_another_codebook_is_refused(features, tmp_path):
    index = tmp_path / "ix.npz"
    pairs_from_asmk.main(features, tmp_path / "a.txt", 3, codebook=tmp_path / "cb1.npz", index=index)
    with pytest.raises(RetrievalFileError, match="another codebook"):
        pairs_from_asmk.main(features, tmp_path / "a.txt", 3, codebook=tmp_path / "cb2.npz", index=index, conf={"codebook_size": 32})
    with pytest.raises(RetrievalFileError, match="db_assignments"):
        pairs_from_asmk.main(features, tmp_path / "a.txt", 3, codebook=tmp_path / "cb1.npz", index=index, conf={"db_assignments": 2})
    pairs_from_asmk.main(features, tmp_path / "a.txt", 3, codebook=tmp_path / "cb1.npz", index=index, conf={"db_assignments": 2}, overwrite=True)


def test_bad_inputs_give_clear_errors(features, tmp_path):
    with pytest.raises(DescriptorFileError, match="missing.h5: descriptor file not found"):
        pairs_from_asmk.main(tmp_path / "missing.h5", tmp_path / "p.txt", 3)
    with h5py.File(tmp_path / "global.h5", "w") as handle:
        handle.create_dataset("a.jpg/global_descriptor", data=np.ones(8, np.float32))
    with pytest.raises(DescriptorFileError, match="global.h5: no image with local descriptors"):
        pairs_from_asmk.main(tmp_path / "global.h5", tmp_path / "p.txt", 3)
    write_features(tmp_path / "q16.h5", ["query/q_0.jpg"], dim=16)
    with pytest.raises(DescriptorFileError, match=r"q16.h5: query/q_0.jpg/descriptors are 16-D, expected 32-D"):
        pairs_from_asmk.main(tmp_path / "q16.h5", tmp_path / "p.txt", 3, db_descriptors=features)
    with pytest.raises(ConfigError, match="unknown config key 'aplha'"):
        pairs_from_asmk.main(features, tmp_path / "p.txt", 3, conf={"aplha": 3})
    with pytest.raises(ValueError, match="prefix"):
        pairs_from_asmk.main(features, tmp_path / "p.txt", 3, db_prefix="nothing/")
    with pytest.raises(DescriptorFileError, match="no local descriptors"):
        pairs_from_asmk.main(features, tmp_path / "p.txt", 3, db_list=["db/img_00.jpg", "db/absent.jpg"])
    with pytest.raises(ValueError, match="num_matched"):
        pairs_from_asmk.main(features, tmp_path / "p.txt", 0)
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(RetrievalFileError, match="bad.npz"):
        pairs_from_asmk.main(features, tmp_path / "p.txt", 3, codebook=tmp_path / "bad.npz")
    assert not (tmp_path / "p.txt").exists()


def test_cli(features, tmp_path, capsys):
    out = tmp_path / "pairs.txt"
    argv = ["--descriptors", str(features), "--output", str(out), "--num_matched", "2", "--query_prefix", "query/",
            "--db_prefix", "db/", "--conf", "query_assignments=3", "alpha=3"]
    assert pairs_from_asmk.cli(argv) == 0
    assert len(read_pairs(out)) == 12
    assert pairs_from_asmk.cli([*argv[:6], "--conf", "bogus=1"]) == 2


@pytest.mark.hloc
def test_hloc_reads_the_pairs_and_selection_matches_hloc(features, tmp_path):
    pytest.importorskip("hloc", reason="hloc is not installed (peer dependency, not on PyPI)")
    from hloc.pairs_from_retrieval import parse_names as hloc_parse_names
    from hloc.utils.parsers import parse_retrieval

    names = pairs_from_asmk.name_sources([features])
    all_names = sorted(names)
    for prefix in ("db/", ["query/day", "db/img_1"]):
        assert pairs_from_asmk.parse_names(prefix, None, all_names) == hloc_parse_names(prefix, None, all_names)
    (tmp_path / "list.txt").write_text("db/img_03.jpg\ndb/img_04.jpg\n")
    assert pairs_from_asmk.parse_names(None, tmp_path / "list.txt", all_names) == hloc_parse_names(None, tmp_path / "list.txt", all_names)
    pairs = pairs_from_asmk.main(features, tmp_path / "p.txt", 3, query_prefix="query/", db_prefix="db/")
    retrieval = parse_retrieval(tmp_path / "p.txt")
    assert sum(len(v) for v in retrieval.values()) == len(pairs) == 18


def write_model(path: Path, names: list[str]) -> Path:
    """A COLMAP model with one camera and the images ``names`` (no points)."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=100, height=100, params=[100, 50, 50], camera_id=1))
    for i, name in enumerate(names, 1):
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=i), pycolmap.Rigid3d())
    path.mkdir(parents=True, exist_ok=True)
    rec.write(str(path))
    return path


def test_db_model_selects_the_database(features, tmp_path):
    model = write_model(tmp_path / "model", ["db/img_03.jpg", "db/img_07.jpg", "db/img_11.jpg"])
    pairs = pairs_from_asmk.main(features, tmp_path / "p.txt", 5, query_prefix="query/", db_model=model)
    assert {d for _, d in pairs} <= {"db/img_03.jpg", "db/img_07.jpg", "db/img_11.jpg"} and len(pairs) == 6 * 3
    with pytest.raises(FileNotFoundError, match="COLMAP model folder not found"):
        pairs_from_asmk.main(features, tmp_path / "p.txt", 5, db_model=tmp_path / "nothing")
