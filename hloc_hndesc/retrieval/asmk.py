"""Binarised ASMK (Tolias et al., IJCV 2015) as used by HOW (ECCV 2020), eqs. (2)-(4).

For an image with local descriptors X (n, d) and a codebook C:

- each descriptor is assigned to its nearest word (database side) or to its
  ``query_assignments`` nearest words (query side, multiple assignment);
- per word c the residuals r(x) = x - c of the descriptors assigned to c are summed and
  binarised, B(X_c) = sign(sum r(x)) in {-1, 1}^d, stored as packed bits (bit 1 for a
  positive component, bit 0 otherwise: a zero component counts as -1, as in the reference
  implementation);
- the similarity of two aggregated vectors is u = B(X_c)^T B(Y_c) / d = 1 - 2 h / d, with h
  their Hamming distance, and the selectivity kernel k(u) = u^alpha if u >= tau else 0
  (eq. 2; alpha = 3, tau = 0 as HOW's published ASMK configuration);
- S(X, Y) = gamma(X) gamma(Y) sum over common words of k (eq. 4), with
  gamma(X) = |C_X|^(-1/2) so that S(X, X) = 1 (no IDF).

This module is pure computation (no file I/O); :mod:`.codebook` quantises,
:mod:`.inverted_file` stores and scores database images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ..config import ConfigError, merge_conf
from .codebook import Codebook

#: every ASMK setting, in one place (merged strictly: unknown keys raise).
ASMK_DEFAULTS: dict[str, Any] = {
    # codebook (k-means with faiss)
    "codebook_size": None,  # None: from the number of training descriptors, see default_codebook_size
    "descriptors_per_word": 64,  # automatic size: about this many training descriptors per word
    "min_codebook_size": 16,
    "max_codebook_size": 65536,  # HOW's codebook
    "kmeans_iterations": 10,  # as the authors' asmk package
    "max_train_descriptors": 2_000_000,  # random subset for k-means (faiss samples 256 per word anyway)
    "seed": 0,
    "gpu": True,  # use faiss GPU when faiss was built with it and a GPU is visible
    # aggregation
    "l2_normalize": False,  # HOW hands whitened, un-normalised descriptors to ASMK, as does asmk 0.1.1
    "db_assignments": 1,
    "query_assignments": 5,
    # kernel
    "alpha": 3.0,
    "tau": 0.0,
    # scoring
    "chunk_size": 1 << 20,  # inverted-file entries scored at once (bounds memory per query)
}


def asmk_conf(conf: dict[str, Any] | DictConfig | None = None) -> DictConfig:
    """:data:`ASMK_DEFAULTS` merged with ``conf`` (unknown keys and bad values raise ConfigError)."""
    merged = merge_conf(ASMK_DEFAULTS, conf, "ASMK")
    if not 0.0 <= merged.tau <= 1.0:
        raise ConfigError(f"ASMK: invalid config: tau={merged.tau} must be in [0, 1] (eq. 2)")
    if merged.alpha <= 0:
        raise ConfigError(f"ASMK: invalid config: alpha={merged.alpha} must be positive")
    for key in ("db_assignments", "query_assignments", "descriptors_per_word", "chunk_size", "kmeans_iterations"):
        if int(merged[key]) < 1 or int(merged[key]) != merged[key]:
            raise ConfigError(f"ASMK: invalid config: {key}={merged[key]} must be a positive integer")
    if merged.codebook_size is not None and int(merged.codebook_size) < 1:
        raise ConfigError(f"ASMK: invalid config: codebook_size={merged.codebook_size} must be positive")
    return merged


def packed_width(dim: int) -> int:
    """Number of uint64 words holding ``dim`` bits."""
    return (dim + 63) // 64


def binarize(vectors: np.ndarray) -> np.ndarray:
    """(n, d) real vectors -> (n, ceil(d / 64)) uint64 packed signs (bit 1 where > 0)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"expected (n, d) vectors, got shape {vectors.shape}")
    n, dim = vectors.shape
    width = packed_width(dim)
    bits = np.zeros((n, width * 64), dtype=bool)
    bits[:, :dim] = vectors > 0
    packed = np.packbits(bits, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_signs(packed: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of :func:`binarize` up to the sign: (n, w) uint64 -> (n, d) in {-1, +1} (int8)."""
    packed = np.ascontiguousarray(packed, dtype="<u8")
    bits = np.unpackbits(packed.view(np.uint8), axis=1, bitorder="little")[:, :dim]
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance of packed vectors of equal shape (n, w) -> (n,) int32."""
    diff = np.bitwise_count(np.bitwise_xor(a, b))
    dist = diff[:, 0].astype(np.int32)
    for j in range(1, diff.shape[1]):
        dist += diff[:, j]
    return dist


def kernel_table(dim: int, alpha: float, tau: float) -> np.ndarray:
    """k(u) of eq. (2) for every Hamming distance h = 0..d, u = 1 - 2 h / d (float64, d + 1)."""
    u = 1.0 - 2.0 * np.arange(dim + 1, dtype=np.float64) / dim
    return np.where(u >= tau, np.power(np.maximum(u, 0.0), alpha), 0.0)


def selective_kernel(similarity: np.ndarray, alpha: float, tau: float) -> np.ndarray:
    """Eq. (2) on similarities u in [-1, 1]: u^alpha where u >= tau, else 0."""
    similarity = np.asarray(similarity, dtype=np.float64)
    return np.where(similarity >= tau, np.power(np.maximum(similarity, 0.0), alpha), 0.0)


def aggregate_residuals(
    descriptors: np.ndarray, assignments: np.ndarray, centroids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per visual word, the sum of residuals x - c of the descriptors assigned to it.

    ``descriptors`` (n, d), ``assignments`` (n, m) word ids (m assignments each),
    ``centroids`` (k, d). Returns the sorted unique words (w,) and their residual sums
    (w, d) float32, summed in descriptor order.
    """
    n, m = assignments.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, centroids.shape[1]), np.float32)
    words = assignments.reshape(-1).astype(np.int64)
    order = np.argsort(words, kind="stable")
    words = words[order]
    rows = order // m
    residuals = descriptors[rows].astype(np.float32) - centroids[words].astype(np.float32)
    starts = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1])))
    return words[starts], np.add.reduceat(residuals, starts, axis=0)


@dataclass
class AggregatedImage:
    """An image in ASMK form: its visual words (w,) sorted, and packed binary vectors (w, ceil(d/64))."""

    words: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.words)


class ASMK:
    """Quantisation and aggregation of images with one codebook and one :data:`ASMK_DEFAULTS` conf."""

    def __init__(self, codebook: Codebook, conf: dict[str, Any] | DictConfig | None = None) -> None:
        self.codebook = codebook
        self.conf = asmk_conf(conf)
        self.table = kernel_table(codebook.dim, self.conf.alpha, self.conf.tau)

    @property
    def dim(self) -> int:
        return self.codebook.dim

    def prepare(self, descriptors: np.ndarray, where: str = "descriptors") -> np.ndarray:
        """Check (n, d) descriptors, cast to float32, L2-normalise if configured."""
        descriptors = np.asarray(descriptors)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise ValueError(
                f"{where}: expected (n, {self.dim}) descriptors for this {self.dim}-D codebook, got shape {descriptors.shape}"
            )
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if not np.isfinite(descriptors).all():
            raise ValueError(f"{where}: descriptors contain NaN or infinite values")
        if self.conf.l2_normalize:
            descriptors = descriptors / (np.linalg.norm(descriptors, axis=1, keepdims=True) + 1e-6)
        return descriptors

    def aggregate(self, descriptors: np.ndarray, query: bool = False, where: str = "descriptors") -> AggregatedImage:
        """Aggregate and binarise one image's (n, d) descriptors (query: multiple assignment)."""
        descriptors = self.prepare(descriptors, where)
        assignments = self.conf.query_assignments if query else self.conf.db_assignments
        ids = self.codebook.quantize(descriptors, min(int(assignments), self.codebook.size))
        words, sums = aggregate_residuals(descriptors, ids, self.codebook.centroids)
        return AggregatedImage(words, binarize(sums) if len(words) else np.zeros((0, packed_width(self.dim)), np.uint64))

    def similarity(self, x: AggregatedImage, y: AggregatedImage) -> float:
        """S(X, Y) of eq. (4) between two aggregated images (0 if either is empty)."""
        if len(x) == 0 or len(y) == 0:
            return 0.0
        common, ix, iy = np.intersect1d(x.words, y.words, assume_unique=True, return_indices=True)
        if len(common) == 0:
            return 0.0
        total = self.table[hamming_distance(x.vectors[ix], y.vectors[iy])].sum()
        return float(total / np.sqrt(len(x) * len(y)))
