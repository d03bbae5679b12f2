"""hloc retrieval pairs from local descriptors with HOW's ASMK (codebook + inverted file).

Mirrors ``hloc.pairs_from_retrieval.main``: the same selection of query and database
images (``*_prefix``, ``*_list``, ``db_model``, ``db_descriptors``), ``num_matched``
database images per query ranked by similarity, never the query itself, written as
``query db`` lines. The descriptors are local (``descriptors`` (D, N) per image, e.g.
from the ``how-asmk`` conf) instead of ``global_descriptor``. ASMK scores are never negative,
so (as hloc with ``min_score=0``) every query gets ``min(num_matched, database size)`` pairs,
itself excluded; equal scores (e.g. images sharing no visual word with the query, score 0)
are ordered by their position in the index.

The codebook is loaded from ``codebook`` when that file exists, otherwise trained
(k-means on the database descriptors, or on ``train_descriptors``) and saved there.
The index is loaded from ``index`` when that file exists; database images it lacks are
added (incrementally) and the file is updated; images it holds that are not in the
database selection are never returned. ``conf`` overrides
:data:`~hloc_hndesc.retrieval.asmk.ASMK_DEFAULTS`.

Command line::

    python -m hloc_hndesc.retrieval.pairs_from_asmk --descriptors feats-how.h5 \\
        --output pairs.txt --num_matched 20 --query_prefix query/ --db_prefix db/ \\
        --codebook codebook.npz --index index.npz --conf query_assignments=5
"""

from __future__ import annotations

import argparse
import collections.abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .. import logger
from ..config import ConfigError
from ..files import write_pairs
from .asmk import ASMK, asmk_conf
from .codebook import Codebook, load_codebook, save_codebook, train_codebook
from .descriptors import DescriptorFileError, descriptor_dim, list_descriptor_names, read_descriptors, sample_training_descriptors
from .inverted_file import InvertedFile, load_index, save_index
from .storage import RetrievalFileError

#: conf keys that change the database side of an index (checked when an index is loaded).
INDEX_KEYS = ("db_assignments", "l2_normalize")
READ_BATCH = 64


def parse_image_list(path: str | Path) -> list[str]:
    """Image names of a list file or of every file matching a glob pattern (first column,
    ``#`` comments and empty lines skipped), as hloc's ``parse_image_lists``."""
    path = Path(path)
    files = sorted(path.parent.glob(path.name))
    if not files:
        raise FileNotFoundError(f"{path}: image list not found")
    names = []
    for file in files:
        for line in file.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                names.append(line.split()[0])
    if not names:
        raise ValueError(f"{path}: the image list is empty")
    return names


def parse_names(prefix: str | collections.abc.Iterable[str] | None, names: Any, names_all: list[str]) -> list[str]:
    """hloc's selection: names starting with ``prefix``, or a list (file or iterable), or all."""
    if prefix is not None:
        prefix = prefix if isinstance(prefix, str) else tuple(prefix)
        selected = [n for n in names_all if n.startswith(prefix)]
        if not selected:
            raise ValueError(f"Could not find any image with the prefix `{prefix}`.")
        return selected
    if names is not None:
        if isinstance(names, (str, Path)):
            return parse_image_list(names)
        if isinstance(names, collections.abc.Iterable):
            return list(names)
        raise ValueError(f"Unknown type of image list: {names}. Provide either a list or a path to a list file.")
    return list(names_all)


def model_image_names(db_model: str | Path) -> list[str]:
    """Names of the images of a COLMAP model folder."""
    import pycolmap

    db_model = Path(db_model)
    if not db_model.is_dir():
        raise FileNotFoundError(f"{db_model}: COLMAP model folder not found")
    try:
        reconstruction = pycolmap.Reconstruction(str(db_model))
    except Exception as err:  # pycolmap raises plain RuntimeError/ValueError for unreadable models
        raise FileNotFoundError(f"{db_model}: cannot read the COLMAP model ({err})") from None
    return sorted(image.name for image in reconstruction.images.values())


def name_sources(files: list[Path]) -> dict[str, Path]:
    """Image name -> file holding its descriptors (names must be unique across files)."""
    sources: dict[str, Path] = {}
    for path in files:
        names = list_descriptor_names(path)
        if not names:
            raise DescriptorFileError(f"{path}: no image with local descriptors (an hloc local-features file?)")
        for name in names:
            if name in sources and sources[name] != path:
                raise DescriptorFileError(f"image {name!r} is in both {sources[name]} and {path}")
            sources[name] = path
    return sources


def iter_descriptors(sources: dict[str, Path], names: list[str], dim: int, desc: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (N, D) descriptors) of ``names`` in order, reading each file in batches."""
    for lo in tqdm(range(0, len(names), READ_BATCH), desc=desc, unit="batch", disable=len(names) <= READ_BATCH):
        batch = names[lo : lo + READ_BATCH]
        by_file: dict[Path, list[str]] = {}
        for name in batch:
            by_file.setdefault(sources[name], []).append(name)
        read: dict[str, np.ndarray] = {}
        for path, file_names in by_file.items():
            read.update(read_descriptors(path, file_names, dim))
        for name in batch:
            yield name, read[name]


def prepare_codebook(
    conf: DictConfig, train_sources: dict[str, Path], dim: int, path: Path | None = None, overwrite: bool = False
) -> Codebook:
    """Load the codebook at ``path`` if it exists (and not ``overwrite``), else train and save it."""
    if path is not None and path.exists() and not overwrite:
        codebook, meta = load_codebook(path, use_gpu=conf.gpu)
        if codebook.dim != dim:
            raise RetrievalFileError(f"{path}: codebook of {codebook.dim}-D words, descriptors are {dim}-D")
        if meta.get("l2_normalize", conf.l2_normalize) != conf.l2_normalize:
            raise RetrievalFileError(
                f"{path}: codebook trained with l2_normalize={meta['l2_normalize']}, conf has {conf.l2_normalize}"
            )
        logger.info("Loaded a %d-word codebook from %s.", codebook.size, path)
        return codebook
    data = sample_training_descriptors(train_sources, conf.max_train_descriptors, conf.seed, dim)
    if conf.l2_normalize:
        data = data / (np.linalg.norm(data, axis=1, keepdims=True) + 1e-6)
    codebook = train_codebook(
        data,
        size=conf.codebook_size,
        iterations=conf.kmeans_iterations,
        seed=conf.seed,
        per_word=conf.descriptors_per_word,
        minimum=conf.min_codebook_size,
        maximum=conf.max_codebook_size,
        use_gpu=conf.gpu,
    )
    if path is not None:
        save_codebook(path, codebook, {"train_images": len(train_sources), "train_descriptors": len(data), "l2_normalize": bool(conf.l2_normalize)})
        logger.info("Saved the codebook to %s.", path)
    return codebook


def _index_meta(asmk: ASMK) -> dict[str, Any]:
    return {"codebook": asmk.codebook.fingerprint(), **{key: asmk.conf[key] for key in INDEX_KEYS}}


def prepare_index(
    asmk: ASMK,
    db_sources: dict[str, Path],
    db_names: list[str],
    path: Path | None = None,
    overwrite: bool = False,
) -> tuple[InvertedFile, list[str]]:
    """Load the index at ``path`` (if any), add the database images it lacks, save it back."""
    ivf, names = InvertedFile(asmk.codebook.size, asmk.dim), []
    if path is not None and path.exists() and not overwrite:
        ivf, names, meta = load_index(path)
        expected = _index_meta(asmk)
        differ = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if differ or ivf.dim != asmk.dim or ivf.num_words != asmk.codebook.size:
            raise RetrievalFileError(
                f"{path}: index built with another codebook or settings ({', '.join(sorted(differ)) or 'dimensions'}); "
                "pass overwrite=True (--overwrite) to rebuild it"
            )
        logger.info("Loaded an index of %d images from %s.", len(names), path)
    known = set(names)
    todo = [n for n in db_names if n not in known]
    if todo:
        for name, desc in iter_descriptors(db_sources, todo, asmk.dim, "index"):
            ivf.add(asmk.aggregate(desc, query=False, where=f"{db_sources[name]}: {name}"))
            names.append(name)
        ivf.compact()
        if path is not None:
            save_index(path, ivf, names, _index_meta(asmk))
            logger.info("Saved the index (%d images) to %s.", len(names), path)
    stats = ivf.stats()
    logger.info(
        "Index: %d images, %.1f vectors per image, %.0f bytes per image (%.1f MiB).",
        stats["images"], stats["vectors_per_image"], stats["bytes_per_image"], stats["memory_bytes"] / 2**20,
    )
    return ivf, names


@dataclass
class Ranking:
    """One query's ranked database images and their ASMK scores, best first."""

    query: str
    names: list[str]
    scores: np.ndarray


def rank(
    asmk: ASMK,
    ivf: InvertedFile,
    index_names: list[str],
    query_sources: dict[str, Path],
    query_names: list[str],
    db_names: list[str],
    topk: int | None,
) -> list[Ranking]:
    """Rank the ``db_names`` (a subset of the index) for each query, never the query itself."""
    position = {n: i for i, n in enumerate(index_names)}
    allowed = np.zeros(ivf.num_images, bool)
    allowed[[position[n] for n in db_names]] = True
    out = []
    for name, desc in iter_descriptors(query_sources, query_names, asmk.dim, "query"):
        query = asmk.aggregate(desc, query=True, where=f"{query_sources[name]}: {name}")
        if len(query) == 0:
            logger.warning("Query %s has no descriptors: its database images are in index order.", name)
        exclude = np.array([position[name]]) if name in position else None
        ids, scores = ivf.search(query, asmk.table, topk, exclude, allowed, asmk.conf.chunk_size)
        out.append(Ranking(name, [index_names[i] for i in ids], scores))
    return out


def _paths(value: Any) -> list[Path]:
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def main(
    descriptors: str | Path,
    output: str | Path,
    num_matched: int,
    query_prefix: str | list[str] | None = None,
    query_list: str | Path | list[str] | None = None,
    db_prefix: str | list[str] | None = None,
    db_list: str | Path | list[str] | None = None,
    db_model: str | Path | None = None,
    db_descriptors: str | Path | list[str | Path] | None = None,
    codebook: str | Path | None = None,
    index: str | Path | None = None,
    train_descriptors: str | Path | list[str | Path] | None = None,
    conf: dict[str, Any] | DictConfig | None = None,
    overwrite: bool = False,
) -> list[tuple[str, str]]:
    """Write ``num_matched`` ASMK retrieval pairs per query to ``output``; returns the pairs.

    ``descriptors``: hloc features file with the queries' local descriptors (and the
    database's unless ``db_descriptors`` is given). ``codebook``/``index``: npz files,
    loaded when present, else created (``overwrite`` rebuilds both).
    ``train_descriptors``: files to train the codebook on (default: the database).
    """
    logger.info("Extracting image pairs from an ASMK retrieval database.")
    conf = asmk_conf(conf)
    if int(num_matched) < 1:
        raise ValueError(f"num_matched must be at least 1, got {num_matched}")
    db_files = _paths(db_descriptors if db_descriptors is not None else descriptors)
    db_sources = name_sources(db_files)
    query_sources = name_sources(_paths(descriptors))

    if db_model is not None:
        db_names = model_image_names(db_model)
    else:
        db_names = parse_names(db_prefix, db_list, sorted(db_sources))
    if not db_names:
        raise ValueError("Could not find any database image.")
    query_names = parse_names(query_prefix, query_list, sorted(query_sources))
    for role, names, sources in (("database", db_names, db_sources), ("query", query_names, query_sources)):
        missing = [n for n in names if n not in sources]
        if missing:
            files = ", ".join(str(p) for p in sorted(set(sources.values())))
            raise DescriptorFileError(f"{len(missing)} {role} images have no local descriptors in {files}, e.g. {missing[:3]}")
        spaced = [n for n in names if any(c.isspace() for c in n)]
        if spaced:
            raise ValueError(f"image names with whitespace cannot be written to a pairs file: {spaced[:3]}")

    first_file = db_sources[db_names[0]]
    dim = descriptor_dim(first_file, [n for n in db_names[:100] if db_sources[n] == first_file])
    if train_descriptors is not None:
        train_sources = name_sources(_paths(train_descriptors))
    else:
        train_sources = {n: db_sources[n] for n in db_names}
    codebook_path = Path(codebook) if codebook is not None else None
    index_path = Path(index) if index is not None else None
    book = prepare_codebook(conf, train_sources, dim, codebook_path, overwrite)
    asmk = ASMK(book, conf)
    ivf, index_names = prepare_index(asmk, db_sources, db_names, index_path, overwrite)

    rankings = rank(asmk, ivf, index_names, query_sources, query_names, db_names, int(num_matched))
    pairs = [(r.query, db) for r in rankings for db in r.names]
    logger.info("Found %d pairs.", len(pairs))
    write_pairs(output, pairs)
    return pairs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--descriptors", type=Path, required=True, help="hloc features file (local descriptors)")
    parser.add_argument("--output", type=Path, required=True, help="pairs file to write")
    parser.add_argument("--num_matched", type=int, required=True, help="database images per query")
    parser.add_argument("--query_prefix", type=str, nargs="+")
    parser.add_argument("--query_list", type=Path)
    parser.add_argument("--db_prefix", type=str, nargs="+")
    parser.add_argument("--db_list", type=Path)
    parser.add_argument("--db_model", type=Path)
    parser.add_argument("--db_descriptors", type=Path, nargs="+")
    parser.add_argument("--codebook", type=Path, help="codebook .npz (loaded if present, else trained and saved)")
    parser.add_argument("--index", type=Path, help="inverted file .npz (loaded and extended if present, else built)")
    parser.add_argument("--train_descriptors", type=Path, nargs="+", help="features to train the codebook on")
    parser.add_argument("--conf", nargs="*", default=[], help="ASMK settings as key=value (e.g. alpha=3 codebook_size=1024)")
    parser.add_argument("--overwrite", action="store_true", help="retrain the codebook and rebuild the index")
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = vars(parse_args(argv))
    try:
        args["conf"] = OmegaConf.to_container(OmegaConf.from_dotlist(args.pop("conf")))
    except Exception as err:  # omegaconf's grammar errors carry the offending item
        logger.error("--conf: %s", err)
        return 2
    try:
        main(**args)
    except (ConfigError, DescriptorFileError, RetrievalFileError, FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
