"""Atomic, resumable HDF5 entries in hloc's layout."""

import h5py
import numpy as np

from hloc_hndesc.h5io import INCOMPLETE, complete_names, discard_incomplete, write_entry


def _local(n=3):
    return {
        "keypoints": np.zeros((n, 2), np.float32),
        "descriptors": np.zeros((4, n), np.float32),
        "scores": np.zeros(n, np.float32),
        "image_size": np.array([10, 20]),
    }


def test_nested_names_and_replacement(tmp_path):
    path = tmp_path / "f.h5"
    write_entry(path, "a/b.jpg", _local(3), {"keypoints": {"uncertainty": 2.0}})
    write_entry(path, "a/b.jpg", _local(5))
    with h5py.File(path) as fd:
        assert fd["a/b.jpg/keypoints"].shape == (5, 2)
        assert INCOMPLETE not in fd
    assert complete_names(path) == {"a/b.jpg"}


def test_interrupted_write_is_not_complete(tmp_path):
    path = tmp_path / "f.h5"
    write_entry(path, "ok.jpg", _local())
    with h5py.File(path, "a") as fd:  # what a crash mid-write leaves behind
        grp = fd.create_group(f"{INCOMPLETE}/crashed.jpg")
        grp.create_dataset("keypoints", data=np.zeros((2, 2)))
        part = fd.create_group("half.jpg")  # an old-style partial group, missing datasets
        part.create_dataset("keypoints", data=np.zeros((2, 2)))
    assert complete_names(path) == {"ok.jpg"}
    assert discard_incomplete(path) == 1
    with h5py.File(path) as fd:
        assert INCOMPLETE not in fd


def test_global_entries(tmp_path):
    path = tmp_path / "g.h5"
    write_entry(path, "q.jpg", {"global_descriptor": np.ones(8, np.float32), "image_size": np.array([4, 4])})
    assert complete_names(path) == {"q.jpg"}
