"""Done-criterion of the plugin: official R2D2 weights through our `hndesc-r2d2` conf and
hloc's own extract/match/reconstruction register all 10 sacre_coeur images.

Needs hloc and the official checkpoint (env HLOC_HNDESC_R2D2_OFFICIAL, e.g. r2d2_WASF_N16.pt);
takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("hloc", reason="hloc is not installed (peer dependency, not on PyPI)")
OFFICIAL = os.environ.get("HLOC_HNDESC_R2D2_OFFICIAL")
pytestmark = [
    pytest.mark.hloc,
    pytest.mark.slow,
    pytest.mark.skipif(not OFFICIAL, reason="set HLOC_HNDESC_R2D2_OFFICIAL to an official R2D2 checkpoint"),
]


def test_sacre_coeur_reconstruction_with_official_r2d2(sacre_coeur: Path, tmp_path: Path):
    import hloc_hndesc  # noqa: F401  (registers)
    from hloc import extract_features, match_features, pairs_from_exhaustive, reconstruction

    conf = extract_features.confs["hndesc-r2d2"]
    conf = {**conf, "model": {**conf["model"], "weights": OFFICIAL}}
    names = sorted(p.name for p in sacre_coeur.glob("*.jpg"))
    assert len(names) == 10
    feats = extract_features.main(conf, sacre_coeur, tmp_path, as_half=False)
    pairs = tmp_path / "pairs.txt"
    pairs_from_exhaustive.main(pairs, image_list=names)
    matches = match_features.main(match_features.confs["NN-mutual"], pairs, conf["output"], tmp_path)
    model = reconstruction.main(tmp_path / "sfm", sacre_coeur, pairs, feats, matches)
    assert model is not None
    assert model.num_reg_images() == 10
    assert model.num_points3D() > 1000
    print(f"registered {model.num_reg_images()}/10, {model.num_points3D()} points, "
          f"track {model.compute_mean_track_length():.2f}, reproj {model.compute_mean_reprojection_error():.2f} px")
