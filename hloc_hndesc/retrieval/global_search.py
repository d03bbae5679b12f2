"""Global-descriptor retrieval: dot-product rankings, as hloc's ``pairs_from_retrieval``.

For the small image sets of the demo and the benchmarks the whole similarity matrix fits in
memory; hloc's own ``pairs_from_retrieval`` is the tool for large databases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np


def read_global_descriptors(path: str | Path, names: Sequence[str]) -> np.ndarray:
    """The ``global_descriptor`` of each of ``names`` in an hloc features file, stacked (N, D)."""
    path = Path(path)
    with h5py.File(path, "r") as handle:
        missing = [n for n in names if n not in handle or "global_descriptor" not in handle[n]]
        if missing:
            raise KeyError(f"{path}: no global_descriptor for {len(missing)} images, e.g. {missing[:3]}")
        return np.stack([np.asarray(handle[n]["global_descriptor"], np.float32) for n in names])


def rank_global(desc: np.ndarray) -> list[np.ndarray]:
    """For each row of ``desc`` (N, D), the indices of the other rows by decreasing dot product."""
    sim = desc @ desc.T
    np.fill_diagonal(sim, -np.inf)
    return [np.argsort(-row, kind="stable")[:-1] for row in sim]


def unordered_pairs(names: Sequence[str], pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pairs`` of ``names`` without self-pairs and repeats in either order, each in image order."""
    position = {n: i for i, n in enumerate(names)}
    kept = {tuple(sorted((position[a], position[b]))) for a, b in pairs if a != b}
    return [(names[i], names[j]) for i, j in sorted(kept)]


def shortlist_pairs(names: Sequence[str], rankings: Sequence[Sequence[int]], num_matched: int) -> list[tuple[str, str]]:
    """Unordered pairs from each image's ``num_matched`` best-ranked images, in image order, once each."""
    if num_matched < 1:
        raise ValueError(f"num_matched must be at least 1, got {num_matched}")
    shortlists = ((names[i], names[int(j)]) for i, ranking in enumerate(rankings) for j in list(ranking)[:num_matched])
    return unordered_pairs(names, shortlists)
