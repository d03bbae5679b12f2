"""Reading local descriptors from hloc-layout feature files for ASMK.

hloc stores one group per image name (nested where the name has ``/``) with
``descriptors`` (D, N); the ``how-asmk`` conf writes HOW's whitened local descriptors
there, any local-feature conf (``hynet``, SIFT, ...) works the same way. Every problem
raises :class:`DescriptorFileError` naming the file and, where it applies, the image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..h5io import INCOMPLETE


class DescriptorFileError(ValueError):
    """A descriptor file or entry cannot be used (missing, empty, wrong shape or dimension)."""


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DescriptorFileError(f"{path}: descriptor file not found")
    try:
        return h5py.File(path, "r", libver="latest")
    except OSError as err:
        raise DescriptorFileError(f"{path}: not a readable HDF5 file ({err})") from None


def list_descriptor_names(path: str | Path) -> list[str]:
    """Names of the images that have local ``descriptors`` in an hloc features file (sorted)."""
    path = Path(path)
    names: list[str] = []
    with _open(path) as handle:

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset) and name.endswith("/descriptors") and not name.startswith(INCOMPLETE):
                names.append(name[: -len("/descriptors")])

        handle.visititems(visit)
    return sorted(names)


def _check(path: Path, name: str, raw: np.ndarray, dim: int | None) -> np.ndarray:
    if raw.ndim != 2:
        raise DescriptorFileError(f"{path}: {name}/descriptors has shape {raw.shape}, expected (D, N)")
    if raw.shape[1] == 0:
        return np.zeros((0, dim if dim is not None else raw.shape[0]), np.float32)
    if dim is not None and raw.shape[0] != dim:
        raise DescriptorFileError(
            f"{path}: {name}/descriptors are {raw.shape[0]}-D, expected {dim}-D (shape {raw.shape}, hloc stores (D, N))"
        )
    if not np.issubdtype(raw.dtype, np.floating):
        raise DescriptorFileError(f"{path}: {name}/descriptors are {raw.dtype}, expected floating point")
    desc = np.ascontiguousarray(raw.T, dtype=np.float32)
    if not np.isfinite(desc).all():
        raise DescriptorFileError(f"{path}: {name}/descriptors contain NaN or infinite values")
    return desc


def read_descriptors(path: str | Path, names: Iterable[str], dim: int | None = None) -> dict[str, np.ndarray]:
    """(N, D) float32 descriptors of each image in ``names`` (hloc stores (D, N))."""
    path = Path(path)
    out = {}
    with _open(path) as handle:
        for name in names:
            item = handle.get(name)
            if not isinstance(item, h5py.Group) or "descriptors" not in item:
                raise DescriptorFileError(f"{path}: no local descriptors for image {name!r}")
            out[name] = _check(path, name, item["descriptors"][()], dim)
    return out


def descriptor_dim(path: str | Path, names: Sequence[str]) -> int:
    """The descriptor dimension of the first image of ``names`` in ``path``."""
    path = Path(path)
    with _open(path) as handle:
        for name in names:
            shape = handle[name]["descriptors"].shape
            if len(shape) == 2:
                return int(shape[0])
    raise DescriptorFileError(f"{path}: no (D, N) descriptors among {len(names)} images")


def sample_training_descriptors(
    sources: dict[str, Path], limit: int, seed: int = 0, dim: int | None = None
) -> np.ndarray:
    """At most ``limit`` descriptors drawn evenly from the images of ``sources`` (name -> file)."""
    if not sources:
        raise DescriptorFileError("no images to train a codebook on")
    rng = np.random.default_rng(seed)
    per_image = max(1, -(-int(limit) // len(sources)))
    chunks = []
    by_file: dict[Path, list[str]] = {}
    for name, path in sources.items():
        by_file.setdefault(Path(path), []).append(name)
    for path, names in by_file.items():
        for name, desc in read_descriptors(path, names, dim).items():
            if len(desc) > per_image:
                desc = desc[np.sort(rng.choice(len(desc), per_image, replace=False))]
            chunks.append(desc)
    data = np.concatenate(chunks) if chunks else np.zeros((0, dim or 0), np.float32)
    if len(data) == 0:
        raise DescriptorFileError(f"no descriptors to train a codebook on in {sorted(set(map(str, sources.values())))}")
    if len(data) > limit:
        data = data[np.sort(rng.choice(len(data), int(limit), replace=False))]
    return data
