"""Retrieval quality on the real data here: label mAP, Strecha scene mAP, covisible recall.

python -m benchmarks.retrieval --data ../shared/data --method sift --method hynet \
    --method how-asmk --method how

- Methods: ``CONF`` or ``CONF=WEIGHTS`` (:mod:`hloc_hndesc.evaluation.methods`). Local-feature
  confs (``sift``, ``hynet``, ``how-asmk``, ...) are ranked with ASMK
  (:mod:`hloc_hndesc.retrieval`, default settings: alpha 3, tau 0, 5 query assignments);
  global confs (``how``) by the dot product of their L2-normalised ``global_descriptor``,
  as hloc's pairs_from_retrieval. A conf whose weights are neither shipped nor given is not
  run: its row says so (rerun with ``CONF=PATH`` once weights exist).
- Codebook: k-means on the descriptors of ``--codebook-count`` images of
  ``--codebook-images`` (default: the first 60 of train_natural/urban100, architecture photos
  disjoint from the evaluation images), at most ``--train-descriptors`` of them; the size
  follows from that number (:func:`~hloc_hndesc.retrieval.codebook.default_codebook_size`).
- Evaluations (every image a query against all the others of its set, itself excluded):
  (1) mAP with the labels of derived_scene_retrieval/labels.tsv (69 images, 7 landmarks);
  (2) mAP on the 44 Strecha images with the scene folders as classes (fountain-P11,
  Herz-Jesu-P8, Herz-Jesu-P25; the other Herz-Jesu set shows the same church from other
  photos, so it is ignored (junk) for Herz-Jesu queries); (3) recall at 5/10/20 of the
  covisible Strecha images (ground-truth cameras,
  :func:`~hloc_hndesc.evaluation.retrieval.strecha_covisibility`, overlap >= 0.5 and >= 0.8)
  in the shortlist of each Strecha image among the 43 others, the other Herz-Jesu set ignored.
- Baselines in the same run: RootSIFT + ASMK (``--method sift``) and random rankings (mean of
  100 seeded permutations).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from benchmarks.report import publish, table
from hloc_hndesc.confs import shipped_weights_name
from hloc_hndesc.evaluation.datasets import read_strecha_scene
from hloc_hndesc.evaluation.methods import Method, feature_cache, parse_method
from hloc_hndesc.evaluation.retrieval import (
    label_ground_truth,
    mean_average_precision,
    shortlist_recall,
    strecha_covisibility,
)
from hloc_hndesc.retrieval.asmk import ASMK, asmk_conf
from hloc_hndesc.retrieval.descriptors import descriptor_dim, read_descriptors
from hloc_hndesc.retrieval.global_search import rank_global, read_global_descriptors
from hloc_hndesc.retrieval.pairs_from_asmk import prepare_codebook, prepare_index
from hloc_hndesc.weights import read_registry

KEY = "retrieval"
STRECHA_SCENES = ("fountain-P11", "Herz-Jesu-P8", "Herz-Jesu-P25")
KS = (5, 10, 20)
OVERLAPS = (0.5, 0.8)
logger = logging.getLogger("benchmarks.retrieval")


@dataclass
class Benchmark:
    """The evaluation images and their ground truth."""

    root: Path
    names: list[str]
    labels: list[str]
    strecha: list[str]
    scenes: list[str]
    covisible: dict[float, np.ndarray] = field(default_factory=dict)


def load_benchmark(root: Path) -> Benchmark:
    """Names and labels of labels.tsv; the Strecha images, their scenes and covisibility."""
    lines = (root / "derived_scene_retrieval" / "labels.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    names, labels = [r[0] for r in rows], [r[1] for r in rows]
    strecha, scenes, cameras = [], [], {}
    for scene in STRECHA_SCENES:
        cams = read_strecha_scene(root / "strecha" / scene)
        cameras[scene] = cams
        strecha += [f"strecha/{scene}/images/{c.name}" for c in cams]
        scenes += [scene] * len(cams)
    covisible = {}
    for overlap in OVERLAPS:
        matrix = np.zeros((len(strecha), len(strecha)), bool)
        offset = 0
        for scene in STRECHA_SCENES:
            n = len(cameras[scene])
            matrix[offset : offset + n, offset : offset + n] = strecha_covisibility(cameras[scene], overlap)
            offset += n
        covisible[overlap] = matrix
    return Benchmark(root, names, labels, strecha, scenes, covisible)


def missing_weights(method: Method) -> str | None:
    """Why ``method`` cannot run (no weights given and none shipped), or None."""
    if method.weights is not None:
        return None
    name = shipped_weights_name(method.conf["model"])
    if name and name not in read_registry():
        return f"no `{name}` weights are shipped yet and none were given: rerun with `--method {method.label}=PATH`"
    return None


def is_global(method: Method) -> bool:
    return method.conf["model"].get("mode") == "global"


def codebook_names(root: Path, folder: str, count: int) -> list[str]:
    """The first ``count`` images (sorted) of ``root/folder``, relative to ``root``."""
    images = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [p.relative_to(root).as_posix() for p in images[:count]]


@dataclass
class Run:
    """Rankings (indices into the image list, self excluded) and what they cost."""

    rankings: list[np.ndarray]
    query_ms: float
    info: dict


def run_global(method: Method, bench: Benchmark, cache: Path) -> Run:
    """Rank by the dot product of global descriptors (hloc's pairs_from_retrieval)."""
    h5 = method.extract(bench.root, bench.names, feature_cache(cache, bench.root))
    desc = read_global_descriptors(h5, bench.names)
    start = time.perf_counter()
    rankings = rank_global(desc)
    elapsed = (time.perf_counter() - start) * 1e3 / len(bench.names)
    return Run(rankings, elapsed, {"bytes_per_image": desc.shape[1] * 4, "dim": desc.shape[1]})


def asmk_setup(method: Method, bench: Benchmark, cache: Path, train: list[str], conf: dict) -> tuple[ASMK, Path]:
    """Features of the evaluation and ``train`` images (cached) and a codebook on ``train`` (cached)."""
    h5 = method.extract(bench.root, sorted(set(bench.names) | set(train)), feature_cache(cache, bench.root))
    conf = asmk_conf(conf)
    tag = hashlib.sha256(json.dumps([train, OmegaConf.to_container(conf)], sort_keys=True).encode()).hexdigest()[:8]
    codebook_path = cache / "asmk" / f"{method.key}-codebook-{tag}.npz"
    dim = descriptor_dim(h5, bench.names[:1])
    codebook = prepare_codebook(conf, {n: h5 for n in train}, dim, codebook_path)
    return ASMK(codebook, conf), h5


def run_asmk(method: Method, bench: Benchmark, cache: Path, train: list[str], conf: dict) -> Run:
    """Codebook on ``train`` images, index of the evaluation images, every image a query."""
    asmk, h5 = asmk_setup(method, bench, cache, train, conf)
    conf = asmk.conf
    ivf, _ = prepare_index(asmk, {n: h5 for n in bench.names}, bench.names)
    queries = read_descriptors(h5, bench.names, asmk.dim)
    rankings, times, search_times = [], [], []
    for i, name in enumerate(bench.names):
        start = time.perf_counter()
        agg = asmk.aggregate(queries[name], query=True)
        middle = time.perf_counter()
        ids, _ = ivf.search(agg, asmk.table, None, np.array([i]), None, conf.chunk_size)
        times.append(time.perf_counter() - start)
        search_times.append(time.perf_counter() - middle)
        rankings.append(ids)
    stats = ivf.stats()
    info = {
        "codebook": asmk.codebook.size,
        "descriptors": float(np.mean([len(q) for q in queries.values()])),
        "vectors_per_image": stats["vectors_per_image"],
        "bytes_per_image": stats["bytes_per_image"],
        "search_ms": float(np.median(search_times)) * 1e3,
    }
    return Run(rankings, float(np.median(times)) * 1e3, info)


def restrict(rankings: list[np.ndarray], names: list[str], subset: list[str]) -> list[np.ndarray]:
    """Rankings among ``subset`` only (indices into ``subset``), for the queries of ``subset``.

    ASMK and cosine scores are pairwise, so filtering a ranking equals ranking the subset."""
    position = {n: i for i, n in enumerate(names)}
    local = {position[n]: j for j, n in enumerate(subset)}
    return [np.array([local[i] for i in rankings[position[n]] if i in local], np.int64) for n in subset]


def evaluate(rankings: list[np.ndarray], bench: Benchmark) -> dict[str, float]:
    """mAP on the labels, mAP on the Strecha scenes, covisible recall@k (in percent)."""
    out = {}
    positives, junk = label_ground_truth(bench.labels)
    out["labels_map"], _ = mean_average_precision(rankings, positives, junk)
    strecha_rankings = restrict(rankings, bench.names, bench.strecha)
    herz = ("Herz-Jesu-P8", "Herz-Jesu-P25")
    positives, junk = label_ground_truth(bench.scenes, {herz[0]: [herz[1]], herz[1]: [herz[0]]})
    out["strecha_map"], _ = mean_average_precision(strecha_rankings, positives, junk)
    for overlap, matrix in bench.covisible.items():
        relevant = [np.flatnonzero(row) for row in matrix]
        recall = shortlist_recall(strecha_rankings, relevant, KS, junk)
        oracle = shortlist_recall([np.concatenate([r, np.setdiff1d(np.arange(len(matrix)), r)]) for r in relevant], relevant, KS, junk)
        for k in KS:
            out[f"recall{overlap}@{k}"] = recall[k]
            out[f"oracle{overlap}@{k}"] = oracle[k]
    return {k: 100 * v for k, v in out.items()}


def random_baseline(bench: Benchmark, runs: int = 100) -> dict[str, float]:
    """Mean of :func:`evaluate` over ``runs`` seeded random rankings."""
    rng = np.random.default_rng(0)
    n = len(bench.names)
    results = []
    for _ in range(runs):
        rankings = [rng.permutation(np.setdiff1d(np.arange(n), [i])) for i in range(n)]
        results.append(evaluate(rankings, bench))
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def fmt_row(label: str, kind: str, res: dict[str, float], run: Run | None) -> list[object]:
    recall = lambda o: " / ".join(f"{res[f'recall{o}@{k}']:.1f}" for k in KS)  # noqa: E731
    if run is None:
        cost = ["-", "-", "-", "-"]
    elif "codebook" in run.info:
        cost = [
            f"{run.info['codebook']} words, {run.info['descriptors']:.0f} desc.",
            f"{run.info['vectors_per_image']:.0f}",
            f"{run.info['bytes_per_image'] / 1024:.1f}",
            f"{run.query_ms:.0f} ({run.info['search_ms']:.1f})",
        ]
    else:
        cost = [f"{run.info['dim']}-D global", "-", f"{run.info['bytes_per_image'] / 1024:.1f}", f"{run.query_ms:.2f}"]
    return [label, kind, f"{res['labels_map']:.1f}", f"{res['strecha_map']:.1f}", recall(0.5), recall(0.8), *cost]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--method", action="append", required=True, help="CONF | CONF=WEIGHTS (repeatable)")
    parser.add_argument("--cache", type=Path, default=Path("outputs/cache"), help="shared feature cache")
    parser.add_argument("--codebook-images", default="train_natural/urban100", help="folder (under --data) for the codebook")
    parser.add_argument("--codebook-count", type=int, default=60, help="images of that folder used for the codebook")
    parser.add_argument("--train-descriptors", type=int, default=500_000, help="at most this many descriptors for k-means")
    parser.add_argument("--conf", nargs="*", default=[], help="ASMK settings key=value (see ASMK_DEFAULTS)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    conf = {"max_train_descriptors": args.train_descriptors, **OmegaConf.to_container(OmegaConf.from_dotlist(args.conf))}
    asmk_conf(conf)
    bench = load_benchmark(args.data)
    train = codebook_names(args.data, args.codebook_images, args.codebook_count)
    rows, notes = [], []
    for spec in args.method:
        method = parse_method(spec)
        kind = "global (dot product)" if is_global(method) else "local + ASMK"
        reason = missing_weights(method)
        if reason is not None:
            notes.append(f"- `{method.label}` ({kind}): not run, {reason}.")
            logger.warning("%s: %s", method.label, reason)
            continue
        logger.info("%s (%s)", method.label, kind)
        run = run_global(method, bench, args.cache) if is_global(method) else run_asmk(method, bench, args.cache, train, conf)
        rows.append(fmt_row(method.label, kind, evaluate(run.rankings, bench), run))
        logger.info("%s", rows[-1])
    random = random_baseline(bench)
    rows.append(fmt_row("random ranking (mean of 100)", "-", random, None))
    header = [
        "method", "ranking", "label mAP (69)", "Strecha scene mAP (44)",
        "covisible recall @5/10/20, overlap >= 0.5", "covisible recall @5/10/20, overlap >= 0.8",
        "codebook", "vectors / image", "index KiB / image", "ms / query (search only)",
    ]
    sizes = {o: f"{m.sum(1).mean():.1f}" for o, m in bench.covisible.items()}
    ideal = {o: " / ".join(f"{random[f'oracle{o}@{k}']:.1f}" for k in KS) for o in OVERLAPS}
    body = "\n\n".join([
        "Every image is a query against all the other images of its set (itself excluded). "
        f"Codebook: k-means (faiss, {asmk_conf(conf).kmeans_iterations} iterations) on at most "
        f"{args.train_descriptors} descriptors of the first {args.codebook_count} images of "
        f"`{args.codebook_images}` (disjoint from the evaluation images); size from the number of "
        "training descriptors (largest power of two with >= 64 per word). ASMK: binarised, alpha 3, tau 0, "
        "database single / query multiple (5) assignment, no IDF (HOW's published configuration). "
        "Global descriptors: dot product.",
        "Label mAP: derived_scene_retrieval/labels.tsv (69 images, 7 landmarks; not a published benchmark). "
        "Strecha scene mAP: 44 images, classes = scene folders; Herz-Jesu-P8 and -P25 show the same church "
        "from different photo sets, so the other set is ignored (junk) for their queries. mAP as revisitop "
        "(junk removed from the ranking).",
        "Covisible recall@k: for each Strecha image, the share of its covisible images (ground-truth cameras: "
        "each view, as a plane at the depth where its optical axis meets the others, must cover >= 0.5 "
        "resp. >= 0.8 of the other image and vice versa) found in its top-k among the other 43 Strecha "
        f"images (other Herz-Jesu set ignored). Covisible images per query on average: {sizes[0.5]} "
        f"(>= 0.5), {sizes[0.8]} (>= 0.8), so a perfect shortlist has recall about {ideal[0.5]} resp. "
        f"{ideal[0.8]} at k = 5/10/20. Timing: median per query of quantisation (faiss, 5 nearest words) + "
        "aggregation + search, in brackets the search alone (ASMK), or of the dot products (global); "
        "2 CPU cores shared with a training run.",
        table(header, rows),
        *(["Not run:\n\n" + "\n".join(notes)] if notes else []),
    ])
    publish(KEY, "Retrieval: HOW, ASMK and global descriptors on the data here (issue 9)", body, args.no_write)


if __name__ == "__main__":
    main()
