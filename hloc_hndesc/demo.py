"""The demo: extract, match, verify geometry with pycolmap, plot matches; SfM through hloc if present.

``hloc-hndesc demo`` runs on the bundled photos (``hloc_hndesc/assets/sacre_coeur``) with a
conf of this package (``hynet`` by default, the shipped weights) or the SIFT baseline
(``--method sift``), or any ``CONF=WEIGHTS``. For every image pair (or, with a retrieval conf
such as ``how`` or ``how-asmk``, each image's shortlist of nearest images): mutual nearest-neighbour
matches (ratio test for SIFT, as in the benchmarks), a fundamental matrix by pycolmap's
LO-RANSAC, and a PNG of the inlier matches. With hloc installed the photos are also
reconstructed (hloc's ``match_features`` + ``reconstruction``, a camera per image size).
"""

from __future__ import annotations

import dataclasses
import itertools
from importlib import resources
from pathlib import Path

import numpy as np
import pycolmap

from . import logger
from .evaluation.methods import Method, feature_cache, parse_method, read_all_features
from .io import list_images, read_image
from .plots import plot_matches, write_model_summary
from .retrieval import pairs_from_asmk
from .retrieval.global_search import rank_global, read_global_descriptors, shortlist_pairs, unordered_pairs

DEMO_SCENE = Path(str(resources.files("hloc_hndesc.assets"))) / "sacre_coeur"
RANSAC_MAX_ERROR = 2.0


@dataclasses.dataclass
class PairResult:
    """One verified pair: keypoint counts, matches, fundamental-matrix inliers, plot path."""

    name0: str
    name1: str
    keypoints: tuple[int, int]
    matches: int
    inliers: int
    plot: Path | None


@dataclasses.dataclass
class DemoReport:
    """What the demo did: per-pair results and, with hloc, the reconstruction summary."""

    method: str
    features: Path
    pairs: list[PairResult] = dataclasses.field(default_factory=list)
    retrieval: str | None = None  # the retrieval method's label when pairs came from a shortlist
    sfm: dict[str, float] | None = None  # ReconstructionStats as a dict


def verify_pair(kpts0: np.ndarray, kpts1: np.ndarray, max_error: float = RANSAC_MAX_ERROR, seed: int = 0) -> np.ndarray:
    """Inlier mask (M,) of matched (M, 2) points under a LO-RANSAC fundamental matrix (pycolmap)."""
    if len(kpts0) < 8:
        return np.zeros(len(kpts0), bool)
    options = pycolmap.RANSACOptions(max_error=max_error, random_seed=seed, num_threads=1)
    result = pycolmap.estimate_fundamental_matrix(
        np.ascontiguousarray(kpts0, np.float64), np.ascontiguousarray(kpts1, np.float64), options
    )
    if result is None:
        return np.zeros(len(kpts0), bool)
    return np.asarray(result["inlier_mask"], bool).reshape(-1)


def retrieval_pairs(
    retrieval: Method, image_dir: Path, names: list[str], output: Path, num_matched: int
) -> list[tuple[str, str]]:
    """Each image's ``num_matched`` nearest images by ``retrieval``, as unordered pairs.

    A global conf (``how``) ranks by dot product; a local one (``how-asmk``, or any local
    features) through ASMK with a codebook trained on these images.
    """
    features = retrieval.extract(image_dir, names, feature_cache(output / "features", image_dir))
    if retrieval.conf["model"].get("mode") == "global":
        return shortlist_pairs(names, rank_global(read_global_descriptors(features, names)), num_matched)
    ranked = pairs_from_asmk.main(features, output / "pairs-asmk.txt", num_matched, query_list=names, db_list=names)
    return unordered_pairs(names, ranked)


def run_demo(
    method: str | Method = "hynet",
    scene_dir: str | Path = DEMO_SCENE,
    output: str | Path = "outputs/demo",
    sfm: bool = True,
    retrieval: str | Method | None = None,
    num_matched: int = 5,
) -> DemoReport:
    """Run the demo on ``scene_dir/images``; results, plots and the model go to ``output``.

    ``retrieval`` (a conf such as ``how`` / ``how-asmk``, or ``CONF=WEIGHTS``): match only
    each image's ``num_matched`` nearest images instead of all pairs.
    """
    if int(num_matched) < 1:
        raise ValueError(f"demo: num_matched must be at least 1, got {num_matched}")
    method = parse_method(method) if isinstance(method, str) else method
    if isinstance(retrieval, str):
        retrieval = parse_method(retrieval)
    scene_dir, output = Path(scene_dir), Path(output)
    image_dir = scene_dir / "images"
    names = list_images(image_dir)
    if len(names) < 2:
        raise FileNotFoundError(f"demo: {image_dir} needs at least 2 images, found {len(names)}")
    features = method.extract(image_dir, names, feature_cache(output / "features", image_dir))
    feats = read_all_features(features, names)
    images = {name: read_image(image_dir / name) for name in names}  # decoded once for all plots
    if retrieval is None:
        pairs = list(itertools.combinations(names, 2))
    else:
        pairs = retrieval_pairs(retrieval, image_dir, names, output, num_matched)
    report = DemoReport(method.label, features, retrieval=None if retrieval is None else retrieval.label)
    for name0, name1 in pairs:
        f0, f1 = feats[name0], feats[name1]
        matches = method.match(f0, f1)
        k0, k1 = f0["keypoints"][matches[:, 0]], f1["keypoints"][matches[:, 1]]
        inliers = verify_pair(k0, k1)
        plot = output / "matches" / f"{Path(name0).stem}__{Path(name1).stem}.png"
        title = f"{method.label}: {int(inliers.sum())} inliers / {len(matches)} matches"
        plot_matches(images[name0], images[name1], k0, k1, inliers, plot, title=title)
        report.pairs.append(PairResult(name0, name1, (len(f0["keypoints"]), len(f1["keypoints"])), len(matches), int(inliers.sum()), plot))
    if sfm:
        from .hloc_plugin import hloc_available

        if hloc_available():
            from .evaluation.sfm import run_sfm

            result = run_sfm(
                method, scene_dir, output / "sfm", output / "features", camera_mode=pycolmap.CameraMode.AUTO,
                pairs=None if retrieval is None else pairs,
            )
            report.sfm = dataclasses.asdict(result.stats)
            write_model_summary(result.reconstruction, output / "sfm", f"{method.label}: SfM of {scene_dir.name}")
        else:
            logger.info("hloc is not installed: the demo skips the reconstruction")
    return report
