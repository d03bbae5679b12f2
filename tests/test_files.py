"""Atomic writes (hloc_hndesc.files): a failed write loses nothing and leaves no debris."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hloc_hndesc.files import write_bytes, write_pairs
from hloc_hndesc.training import checkpoints as ckpt


def test_write_bytes_replaces_whole_file_or_nothing(tmp_path: Path, monkeypatch):
    target = tmp_path / "sub" / "model.pt"
    assert write_bytes(target, b"first", durable=True) == target
    assert target.read_bytes() == b"first"

    def disk_full(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_bytes(target, b"second, never complete", durable=True)
    monkeypatch.undo()
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second"


def test_write_pairs_format(tmp_path: Path):
    path = write_pairs(tmp_path / "pairs.txt", [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg")])
    assert path.read_text().splitlines() == ["a.jpg b.jpg", "a.jpg c.jpg"]


def test_prune_removes_temporary_files_of_interrupted_writes(tmp_path: Path):
    for step in (2, 4, 6):
        ckpt.save_training_checkpoint({"model": {}}, tmp_path, step)
    strays = [tmp_path / ".step_00000008.4242.tmp.pt", tmp_path / "step_00000008.pt.tmp4242"]
    for stray in strays:
        stray.write_bytes(b"half")
    removed = ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert set(strays) <= set(removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000004.pt", "step_00000004.pt.sha256", "step_00000006.pt", "step_00000006.pt.sha256"]
