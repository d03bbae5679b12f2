"""ASMK core: binarisation, aggregation, kernel, inverted file, codebook and index files.

Scores are checked against a dense brute-force evaluation of HOW's eqs. (2)-(4) written
independently here (per image: residual sums in float64, signs as +-1 vectors, kernel
on dot products / d, gamma = |C_X|^-1/2).
"""

from __future__ import annotations

import numpy as np
import pytest

from hloc_hndesc.config import ConfigError
from hloc_hndesc.retrieval.asmk import (
    ASMK,
    AggregatedImage,
    aggregate_residuals,
    asmk_conf,
    binarize,
    hamming_distance,
    kernel_table,
    selective_kernel,
    unpack_signs,
)
from hloc_hndesc.retrieval.codebook import Codebook, default_codebook_size, load_codebook, save_codebook, train_codebook
from hloc_hndesc.retrieval.inverted_file import InvertedFile, load_index, save_index
from hloc_hndesc.retrieval.storage import RetrievalFileError

DIM = 64
WORDS = 24


def grid_codebook(rng: np.random.Generator, words: int = WORDS, dim: int = DIM) -> Codebook:
    """Centroids on a 1/4 grid: residual sums of grid descriptors are exact in float32."""
    return Codebook(rng.integers(-8, 9, size=(words, dim)) / 4.0, use_gpu=False)


def grid_images(rng: np.random.Generator, count: int, dim: int = DIM, groups: int = 4) -> list[np.ndarray]:
    """Images drawn around a few shared patterns, values on a 1/4 grid."""
    patterns = rng.integers(-8, 9, size=(groups * 3, dim)) / 4.0
    images = []
    for i in range(count):
        n = int(rng.integers(5, 40)) if i % 7 else 0 if i == 7 else 30
        base = patterns[(i % groups) * 3 + rng.integers(0, 3, n)]
        images.append((base + rng.integers(-3, 4, size=(n, dim)) / 4.0).astype(np.float32))
    return images


def dense_asmk(descriptors: np.ndarray, ids: np.ndarray, centroids: np.ndarray) -> dict[int, np.ndarray]:
    """Word -> sign vector (+-1, float64) of the summed residuals (eq. 4's B(X_c))."""
    out = {}
    for word in np.unique(ids):
        rows = (ids == word).any(axis=1)
        total = (descriptors[rows].astype(np.float64) - centroids[word].astype(np.float64)).sum(0)
        out[int(word)] = np.where(total > 0, 1.0, -1.0)
    return out


def dense_similarity(x: dict[int, np.ndarray], y: dict[int, np.ndarray], alpha: float, tau: float) -> float:
    """Eq. (4) with eq. (2), by definition."""
    if not x or not y:
        return 0.0
    total = 0.0
    for word in set(x) & set(y):
        u = float(x[word] @ y[word]) / len(x[word])
        total += u**alpha if u >= tau else 0.0
    return total / np.sqrt(len(x) * len(y))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    codebook = grid_codebook(rng)
    images = grid_images(rng, 30)
    queries = grid_images(np.random.default_rng(4), 6)
    return codebook, images, queries


@pytest.mark.parametrize("dim", [8, 64, 100, 128, 200])
def test_packed_hamming_equals_unpacked(dim):
    rng = np.random.default_rng(dim)
    a, b = rng.normal(size=(50, dim)), rng.normal(size=(50, dim))
    a[0] = 0.0  # zero components are -1 (bit 0), as in the reference
    pa, pb = binarize(a), binarize(b)
    assert pa.dtype == np.uint64 and pa.shape == (50, (dim + 63) // 64)
    sa, sb = unpack_signs(pa, dim), unpack_signs(pb, dim)
    np.testing.assert_array_equal(sa, np.where(a > 0, 1, -1))
    np.testing.assert_array_equal(hamming_distance(pa, pb), (sa != sb).sum(1))
    # u = b(x)^T b(y) / d = 1 - 2 h / d
    u = (sa.astype(np.int64) * sb).sum(1) / dim
    np.testing.assert_allclose(kernel_table(dim, 3.0, 0.0)[hamming_distance(pa, pb)], selective_kernel(u, 3.0, 0.0))


def test_selective_kernel_threshold_and_power():
    u = np.array([-1.0, -0.2, 0.0, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(selective_kernel(u, 3.0, 0.0), [0, 0, 0, 0.001, 0.125, 1.0])
    np.testing.assert_allclose(selective_kernel(u, 1.0, 0.3), [0, 0, 0, 0, 0.5, 1.0])


def test_aggregation_sums_residuals_per_word(setup):
    codebook, images, _ = setup
    desc = images[1]
    ids = codebook.quantize(desc, 3)
    words, sums = aggregate_residuals(desc, ids, codebook.centroids)
    assert np.all(np.diff(words) > 0)
    for word, total in zip(words, sums):
        rows = (ids == word).any(axis=1)
        np.testing.assert_array_equal(total, (desc[rows] - codebook.centroids[word]).sum(0))


def test_quantize_is_nearest_words():
    rng = np.random.default_rng(0)
    codebook = Codebook(rng.normal(size=(40, 16)), use_gpu=False)
    x = rng.normal(size=(100, 16)).astype(np.float32)
    dist = ((x[:, None] - codebook.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(codebook.quantize(x, 3), np.argsort(dist, axis=1)[:, :3])


def test_scores_equal_dense_equations(setup):
    codebook, images, queries = setup
    asmk = ASMK(codebook, {"query_assignments": 3})
    ivf = InvertedFile(codebook.size, DIM)
    ivf.add_many([asmk.aggregate(x) for x in images])
    dense_db = [dense_asmk(x, codebook.quantize(x, 1), codebook.centroids) for x in images]
    for q in queries:
        dense_q = dense_asmk(q, codebook.quantize(q, 3), codebook.centroids)
        expected = [dense_similarity(dense_q, d, 3.0, 0.0) for d in dense_db]
        np.testing.assert_allclose(ivf.scores(asmk.aggregate(q, query=True), asmk.table), expected, rtol=1e-12, atol=1e-15)
        assert asmk.similarity(asmk.aggregate(q, query=True), asmk.aggregate(images[2])) == pytest.approx(expected[2])
    # tau and alpha are honoured
    other = ASMK(codebook, {"alpha": 1.0, "tau": 0.25, "query_assignments": 1})
    x, y = images[0], images[4]
    expected = dense_similarity(
        dense_asmk(x, codebook.quantize(x, 1), codebook.centroids),
        dense_asmk(y, codebook.quantize(y, 1), codebook.centroids), 1.0, 0.25,
    )
    assert other.similarity(other.aggregate(x, query=True), other.aggregate(y)) == pytest.approx(expected, abs=1e-15)


def test_self_similarity_is_one_and_empty_images_score_zero(setup):
    codebook, images, _ = setup
    asmk = ASMK(codebook)
    ivf = InvertedFile(codebook.size, DIM)
    ivf.add_many([asmk.aggregate(x) for x in images])
    assert len(images[7]) == 0 and ivf.words_per_image[7] == 0
    for i in (0, 3, 12):
        assert ivf.scores(asmk.aggregate(images[i]), asmk.table)[i] == pytest.approx(1.0)
    scores = ivf.scores(asmk.aggregate(images[0]), asmk.table)
    assert scores[7] == 0.0 and np.all(scores <= 1.0 + 1e-12)
    assert not ivf.scores(asmk.aggregate(images[7], query=True), asmk.table).any()


def test_chunked_scoring_equals_unchunked(setup):
    codebook, images, queries = setup
    asmk = ASMK(codebook)
    ivf = InvertedFile(codebook.size, DIM)
    ivf.add_many([asmk.aggregate(x) for x in images])
    for q in queries:
        agg = asmk.aggregate(q, query=True)
        full = ivf.scores(agg, asmk.table, chunk_size=1 << 20)
        for chunk in (1, 7, 64):
            np.testing.assert_allclose(ivf.scores(agg, asmk.table, chunk_size=chunk), full, rtol=1e-12, atol=1e-15)


def test_incremental_adds_equal_batch_build(setup, tmp_path):
    codebook, images, queries = setup
    asmk = ASMK(codebook)
    aggregated = [asmk.aggregate(x) for x in images]
    batch = InvertedFile(codebook.size, DIM)
    batch.add_many(aggregated)
    incremental = InvertedFile(codebook.size, DIM)
    incremental.add_many(aggregated[:10])
    save_index(tmp_path / "part.npz", incremental, [f"im{i}" for i in range(10)], {})
    incremental, names, _ = load_index(tmp_path / "part.npz")
    for agg in aggregated[10:20]:
        incremental.add(agg)
    incremental.scores(asmk.aggregate(queries[0], query=True), asmk.table)  # merges pending entries
    incremental.add_many(aggregated[20:])
    for key, value in batch.arrays().items():
        np.testing.assert_array_equal(incremental.arrays()[key], value)


def test_save_load_round_trip_gives_identical_scores(setup, tmp_path):
    codebook, images, queries = setup
    asmk = ASMK(codebook)
    ivf = InvertedFile(codebook.size, DIM)
    ivf.add_many([asmk.aggregate(x) for x in images])
    save_codebook(tmp_path / "cb.npz", codebook, {"note": "test"})
    names = [f"db/{i}.jpg" for i in range(len(images))]
    save_index(tmp_path / "ix.npz", ivf, names, {"codebook": codebook.fingerprint()})
    codebook2, meta = load_codebook(tmp_path / "cb.npz", use_gpu=False)
    assert meta["note"] == "test" and codebook2.fingerprint() == codebook.fingerprint()
    ivf2, names2, meta2 = load_index(tmp_path / "ix.npz")
    assert names2 == names and meta2["codebook"] == codebook.fingerprint()
    asmk2 = ASMK(codebook2)
    for q in queries:
        np.testing.assert_array_equal(
            ivf2.scores(asmk2.aggregate(q, query=True), asmk2.table), ivf.scores(asmk.aggregate(q, query=True), asmk.table)
        )
    assert not list(tmp_path.glob(".*tmp"))


def test_corrupt_and_foreign_files_are_refused(setup, tmp_path):
    codebook, images, _ = setup
    save_codebook(tmp_path / "cb.npz", codebook)
    with pytest.raises(RetrievalFileError, match="holds a 'asmk-codebook'"):
        load_index(tmp_path / "cb.npz")
    data = (tmp_path / "cb.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(RetrievalFileError, match="cut.npz"):
        load_codebook(tmp_path / "cut.npz")
    with pytest.raises(RetrievalFileError, match="not found"):
        load_codebook(tmp_path / "missing.npz")
    np.savez(tmp_path / "obj.npz", __header__=np.array('{"kind": "asmk-codebook", "version": 1}'), centroids=np.array([object()]))
    with pytest.raises(RetrievalFileError, match="obj.npz"):
        load_codebook(tmp_path / "obj.npz")
    ivf = InvertedFile(codebook.size, DIM)
    ivf.add_many([ASMK(codebook).aggregate(x) for x in images[:5]])
    arrays = ivf.arrays()
    arrays["image_ids"] = arrays["image_ids"].copy()
    arrays["image_ids"][0] = 99
    with pytest.raises(RetrievalFileError, match="image ids out of range"):
        InvertedFile.from_arrays(arrays, codebook.size, DIM)


def test_search_topk_exclusion_and_ties():
    ivf = InvertedFile(4, 64)
    same = binarize(np.ones((1, 64)))
    for _ in range(5):
        ivf.add(AggregatedImage(np.array([2]), same))
    ivf.add(AggregatedImage(np.array([1]), same))
    table = kernel_table(64, 3.0, 0.0)
    query = AggregatedImage(np.array([2]), same)
    ids, scores = ivf.search(query, table, topk=3)
    np.testing.assert_array_equal(ids, [0, 1, 2])  # equal scores: ascending ids
    np.testing.assert_allclose(scores, 1.0)
    ids, _ = ivf.search(query, table, topk=10, exclude=np.array([1]), allowed=np.array([1, 1, 1, 0, 1, 1], bool))
    np.testing.assert_array_equal(ids, [0, 2, 4, 5])
    with pytest.raises(ValueError, match="duplicate"):
        ivf.add(AggregatedImage(np.array([1, 1]), np.vstack([same, same])))
    with pytest.raises(ValueError, match="word ids"):
        ivf.add(AggregatedImage(np.array([4]), same))


def test_codebook_size_rule_and_training():
    assert default_codebook_size(20_000_000) == 65536
    assert default_codebook_size(50_000) == 512
    assert default_codebook_size(100) == 16
    assert default_codebook_size(10) == 16
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3000, 8)).astype(np.float32)
    codebook = train_codebook(data, iterations=5, use_gpu=False)
    assert codebook.size == 32 and codebook.dim == 8
    small = train_codebook(data[:10], iterations=2, use_gpu=False)
    assert small.size == 10  # never more words than descriptors
    with pytest.raises(ValueError, match="cannot train 64 words"):
        train_codebook(data[:10], size=64, use_gpu=False)


def test_config_is_strict():
    assert asmk_conf().alpha == 3.0 and asmk_conf().tau == 0.0 and asmk_conf().query_assignments == 5
    with pytest.raises(ConfigError, match="unknown config key 'alhpa'"):
        asmk_conf({"alhpa": 2})
    with pytest.raises(ConfigError, match="tau"):
        asmk_conf({"tau": 1.5})
    with pytest.raises(ConfigError, match="query_assignments"):
        asmk_conf({"query_assignments": 0})
    with pytest.raises(ConfigError, match="should be a"):
        asmk_conf({"l2_normalize": "yes"})


def test_wrong_dimension_is_refused(setup):
    codebook, _, _ = setup
    with pytest.raises(ValueError, match=r"img.jpg: expected \(n, 64\)"):
        ASMK(codebook).aggregate(np.zeros((3, 32), np.float32), where="img.jpg")
    with pytest.raises(ValueError, match="NaN"):
        ASMK(codebook).aggregate(np.full((3, 64), np.nan, np.float32))
