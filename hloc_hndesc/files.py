"""Atomic file writes: a crash never leaves a half-written file that reads as complete."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    The temporary name keeps the suffix (writers that choose the format by it still work) and
    is hidden and unique per process; it is removed if the block raises. Parent folders are
    created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``.

    ``durable``: also flush the file and its folder to the disk before returning (fsync), so
    that a power cut cannot leave a renamed but empty file (training checkpoints).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
    if durable:
        _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to the disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]]) -> Path:
    """An hloc pairs file (``name0 name1`` per line), written atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return path
