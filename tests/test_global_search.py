"""Global-descriptor rankings and shortlists (demo, retrieval benchmark)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hloc_hndesc.retrieval.global_search import rank_global, read_global_descriptors, shortlist_pairs


def test_rank_global_orders_by_dot_product_and_never_returns_the_query():
    desc = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]], np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    rankings = rank_global(desc)
    assert [list(r) for r in rankings] == [[1, 3, 2], [0, 3, 2], [3, 1, 0], [2, 1, 0]]


def test_shortlist_pairs_are_unordered_unique_and_cover_every_image():
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    rankings = [[1, 2, 3], [0, 2, 3], [3, 1, 0], [2, 1, 0]]
    assert shortlist_pairs(names, rankings, 1) == [("a.jpg", "b.jpg"), ("c.jpg", "d.jpg")]
    pairs = shortlist_pairs(names, rankings, 2)
    assert pairs == [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("b.jpg", "c.jpg"), ("b.jpg", "d.jpg"), ("c.jpg", "d.jpg")]
    assert len(shortlist_pairs(names, rankings, 10)) == 6  # longer than the set: all pairs, once
    with pytest.raises(ValueError, match="num_matched"):
        shortlist_pairs(names, rankings, 0)


def test_read_global_descriptors_names_the_file_and_the_missing_images(tmp_path: Path):
    path = tmp_path / "global.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("a.jpg").create_dataset("global_descriptor", data=np.ones(4, np.float32))
        handle.create_group("b.jpg").create_dataset("keypoints", data=np.zeros((1, 2), np.float32))
    assert read_global_descriptors(path, ["a.jpg"]).shape == (1, 4)
    with pytest.raises(KeyError, match=r"global\.h5.*b\.jpg"):
        read_global_descriptors(path, ["a.jpg", "b.jpg"])
