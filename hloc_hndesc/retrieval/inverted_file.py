"""Inverted file of aggregated binary vectors: per visual word, image ids and packed bits.

Layout (compressed sparse rows): entries sorted by word, ``offsets[w]:offsets[w + 1]``
are word w's entries, with ``image_ids`` (int32) and packed binary vectors stored column by
column, ``columns`` (ceil(d / 64), entries) uint64, so that gathering one 64-bit word of
many entries reads one contiguous array; within a word, entries keep insertion order. New images are appended to a
pending buffer and merged into the rows before the next search, so incremental adds give
exactly the arrays of a batch build.

Scoring a query gathers the entries of its words (in chunks of at most ``chunk_size``
entries, so memory never depends on the database size beyond one score per image),
computes all Hamming distances at once (xor + bit count over the packed words), maps them
through the kernel table, and accumulates per image with ``bincount``; no Python loop runs
per word or per vector, and no query x database matrix is formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .asmk import AggregatedImage, hamming_distance, packed_width
from .storage import RetrievalFileError, load_npz, save_npz

KIND = "asmk-inverted-file"


class InvertedFile:
    """ASMK inverted file over a codebook of ``num_words`` words and ``dim``-bit vectors."""

    def __init__(self, num_words: int, dim: int) -> None:
        if num_words < 1 or dim < 1:
            raise ValueError(f"need num_words >= 1 and dim >= 1, got {num_words}, {dim}")
        self.num_words = int(num_words)
        self.dim = int(dim)
        self.width = packed_width(dim)
        self.offsets = np.zeros(self.num_words + 1, np.int64)
        self.image_ids = np.zeros(0, np.int32)
        self.columns = np.zeros((self.width, 0), np.uint64)
        #: |C_X| per image (its self-similarity: k(B, B) = 1 for every word).
        self.words_per_image = np.zeros(0, np.int32)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_counts: list[int] = []

    # ------------------------------------------------------------------ building

    @property
    def num_images(self) -> int:
        return len(self.words_per_image) + len(self._pending_counts)

    @property
    def vectors(self) -> np.ndarray:
        """Packed vectors of the merged rows, (entries, ceil(d / 64)) (a view)."""
        self.compact()
        return self.columns.T

    @property
    def num_entries(self) -> int:
        return len(self.image_ids) + sum(len(p[0]) for p in self._pending)

    def add(self, image: AggregatedImage) -> int:
        """Append one aggregated image; returns its id (consecutive from 0)."""
        words = np.asarray(image.words, np.int64)
        vectors = np.asarray(image.vectors, np.uint64)
        if vectors.shape != (len(words), self.width):
            raise ValueError(f"expected ({len(words)}, {self.width}) packed vectors, got {vectors.shape}")
        if len(words) and (words.min() < 0 or words.max() >= self.num_words):
            raise ValueError(f"word ids must be in [0, {self.num_words}), got [{words.min()}, {words.max()}]")
        if len(np.unique(words)) != len(words):
            raise ValueError("an aggregated image has one vector per word: duplicate word ids")
        image_id = self.num_images
        self._pending_counts.append(len(words))
        if len(words):
            self._pending.append((words, np.full(len(words), image_id, np.int32), vectors))
        return image_id

    def add_many(self, images: Sequence[AggregatedImage]) -> np.ndarray:
        """Append several images; returns their ids."""
        ids = np.array([self.add(image) for image in images], np.int64)
        self.compact()
        return ids

    def compact(self) -> None:
        """Merge pending images into the word-sorted rows (called before searching and saving)."""
        if self._pending_counts:
            self.words_per_image = np.concatenate([self.words_per_image, np.array(self._pending_counts, np.int32)])
            self._pending_counts = []
        if not self._pending:
            return
        words = np.concatenate([np.repeat(np.arange(self.num_words), np.diff(self.offsets))] + [p[0] for p in self._pending])
        image_ids = np.concatenate([self.image_ids] + [p[1] for p in self._pending])
        vectors = np.concatenate([self.columns.T] + [p[2] for p in self._pending])
        order = np.argsort(words, kind="stable")
        self.image_ids = image_ids[order]
        self.columns = np.ascontiguousarray(vectors[order].T)
        counts = np.bincount(words, minlength=self.num_words)
        self.offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._pending = []

    # ------------------------------------------------------------------ scoring

    def scores(self, query: AggregatedImage, table: np.ndarray, chunk_size: int = 1 << 20) -> np.ndarray:
        """ASMK similarity (eq. 4) of ``query`` to every indexed image: (num_images,) float64.

        ``table`` is :func:`~hloc_hndesc.retrieval.asmk.kernel_table` for this ``dim``.
        """
        self.compact()
        if len(table) != self.dim + 1:
            raise ValueError(f"kernel table for {len(table) - 1}-bit vectors, index holds {self.dim}-bit vectors")
        totals = np.zeros(self.num_images, np.float64)
        if len(query) == 0 or self.num_images == 0:
            return totals
        words = np.asarray(query.words, np.int64)
        if words.min() < 0 or words.max() >= self.num_words:
            raise ValueError(f"query word ids must be in [0, {self.num_words}) (same codebook as the index)")
        starts = self.offsets[words]
        lengths = self.offsets[words + 1] - starts
        keep = lengths > 0
        starts, lengths, qvecs = starts[keep], lengths[keep], query.vectors[keep]
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if len(ends) else 0
        qcols = np.ascontiguousarray(qvecs.T)
        for lo in range(0, total, int(chunk_size)):
            hi = min(total, lo + int(chunk_size))
            first = int(np.searchsorted(ends, lo, side="right"))
            last = int(np.searchsorted(ends, hi - 1, side="right")) + 1
            seg_flat = np.maximum(ends[first:last] - lengths[first:last], lo)
            seg_len = np.minimum(ends[first:last], hi) - seg_flat
            seg_row = starts[first:last] + seg_flat - (ends[first:last] - lengths[first:last])
            entries = np.arange(lo, hi, dtype=np.int64) + np.repeat(seg_row - seg_flat, seg_len)
            dist = np.zeros(hi - lo, np.intp)
            for col, qcol in zip(self.columns, qcols):
                dist += np.bitwise_count(np.take(col, entries) ^ np.repeat(qcol[first:last], seg_len))
            weights = np.take(table, dist)
            totals += np.bincount(np.take(self.image_ids, entries), weights=weights, minlength=self.num_images)
        norm = np.where(self.words_per_image > 0, 1.0 / np.sqrt(np.maximum(self.words_per_image, 1)), 0.0)
        return totals * norm / np.sqrt(len(query))

    def search(
        self,
        query: AggregatedImage,
        table: np.ndarray,
        topk: int | None = None,
        exclude: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
        chunk_size: int = 1 << 20,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``topk`` (all if None) image ids and scores, best first; ties by ascending id.

        ``exclude``: ids never returned; ``allowed``: boolean mask (num_images,) of ids that may be.
        """
        scores = self.scores(query, table, chunk_size)
        valid = np.ones(self.num_images, bool) if allowed is None else np.asarray(allowed, bool).copy()
        if exclude is not None and len(exclude):
            valid[np.asarray(exclude, np.int64)] = False
        candidates = np.flatnonzero(valid)
        k = len(candidates) if topk is None else min(int(topk), len(candidates))
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        cand_scores = scores[candidates]
        if k < len(candidates):
            cut = np.partition(cand_scores, len(candidates) - k)[len(candidates) - k]
            pick = np.flatnonzero(cand_scores >= cut)
            candidates, cand_scores = candidates[pick], cand_scores[pick]
        order = np.lexsort((candidates, -cand_scores))[:k]
        return candidates[order].astype(np.int64), cand_scores[order]

    # ------------------------------------------------------------------ stats and files

    def memory_bytes(self) -> int:
        """Bytes of the index arrays (rows, offsets, per-image counts)."""
        self.compact()
        return int(self.offsets.nbytes + self.image_ids.nbytes + self.columns.nbytes + self.words_per_image.nbytes)

    def stats(self) -> dict[str, float]:
        """Images, vectors per image, memory (total and per image), word-list balance."""
        self.compact()
        counts = np.diff(self.offsets)
        total = int(counts.sum())
        memory = self.memory_bytes()
        return {
            "images": self.num_images,
            "vectors": total,
            "vectors_per_image": total / max(1, self.num_images),
            "memory_bytes": memory,
            "bytes_per_image": memory / max(1, self.num_images),
            "empty_words": int((counts == 0).sum()),
            "max_entries_per_word": int(counts.max()) if len(counts) else 0,
            "imbalance_factor": float(len(counts) * (counts.astype(np.float64) ** 2).sum() / max(1, total) ** 2),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that define this index (for saving)."""
        self.compact()
        return {
            "offsets": self.offsets,
            "image_ids": self.image_ids,
            "columns": self.columns,
            "words_per_image": self.words_per_image,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], num_words: int, dim: int, where: str = "index") -> InvertedFile:
        """Rebuild an index from :meth:`arrays`, checking every invariant."""
        ivf = cls(num_words, dim)
        offsets = np.asarray(arrays["offsets"], np.int64)
        image_ids = np.asarray(arrays["image_ids"])
        columns = np.asarray(arrays["columns"])
        per_image = np.asarray(arrays["words_per_image"])
        problems = []
        if offsets.shape != (num_words + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            problems.append("offsets are not a valid row index")
        elif offsets[-1] != len(image_ids) or columns.shape != (ivf.width, len(image_ids)):
            problems.append("offsets, image ids and vectors disagree in length")
        if columns.dtype != np.uint64 or image_ids.dtype != np.int32 or per_image.dtype != np.int32:
            problems.append("unexpected array types")
        if len(image_ids) and (image_ids.min() < 0 or image_ids.max() >= len(per_image)):
            problems.append("image ids out of range")
        elif not problems and not np.array_equal(np.bincount(image_ids, minlength=len(per_image)), per_image):
            problems.append("per-image word counts disagree with the rows")
        if problems:
            raise RetrievalFileError(f"{where}: corrupt inverted file: {'; '.join(problems)}")
        ivf.offsets, ivf.image_ids, ivf.columns, ivf.words_per_image = offsets, image_ids, np.ascontiguousarray(columns), per_image
        return ivf


def save_index(path: str | Path, ivf: InvertedFile, names: Sequence[str], meta: dict[str, Any]) -> Path:
    """Write ``ivf`` with the image ``names`` (one per id) and ``meta`` (npz, atomically)."""
    if len(names) != ivf.num_images:
        raise ValueError(f"{len(names)} names for {ivf.num_images} indexed images")
    arrays = {**ivf.arrays(), "names": np.array(list(names), dtype=str)}
    return save_npz(path, KIND, arrays, {"num_words": ivf.num_words, "dim": ivf.dim, **meta})


def load_index(path: str | Path) -> tuple[InvertedFile, list[str], dict[str, Any]]:
    """Read a file of :func:`save_index`: (inverted file, names, meta)."""
    arrays, meta = load_npz(path, KIND, ("offsets", "image_ids", "columns", "words_per_image", "names"))
    try:
        num_words, dim = int(meta["num_words"]), int(meta["dim"])
    except (KeyError, TypeError, ValueError):
        raise RetrievalFileError(f"{path}: header lacks num_words/dim") from None
    ivf = InvertedFile.from_arrays(arrays, num_words, dim, str(path))
    names = [str(n) for n in arrays["names"].reshape(-1)] if ivf.num_images else []
    if len(names) != ivf.num_images:
        raise RetrievalFileError(f"{path}: {len(names)} names for {ivf.num_images} images")
    return ivf, names, meta
