"""A pool of unlabelled training photos: listing, scene groups, validation slice, loading.

Names: every photo is named ``<folder name>/<path inside the folder>`` (e.g.
``train_natural/urban100/img_001.jpg`` for ``image_dirs: [../shared/data/train_natural]``);
two folders giving the same name are refused.

Groups: photos of one video or one scene must never be each other's negatives. A photo
whose folder path (its name's folders, the image folder's own name included) contains a
folder listed in ``scene_folders`` belongs to the group of that folder (e.g. all of
``train_natural/tum_freiburg``); every other photo is its own group. Group ids are the
ranks of the sorted group keys over the whole pool, so they are the same in both splits.

Validation: a group goes to validation when the sha256 of its key, read as a number in
[0, 1), is below ``val_fraction`` (whole groups, so no scene is split); when that selects
nothing although ``val_fraction > 0``, the group with the smallest value is held out.
Folders must be training folders (:func:`hloc_hndesc.evaluation.splits.check_training_dirs`).

Loading: photos are read with :func:`hloc_hndesc.io.read_image`, downscaled to
``max_size`` and kept as uint8 in an LRU cache of ``cache_size`` photos, or all read at
construction (``preload``). Bad files: with ``check_images`` (or ``preload``) every photo is
decoded at construction and unreadable ones are skipped with a logged warning naming the
file and the problem; otherwise a bad file raises :class:`hloc_hndesc.io.ImageReadError`
(naming it) when it is first loaded.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.evaluation.splits import check_training_dirs
from hloc_hndesc.io import ImageReadError, float_to_uint8, list_images, read_image, resize_max

POOL_DEFAULTS: dict[str, Any] = {
    "image_dirs": [],  # photo folders (searched recursively); relative to the current directory
    "max_size": 512,  # photos are downscaled so that their longer side is at most this
    "scene_folders": ["tum_freiburg"],  # folder names whose photos form one group each
    "val_fraction": 0.05,  # share of the groups held out for validation
    "preload": False,  # read every photo at construction (RAM: ~0.6 MB per 512 px photo)
    "cache_size": 128,  # photos kept by the lazy loader (per process)
    "check_images": False,  # decode every photo at construction, skipping bad ones
}
SPLITS = ("train", "val", "all")


def split_value(key: str) -> float:
    """Deterministic value in [0, 1) from the sha256 of a group key."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / float(16**15)


def group_key(name: str, scene_folders: set[str] | frozenset[str]) -> str:
    """The group key of a photo name: its first scene folder's path, else the name itself."""
    parts = name.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in scene_folders:
            return "/".join(parts[: i + 1])
    return name


class PhotoPool:
    """The photos of one split of ``image_dirs``; see the module docstring.

    Attributes: ``names``, ``paths``, ``groups`` (int per photo), ``group_keys`` (all
    groups of the pool, index = group id), ``split``.
    """

    def __init__(self, conf: Mapping[str, Any] | DictConfig | None, split: str = "train") -> None:
        self.conf = merge_conf(POOL_DEFAULTS, conf, "photo pool")
        if split not in SPLITS:
            raise ValueError(f"photo pool: split={split!r}, expected one of {SPLITS}")
        self.split = split
        c = self.conf
        dirs = [str(d) for d in c.image_dirs]
        if not dirs:
            raise ConfigError("photo pool: image_dirs is empty; name at least one folder of training photos")
        if not 0.0 <= float(c.val_fraction) < 1.0:
            raise ConfigError(f"photo pool: val_fraction must be in [0, 1), got {c.val_fraction}")
        if int(c.max_size) < 16 or int(c.cache_size) < 0:
            raise ConfigError(
                f"photo pool: max_size must be >= 16 and cache_size >= 0, got {c.max_size}, {c.cache_size}"
            )
        check_training_dirs(dirs)
        self.image_dirs = dirs
        entries: dict[str, Path] = {}
        for folder in dirs:
            root = Path(folder)
            prefix = root.resolve().name
            for rel in list_images(root):
                name = f"{prefix}/{rel}"
                if name in entries:
                    raise ValueError(
                        f"photo pool: {name!r} is found in two image folders ({entries[name].parent} and "
                        f"{(root / rel).parent}); give folders distinct names"
                    )
                entries[name] = root / rel
        scenes = frozenset(str(s) for s in c.scene_folders)
        keys = {name: group_key(name, scenes) for name in entries}
        self.group_keys = sorted(set(keys.values()))
        gid = {key: i for i, key in enumerate(self.group_keys)}
        val_keys = {k for k in self.group_keys if split_value(k) < float(c.val_fraction)}
        if not val_keys and float(c.val_fraction) > 0 and len(self.group_keys) > 1:
            val_keys = {min(self.group_keys, key=split_value)}
        self.val_groups = sorted(gid[k] for k in val_keys)
        chosen = [
            n for n in sorted(entries) if split == "all" or ((keys[n] in val_keys) == (split == "val"))
        ]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._preloaded: list[np.ndarray] | None = None
        self.skipped: list[tuple[str, str]] = []
        if c.check_images or c.preload:
            good, images = [], []
            for name in chosen:
                try:
                    image = self._read(entries[name])
                except ImageReadError as err:
                    logger.warning("photo pool: skipping %s (%s)", name, err)
                    self.skipped.append((name, str(err)))
                    continue
                good.append(name)
                images.append(image)
            chosen = good
            if c.preload:
                self._preloaded = images
        if not chosen:
            raise ValueError(f"photo pool: no usable photos in the {split!r} split of {dirs}")
        self.names = chosen
        self.paths = [entries[n] for n in chosen]
        self.groups = [gid[keys[n]] for n in chosen]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_groups(self) -> int:
        """Number of groups of the whole pool (both splits); group ids are below it."""
        return len(self.group_keys)

    def _read(self, path: Path) -> np.ndarray:
        return float_to_uint8(resize_max(read_image(path), int(self.conf.max_size)))

    def load(self, index: int) -> np.ndarray:
        """Photo ``index`` as uint8 (H, W, 3) RGB, longer side at most ``max_size``."""
        if self._preloaded is not None:
            return self._preloaded[index]
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        image = self._read(self.paths[index])
        if int(self.conf.cache_size) > 0:
            self._cache[index] = image
            while len(self._cache) > int(self.conf.cache_size):
                self._cache.popitem(last=False)
        return image
