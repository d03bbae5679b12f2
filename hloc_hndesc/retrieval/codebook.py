"""Visual-word codebook: k-means with faiss (GPU when available), nearest-word quantisation, npz files."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .. import logger
from .storage import RetrievalFileError, load_npz, save_npz

KIND = "asmk-codebook"


def gpu_available() -> bool:
    """Whether this faiss has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_codebook_size(num_descriptors: int, per_word: int = 64, minimum: int = 16, maximum: int = 65536) -> int:
    """The largest power of two with at least ``per_word`` training descriptors per word,
    clipped to ``[minimum, maximum]`` (HOW: 65536 words from ~20M descriptors of 20k images)."""
    if num_descriptors < 1:
        raise ValueError("no training descriptors")
    words = 2 ** max(0, math.floor(math.log2(max(1, num_descriptors // per_word))))
    return int(min(maximum, max(minimum, words)))


class Codebook:
    """k visual words (k, d) float32 and a faiss exact L2 index over them."""

    def __init__(self, centroids: np.ndarray, use_gpu: bool = True) -> None:
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] < 1:
            raise ValueError(f"codebook centroids must be (k >= 1, d >= 1), got shape {centroids.shape}")
        if not np.isfinite(centroids).all():
            raise ValueError("codebook centroids contain NaN or infinite values")
        self.centroids = centroids
        self.index = faiss.IndexFlatL2(self.dim)
        if use_gpu and gpu_available():
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, self.index)
        self.index.add(centroids)

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def fingerprint(self) -> str:
        """sha256 of the centroids (ties an index to the codebook it was built with)."""
        return hashlib.sha256(self.centroids.tobytes() + str(self.centroids.shape).encode()).hexdigest()

    def quantize(self, descriptors: np.ndarray, assignments: int = 1) -> np.ndarray:
        """Ids (n, assignments) int64 of the nearest words of (n, d) descriptors, nearest first."""
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if len(descriptors) == 0:
            return np.zeros((0, assignments), np.int64)
        _, ids = self.index.search(descriptors, int(assignments))
        return ids.astype(np.int64, copy=False)


def train_codebook(
    descriptors: np.ndarray,
    size: int | None = None,
    iterations: int = 10,
    seed: int = 0,
    per_word: int = 64,
    minimum: int = 16,
    maximum: int = 65536,
    max_descriptors: int | None = None,
    use_gpu: bool = True,
) -> Codebook:
    """k-means (faiss) on (n, d) descriptors; ``size`` None follows :func:`default_codebook_size`."""
    descriptors = np.asarray(descriptors)
    if descriptors.ndim != 2 or len(descriptors) == 0:
        raise ValueError(f"need (n >= 1, d) training descriptors, got shape {descriptors.shape}")
    rng = np.random.default_rng(seed)
    if max_descriptors is not None and len(descriptors) > max_descriptors:
        descriptors = descriptors[np.sort(rng.choice(len(descriptors), max_descriptors, replace=False))]
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if size is None:
        size = min(len(descriptors), default_codebook_size(len(descriptors), per_word, minimum, maximum))
    size = int(size)
    if size > len(descriptors):
        raise ValueError(f"cannot train {size} words from {len(descriptors)} descriptors")
    gpu = use_gpu and gpu_available()
    logger.info(
        "Training a %d-word codebook on %d %d-D descriptors (faiss k-means, %d iterations, %s).",
        size, len(descriptors), descriptors.shape[1], iterations, "GPU" if gpu else "CPU",
    )
    kmeans = faiss.Kmeans(descriptors.shape[1], size, niter=int(iterations), seed=int(seed), gpu=gpu, verbose=False)
    kmeans.train(descriptors)
    return Codebook(kmeans.centroids, use_gpu=use_gpu)


def save_codebook(path: str | Path, codebook: Codebook, meta: dict[str, Any] | None = None) -> Path:
    """Write the centroids (npz, atomically) with ``meta`` (e.g. the conf it was trained with)."""
    info = {"size": codebook.size, "dim": codebook.dim, "fingerprint": codebook.fingerprint(), **(meta or {})}
    return save_npz(path, KIND, {"centroids": codebook.centroids}, info)


def load_codebook(path: str | Path, use_gpu: bool = True) -> tuple[Codebook, dict[str, Any]]:
    """Read a codebook file written by :func:`save_codebook` (checked against its fingerprint)."""
    arrays, meta = load_npz(path, KIND, ("centroids",))
    try:
        codebook = Codebook(arrays["centroids"], use_gpu=use_gpu)
    except ValueError as err:
        raise RetrievalFileError(f"{path}: {err}") from None
    if meta.get("fingerprint") not in (None, codebook.fingerprint()):
        raise RetrievalFileError(f"{path}: centroids do not match the recorded fingerprint (corrupt file)")
    return codebook, meta
