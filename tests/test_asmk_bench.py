"""Helpers of benchmarks/asmk_speed.py and benchmarks/retrieval.py on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.asmk_speed import Statistics, resample_popularity, synthetic_images
from benchmarks.retrieval import restrict


def test_synthetic_images_have_distinct_words_and_drawn_sizes():
    rng = np.random.default_rng(0)
    popularity = resample_popularity(1.0 / np.arange(1, 200) ** 0.8, 1000, rng)
    assert popularity.shape == (1000,) and popularity.sum() == pytest.approx(1.0)
    sizes = np.array([5, 40, 120])
    words, image, vectors = synthetic_images(rng, 50, sizes, popularity)
    assert vectors.dtype == np.uint32 and vectors.shape == (len(words), 4)
    assert np.all(np.diff(image) >= 0)
    for i in range(50):
        w = words[image == i]
        assert len(np.unique(w)) == len(w) and len(w) in (5, 40, 120)
        assert np.all(np.diff(w) > 0)


def test_restrict_keeps_subset_order():
    names = ["a", "b", "c", "d"]
    rankings = [np.array([3, 1, 2]), np.array([2, 0, 3]), np.array([0, 3, 1]), np.array([1, 2, 0])]
    sub = restrict(rankings, names, ["d", "b"])
    assert [r.tolist() for r in sub] == [[1], [0]]


def test_speed_curve_matches_reference_scores():
    pytest.importorskip("asmk", reason="the reference implementation (pip install asmk==0.1.1) is not installed")
    from benchmarks.asmk_speed import speed_curve

    stats = Statistics(np.array([30, 60, 90]), np.array([90, 150]), np.full(64, 1 / 64), 64, 100.0)
    rows = speed_curve(stats, [40, 80], num_queries=3, seed=0, query_ratios=[1.5, 4.0])
    assert [(r["images"], r["ratio"]) for r in rows] == [(40, 1.5), (40, 4.0), (80, 1.5), (80, 4.0)]
    for row in rows:
        assert row["score_diff"] < 1e-9 and row["ours_ms"] > 0 and row["ref_ms"] > 0
        assert row["ours_bytes"] < row["ref_bytes"]
