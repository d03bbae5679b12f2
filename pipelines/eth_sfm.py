"""ETH SfM (Schönberger et al. 2017) on any image folder through hloc, with camera errors when ground truth is known.

python -m hloc_hndesc.pipelines.eth_sfm --dataset datasets/Fountain --outputs outputs/eth/Fountain \
    [--features hynet] [--pairs exhaustive] [--single-camera]

Steps: local features of ``<dataset>/images`` (or the dataset folder itself) -> exhaustive pairs,
or ``--num-pairs`` retrieved images per image (``--pairs how-asmk`` or a global conf) -> matching
-> hloc's ``reconstruction.main`` (COLMAP incremental mapping; ``--single-camera`` shares one
camera of model ``--camera-model``) -> the ETH table (registered images, sparse points, mean
track length, mean reprojection error; :mod:`hloc_hndesc.evaluation.sfm`). With ground truth
(Strecha ``<image>.camera`` files, by default ``<dataset>/cameras``, or a COLMAP model given
with ``--ground-truth``): camera centre and rotation errors after a similarity alignment.
Writes ``eth_sfm.json``, ``eth_table.md``, the model (``sfm_*``), plots; every step resumes.
Defaults: ``configs/pipelines/eth_sfm.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
from omegaconf import DictConfig

from .. import logger
from ..evaluation.datasets import read_strecha_camera
from ..evaluation.sfm import (
    CameraErrors,
    Poses,
    ReconstructionStats,
    camera_errors,
    mean_keypoints,
    reconstruction_poses,
    reconstruction_stats,
    strecha_poses,
)
from .components import log_components, match, resolve_features, resolve_matcher, resolve_retrieval, spec_tag
from .layout import ImageFolderLayout, check_image_folder
from ..plots import plot_correspondences, write_model_summary
from .runner import attach_log, detach_log, exit_with, main_of
from .steps import Steps, write_json_atomic

NAME = "eth_sfm"
HEADER = [
    "features", "features / image", "registered", "sparse points", "track length", "reproj. error (px)",
    "centre error median / max", "rotation error median / max (°)", "raw rotation median (°)", "common offset (°)",
]


@dataclass
class SfMRun:
    """The files a run wrote, the ETH statistics and, with ground truth, the camera errors."""

    model: pycolmap.Reconstruction | None
    sfm_dir: Path
    stats: ReconstructionStats
    keypoints_per_image: float
    errors: CameraErrors | None
    table: Path
    steps: Steps
    plots: list[Path] = field(default_factory=list)


def ground_truth_poses(layout: ImageFolderLayout) -> Poses | None:
    """The ground-truth cameras of the folder's images, if it has any."""
    if layout.ground_truth is None:
        return None
    if layout.ground_truth_kind == "colmap":
        return reconstruction_poses(pycolmap.Reconstruction(layout.ground_truth))
    return strecha_poses([read_strecha_camera(layout.ground_truth / f"{n}.camera") for n in layout.names])


def _fmt(value: float, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table_row(label: str, stats: ReconstructionStats, keypoints: float, errors: CameraErrors | None) -> list[str]:
    """One row of the ETH table (:data:`HEADER`)."""
    e = errors.summary() if errors is not None else None
    return [
        label, f"{keypoints:.0f}", f"{stats.registered}/{stats.total}", str(stats.points),
        _fmt(stats.track_length, 2), _fmt(stats.reprojection_error, 2),
        f"{e['center_median']:.4f} / {e['center_max']:.4f}" if e else "–",
        f"{e['rotation_median']:.3f} / {e['rotation_max']:.3f}" if e else "–",
        f"{e['rotation_raw_median']:.3f}" if e else "–",
        f"{e['offset_deg']:.3f}" if e else "–",
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)])


def plot_pairs(model: pycolmap.Reconstruction, image_dir: Path, features: Path, matches: Path, pairs: Path, out_dir: Path, count: int) -> list[Path]:
    """The ``count`` pairs with most matches; green: both keypoints in the same 3D point of the model."""
    from hloc.utils.io import get_keypoints, get_matches

    ids = {im.name: im for im in model.images.values()}
    candidates = []
    for line in pairs.read_text().splitlines():
        if line.strip():
            a, b = line.split()
            candidates.append((len(get_matches(matches, a, b)[0]), a, b))
    paths = []
    for _, a, b in sorted(candidates, reverse=True)[:count]:
        m, _ = get_matches(matches, a, b)

        def point_ids(name: str, index: np.ndarray) -> np.ndarray:
            image = ids.get(name)
            if image is None or not image.has_pose:
                return np.full(len(index), -1)
            points = image.points2D
            return np.array([points[i].point3D_id if points[i].has_point3D() else -1 for i in index])

        pa, pb = point_ids(a, m[:, 0]), point_ids(b, m[:, 1])
        good = (pa >= 0) & (pa == pb)
        path = out_dir / f"pair_{Path(a).stem}__{Path(b).stem}.png"
        title = f"{a} - {b}: {int(good.sum())} in the model / {len(m)} matches"
        paths.append(plot_correspondences(image_dir / a, image_dir / b, get_keypoints(features, a)[m[:, 0]],
                                          get_keypoints(features, b)[m[:, 1]], good, path, title))
    return paths


def run(dataset: Path, outputs: Path, conf: DictConfig) -> SfMRun:
    """Run the pipeline on ``dataset`` into ``outputs`` (see the module docstring)."""
    layout = check_image_folder(dataset, conf.ground_truth)
    features = resolve_features(conf.features, conf.resize_max)
    matcher = resolve_matcher(conf.matcher, features)
    retrieval = resolve_retrieval(conf.pairs)
    try:
        camera_model = pycolmap.CameraModelId(getattr(pycolmap.CameraModelId, conf.camera_model))
    except AttributeError:
        from ..config import ConfigError

        raise ConfigError(f"camera_model: {conf.camera_model!r} is not a COLMAP camera model") from None
    handler = attach_log(outputs)
    try:
        return _run(layout, outputs, conf, features, matcher, retrieval, camera_model.name)
    finally:
        detach_log(handler)


def _run(layout, outputs, conf, features, matcher, retrieval, camera_model) -> SfMRun:
    from hloc import reconstruction

    log_components(features, matcher, retrieval)
    steps = Steps(outputs)
    names = layout.names
    feature_path = features.path(outputs)
    steps.run("extract", lambda: features.extract(layout.images, names, outputs),
              {"features": features.key, "names": names}, [layout.images / n for n in names], [feature_path])
    tag = spec_tag(retrieval.spec)
    pairs = outputs / (f"pairs-{tag}.txt" if retrieval.kind == "exhaustive" else f"pairs-{tag}{conf.num_pairs}.txt")
    steps.run("pairs", lambda: retrieval.pairs(layout.images, names, names, conf.num_pairs, pairs, outputs),
              {"pairs": retrieval.spec, "num": conf.num_pairs, "names": names},
              [layout.images / n for n in names] if retrieval.kind != "exhaustive" else [], [pairs])
    matches = outputs / f"matches_{features.key}_{matcher['output']}_{pairs.stem}.h5"
    steps.run("match", lambda: match(matcher, pairs, feature_path, matches), {"matcher": matcher}, [pairs, feature_path], [matches])
    camera_mode = pycolmap.CameraMode.SINGLE if conf.single_camera else pycolmap.CameraMode.AUTO
    sfm_dir = outputs / f"sfm_{features.key}_{matcher['output']}_{pairs.stem}{'_single' if conf.single_camera else ''}"
    outcome = outputs / ".steps" / f"{sfm_dir.name}.result.json"

    def reconstruct() -> None:
        pycolmap.set_random_seed(conf.seed)
        model = reconstruction.main(sfm_dir, layout.images, pairs, feature_path, matches, camera_mode=camera_mode,
                                    image_list=names, image_options={"camera_model": camera_model})
        write_json_atomic(outcome, {"reconstructed": model is not None})

    steps.run("reconstruct", reconstruct, {"seed": conf.seed, "camera_mode": camera_mode.name, "camera_model": camera_model},
              [pairs, feature_path, matches], [outcome])
    model = pycolmap.Reconstruction(sfm_dir) if (sfm_dir / "images.bin").is_file() and "true" in outcome.read_text() else None
    stats = reconstruction_stats(model, len(names))
    keypoints = mean_keypoints(feature_path, names)
    errors = None
    truth = ground_truth_poses(layout)
    if truth is not None and model is not None:
        try:
            errors = camera_errors(truth, reconstruction_poses(model))
        except ValueError as error:
            logger.warning("No camera errors: %s", error)
    row = table_row(features.label, stats, keypoints, errors)
    table = outputs / "eth_table.md"
    table.write_text(f"{layout.root.name}\n\n{markdown_table(HEADER, [row])}\n")
    write_json_atomic(outputs / "eth_sfm.json", {
        "dataset": str(layout.root), "features": features.label, "matcher": matcher["output"], "pairs": retrieval.spec,
        **asdict(stats), "keypoints_per_image": keypoints, "camera_errors": errors.summary() if errors else None,
        "missing": errors.missing if errors else None,
    })
    logger.info("ETH SfM of %s:\n%s", layout.root.name, markdown_table(HEADER, [row]))
    plots = []
    if conf.plots > 0:
        plots.append(write_model_summary(model, outputs / "plots", f"{layout.root.name}, {features.label}"))
        if model is not None:
            plots += plot_pairs(model, layout.images, feature_path, matches, pairs, outputs / "plots", conf.plots)
    return SfMRun(model, sfm_dir, stats, keypoints, errors, table, steps, plots)


main = main_of(NAME, __doc__.splitlines()[0], run)

if __name__ == "__main__":
    exit_with(main)
