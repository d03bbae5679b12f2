"""Codebook and index files: npz with explicit arrays and a JSON header, written atomically.

Files are read with ``allow_pickle=False``, so a file from elsewhere can never run code;
every problem (missing, truncated, another kind of file, missing arrays) raises
:class:`RetrievalFileError` naming the file.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path

FORMAT_VERSION = 1


class RetrievalFileError(ValueError):
    """A codebook or index file is missing, corrupt or of the wrong kind (the message names it)."""


def save_npz(path: str | Path, kind: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``arrays`` and a JSON header (``kind``, format version, ``meta``) to ``path``.

    The data go to a temporary file in the same folder first and are renamed over
    ``path`` only once complete, so a crash never leaves a file that reads as valid.
    """
    path = Path(path)
    header = json.dumps({"kind": kind, "version": FORMAT_VERSION, "meta": dict(meta)}, sort_keys=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, __header__=np.array(header), **{k: np.asarray(v) for k, v in arrays.items()})
        handle.flush()
        os.fsync(handle.fileno())
    return path


def load_npz(path: str | Path, kind: str, required: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_npz` for ``kind``; returns ``(arrays, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise RetrievalFileError(f"{path}: {kind} file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise RetrievalFileError(f"{path}: not a readable {kind} file ({err})") from None
    if "__header__" not in arrays:
        raise RetrievalFileError(f"{path}: not a {kind} file of hloc_hndesc (no header)")
    try:
        header = json.loads(str(arrays.pop("__header__")))
    except ValueError:
        raise RetrievalFileError(f"{path}: corrupt header") from None
    if header.get("kind") != kind:
        raise RetrievalFileError(f"{path}: holds a {header.get('kind')!r}, not a {kind!r}")
    if header.get("version") != FORMAT_VERSION:
        raise RetrievalFileError(f"{path}: format version {header.get('version')}, expected {FORMAT_VERSION}")
    missing = [key for key in required if key not in arrays]
    if missing:
        raise RetrievalFileError(f"{path}: {kind} file lacks arrays {missing}")
    return arrays, dict(header.get("meta", {}))
