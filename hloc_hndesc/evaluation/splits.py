"""Training and evaluation images stay disjoint.

``../shared/data`` keeps the unlabelled training photos in ``train_natural/`` and every
evaluation set in its own folder. Disjointness is checked on content, not on names: the
sha256 of the file and a 64-bit difference hash (dHash) of the grey image, which also
catches a resized or re-encoded copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..io import IMAGE_SUFFIXES

#: data folders the training may read.
TRAINING_SOURCES = ("train_natural",)
#: data folders that evaluation uses; training must never read them.
EVALUATION_SOURCES = (
    "strecha",
    "oxford_affine",
    "scannet_sample",
    "phototourism_sample",
    "sacre_coeur",
    "lightglue_pairs",
)


class SplitError(ValueError):
    """An evaluation image would be used for training, or the reverse."""


def is_training_path(path: str | Path) -> bool:
    """Whether ``path`` lies in a training source folder."""
    return any(part in TRAINING_SOURCES for part in Path(path).resolve().parts)


def check_not_training(paths: Iterable[str | Path], purpose: str = "evaluation") -> None:
    """Raise :class:`SplitError` naming the first path that lies in a training folder."""
    for path in paths:
        if is_training_path(path):
            raise SplitError(f"{path}: is a training photo ({'/'.join(TRAINING_SOURCES)}); not usable for {purpose}")


def check_training_dirs(dirs: Iterable[str | Path]) -> None:
    """Raise :class:`SplitError` if a training folder is, or lies in, an evaluation source.

    Any other folder (a user's own photos) is accepted; the shipped training configs are
    further held to :data:`TRAINING_SOURCES` by the test suite.
    """
    for folder in dirs:
        bad = [p for p in Path(folder).resolve().parts if p in EVALUATION_SOURCES]
        if bad:
            raise SplitError(
                f"{folder}: lies in the evaluation set {bad[0]!r}; training photos must never come from "
                f"the evaluation sets ({', '.join(EVALUATION_SOURCES)})"
            )


def list_source_images(root: str | Path, sources: Iterable[str]) -> list[Path]:
    """Every image file under ``root/<source>`` for the given sources, sorted."""
    out = []
    for source in sources:
        folder = Path(root) / source
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: data folder not found")
        out += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return out


def dhash(path: str | Path) -> int:
    """64-bit difference hash of the grey image (9x8 area-resized, horizontal gradients)."""
    image = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if image is None:
        raise SplitError(f"{path}: cannot be decoded")
    small = cv2.resize(image, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


@dataclass
class Fingerprint:
    """Content identity of an image file."""

    path: Path
    sha256: str
    dhash: int


def fingerprint(path: str | Path) -> Fingerprint:
    """sha256 of the bytes and dHash of the pixels."""
    path = Path(path)
    return Fingerprint(path, hashlib.sha256(path.read_bytes()).hexdigest(), dhash(path))


def find_overlap(
    training: Iterable[str | Path], evaluation: Iterable[str | Path], max_hamming: int = 4
) -> list[tuple[Path, Path, str]]:
    """Pairs (training, evaluation) of identical files or near-identical images."""
    train = [fingerprint(p) for p in training]
    found = []
    for e in (fingerprint(p) for p in evaluation):
        for t in train:
            if t.sha256 == e.sha256:
                found.append((t.path, e.path, "identical bytes"))
            elif bin(t.dhash ^ e.dhash).count("1") <= max_hamming:
                found.append((t.path, e.path, f"dHash distance {bin(t.dhash ^ e.dhash).count('1')}"))
    return found


def training_dirs_of(conf: Mapping[str, Any]) -> list[str]:
    """The image folders a training config reads (``data.image_dirs`` / ``data.train_dirs``)."""
    data = conf.get("data", {}) or {}
    dirs: list[str] = []
    for key in ("image_dirs", "train_dirs", "image_dir"):
        value = data.get(key)
        if value is not None:
            dirs += [value] if isinstance(value, str) else list(value)
    return dirs
