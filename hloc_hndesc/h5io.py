"""hloc's HDF5 feature layout, written so that a crash never leaves a valid-looking entry.

Each image is written into a group under ``/.incomplete/`` and only moved to its
final name (``fd.move``, a single link operation) once every dataset is there. hloc
and this package treat only entries outside ``/.incomplete`` that hold the required
datasets as complete; a resumed run discards leftovers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

INCOMPLETE = ".incomplete"
LOCAL_KEYS = ("keypoints", "descriptors", "scores", "image_size")
GLOBAL_KEYS = ("global_descriptor", "image_size")


def _required(group: h5py.Group) -> tuple[str, ...]:
    return GLOBAL_KEYS if "global_descriptor" in group else LOCAL_KEYS


def complete_names(path: str | Path) -> set[str]:
    """Names of the complete entries of a features file (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return set()
    names: set[str] = set()
    with h5py.File(path, "r") as fd:

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Group) and not name.startswith(INCOMPLETE):
                keys = set(obj.keys())
                if keys and all(k in keys for k in _required(obj)):
                    names.add(name)

        fd.visititems(visit)
    return names


def discard_incomplete(path: str | Path) -> int:
    """Delete leftovers of interrupted writes; return how many were removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with h5py.File(path, "a") as fd:
        if INCOMPLETE not in fd:
            return 0
        count = len(fd[INCOMPLETE])
        del fd[INCOMPLETE]
    return count


def write_entry(
    path: str | Path, name: str, data: Mapping[str, np.ndarray], attrs: Mapping[str, Mapping] | None = None
) -> None:
    """Write one image's arrays as group ``name`` atomically (replacing an old entry)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{INCOMPLETE}/{name.replace('/', '|')}"
    with h5py.File(path, "a", libver="latest") as fd:
        if tmp in fd:
            del fd[tmp]
        grp = fd.create_group(tmp)
        for key, value in data.items():
            grp.create_dataset(key, data=value)
            for akey, avalue in (attrs or {}).get(key, {}).items():
                grp[key].attrs[akey] = avalue
        fd.flush()
        if name in fd:
            del fd[name]
        parent = name.rsplit("/", 1)[0] if "/" in name else None
        if parent is not None:
            fd.require_group(parent)
        fd.move(tmp, name)
        if len(fd[INCOMPLETE]) == 0:
            del fd[INCOMPLETE]
