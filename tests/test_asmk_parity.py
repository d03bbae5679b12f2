"""Parity with the authors' implementation (the ``asmk`` package, 0.1.1): same descriptors,
same codebook (ours loaded into theirs) -> the same rankings and scores within 1e-5.

asmk is not a dependency of this package (``pip install asmk==0.1.1`` to run this).
"""

from __future__ import annotations

import numpy as np
import pytest

asmk_ref = pytest.importorskip("asmk", reason="the reference implementation (pip install asmk==0.1.1) is not installed")

from hloc_hndesc.retrieval.asmk import ASMK  # noqa: E402
from hloc_hndesc.retrieval.codebook import train_codebook  # noqa: E402
from hloc_hndesc.retrieval.inverted_file import InvertedFile  # noqa: E402

from benchmarks.asmk_speed import reference_method  # noqa: E402


def scene_images(rng, count, dim, n, scenes=8, noise=0.2):
    """Images of ``scenes`` scenes: each sees ``n`` of its scene's 1.5 n points, with noise."""
    points = rng.normal(size=(scenes, 3 * n // 2, dim))
    return [
        (points[i % scenes, rng.choice(3 * n // 2, n, replace=False)] + noise * rng.normal(size=(n, dim))).astype(np.float32)
        for i in range(count)
    ]


def assert_same_ranking(ids, scores, ref_ids, tol=1e-9):
    """Equal ids position by position, except inside blocks of equal scores (any order there)."""
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or abs(scores[end] - scores[start]) > tol:
            assert set(ids[start:end]) == set(ref_ids[start:end]), (start, end)
            start = end


@pytest.mark.parametrize("dim,alpha,tau,query_ma", [(128, 3.0, 0.0, 5), (64, 1.0, 0.2, 1)])
def test_same_rankings_and_scores_as_reference(dim, alpha, tau, query_ma):
    rng = np.random.default_rng(dim)
    images = scene_images(rng, 40, dim, 250)
    queries = [x[:120] + 0.1 * rng.normal(size=(120, dim)).astype(np.float32) for x in images[:8]]
    codebook = train_codebook(np.concatenate(images), size=128, iterations=8, use_gpu=False)
    conf = {"alpha": alpha, "tau": tau, "query_assignments": query_ma}
    ours = ASMK(codebook, conf)
    ivf = InvertedFile(codebook.size, dim)
    ivf.add_many([ours.aggregate(x) for x in images])

    ref = reference_method(codebook.centroids, alpha=alpha, tau=tau, query_assignments=query_ma)
    ref = ref.build_ivf(np.concatenate(images), np.concatenate([np.full(len(x), i) for i, x in enumerate(images)]))
    qvecs = np.concatenate(queries)
    qids = np.concatenate([np.full(len(x), i) for i, x in enumerate(queries)])
    _, _, ref_ranks, ref_scores = ref.query_ivf(qvecs, qids)
    assert ref.inverted_file.stats["vectors_per_image"] == pytest.approx(ivf.stats()["vectors_per_image"])

    for i, q in enumerate(queries):
        ids, scores = ivf.search(ours.aggregate(q, query=True), ours.table)
        expected = np.zeros(len(images))
        expected[ref_ranks[i]] = ref_scores[i]
        np.testing.assert_allclose(ivf.scores(ours.aggregate(q, query=True), ours.table), expected, atol=1e-5, rtol=0)
        assert_same_ranking(ids, scores, ref_ranks[i])
        assert len(np.unique(scores.round(9))) >= 5  # the rankings are not trivially all ties
