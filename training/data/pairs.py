"""Synthetic training pairs: a source crop and a homography-warped, photometric, maybe stylized target.

Item ``(epoch, index)`` is a pure function of ``(seed, epoch, index)``: four independent
random streams are spawned from ``SeedSequence([seed, epoch, index])`` for the crop, the
homography, the stylization and the photometric change, so switching stylization or one
photometric operation on or off leaves the geometry unchanged, and DataLoader workers
need no random state. Photo ``index % len(pool)`` is used.

The target is cut from the whole photo, not only from the source crop: image1 pixels
outside image0 show real content (they are just not in ``valid1``). The photo region that
image1 sees is area-downscaled to the target's resolution when the homography zooms out
(``antialias``; this also bounds the stylization cost by the target size), then stylized
(with a reference other than the photo itself), then warped with kornia, so the geometry
stays exact. Pixels of image1 seen from outside the photo are 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.evaluation.splits import check_training_dirs
from hloc_hndesc.io import image_to_tensor, resize_max
from hloc_hndesc.training.stylization.transform import STYLIZE_DEFAULTS, ReferencePool, Stylizer, stylize_conf

from .homography import (
    HOMOGRAPHY_DEFAULTS,
    HomographyParams,
    correspondence_mask,
    local_scale,
    sample_homography,
    translation,
    warp_image,
    warp_points,
)
from .photometric import PHOTOMETRIC_DEFAULTS, photometric, photometric_conf
from .photos import POOL_DEFAULTS, PhotoPool

PAIR_DEFAULTS: dict[str, Any] = {
    **POOL_DEFAULTS,
    "crop": 256,  # side of the square source crop and of the target
    "items_per_epoch": None,  # None: one item per photo of the split
    "antialias": True,  # area-downscale the photo region to the target's resolution on zoom-out
    "homography": HOMOGRAPHY_DEFAULTS,
    "photometric": PHOTOMETRIC_DEFAULTS,
    "stylize_probability": 0.3,
    # passed to Stylizer; empty references.image_dirs: the split's own photos are the references
    "stylization": STYLIZE_DEFAULTS,
    "seed": 0,
}


def pair_conf(conf: Mapping[str, Any] | DictConfig | None = None) -> DictConfig:
    """:data:`PAIR_DEFAULTS` merged strictly with ``conf`` (the ``data`` section of a training config)."""
    merged = merge_conf(PAIR_DEFAULTS, conf, "training pairs")
    if int(merged.crop) < 8:
        raise ConfigError(f"training pairs: crop must be >= 8, got {merged.crop}")
    if not 0.0 <= float(merged.stylize_probability) <= 1.0:
        raise ConfigError(f"training pairs: stylize_probability must be in [0, 1], got {merged.stylize_probability}")
    if merged.items_per_epoch is not None and int(merged.items_per_epoch) < 1:
        raise ConfigError(f"training pairs: items_per_epoch must be >= 1 or null, got {merged.items_per_epoch}")
    if int(merged.seed) < 0:
        raise ConfigError(f"training pairs: seed must be >= 0, got {merged.seed}")
    return merged


def _downscale_to_target(
    region: np.ndarray, region_to_1: np.ndarray, pre_corners: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Area-downscale ``region`` to the target's resolution when the warp zooms out everywhere.

    The factor is the largest local zoom of the warp at image1's corners (so no part of the
    target loses resolution); returns the region and its new region -> image1 homography.
    """
    zoom = max(local_scale(region_to_1, tuple(pt)) for pt in pre_corners)
    h, w = region.shape[:2]
    nw, nh = max(1, round(w * zoom)), max(1, round(h * zoom))
    if zoom >= 1.0 or (nw >= w and nh >= h):
        return region, region_to_1
    small = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
    sx, sy = nw / w, nh / h
    # pixel centres at integers: x_small = (x + 0.5) * s - 0.5
    to_small = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return small, region_to_1 @ np.linalg.inv(to_small)


class PairDataset(torch.utils.data.Dataset):
    """Synthetic homography pairs from the photos of one split; see the module docstring.

    ``dataset[index]`` is ``dataset[(0, index)]``. An item is a dict: ``image0``, ``image1``
    (3, S, S) float32 in [0, 1]; ``H_0to1`` (3, 3) float64 (image0 -> image1 pixels, centres
    at integers); ``valid0`` / ``valid1`` (1, S, S) bool (pixels whose correspondence lies
    inside the other image); ``group``, ``index``, ``epoch`` int; ``stylized`` bool;
    ``name`` (the photo). ``torch.utils.data.default_collate`` batches items.
    """

    def __init__(self, conf: Mapping[str, Any] | DictConfig | None, split: str = "train") -> None:
        self.conf = pair_conf(conf)
        c = self.conf
        self.pool = PhotoPool({k: c[k] for k in POOL_DEFAULTS}, split)
        self.split = split
        self.crop = int(c.crop)
        self.seed = int(c.seed)
        self.homography = HomographyParams.from_conf(c.homography)
        self.photometric = photometric_conf(c.photometric)
        self.stylize_probability = float(c.stylize_probability)
        self._stylizer: Stylizer | None = None  # built on first use
        self._stylize_conf = stylize_conf(c.stylization)
        if list(self._stylize_conf.references.image_dirs):
            check_training_dirs([str(d) for d in self._stylize_conf.references.image_dirs])
        self.length = len(self.pool) if c.items_per_epoch is None else int(c.items_per_epoch)

    def __len__(self) -> int:
        return self.length

    @property
    def stylizer(self) -> Stylizer:
        """The stylizer (built on first use; references default to this split's photos)."""
        if self._stylizer is None:
            sc = self._stylize_conf
            references = None
            if not list(sc.references.image_dirs):
                refs = OmegaConf.to_container(sc.references)
                refs["image_dirs"] = list(self.pool.image_dirs)
                references = ReferencePool(refs, OmegaConf.to_container(sc.night), paths=self.pool.paths)
            self._stylizer = Stylizer(sc, references)
        return self._stylizer

    def _photo(self, index: int) -> np.ndarray:
        image = self.pool.load(index)
        h, w = image.shape[:2]
        if min(h, w) < self.crop:
            image = resize_max(image, int(math.ceil(max(h, w) * self.crop / min(h, w))), force=True)
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (0, key) if not isinstance(key, (tuple, list)) else key
        epoch, index = int(epoch), int(index)
        if not 0 <= index < self.length or epoch < 0:
            raise IndexError(f"pair dataset: item ({epoch}, {index}) out of range (length {self.length})")
        streams = np.random.SeedSequence([self.seed, epoch, index]).spawn(4)
        rng_crop, rng_hom, rng_style, rng_photo = (np.random.default_rng(s) for s in streams)
        photo_index = index % len(self.pool)
        photo = self._photo(photo_index)
        S = self.crop
        h, w = photo.shape[:2]
        x0, y0 = int(rng_crop.integers(0, w - S + 1)), int(rng_crop.integers(0, h - S + 1))
        H = sample_homography(rng_hom, (S, S), self.homography)
        photo_to_1 = H @ translation(-x0, -y0)

        # the photo region that image1 sees (pre-image of its corners), with a margin
        inv = np.linalg.inv(photo_to_1)
        corners = np.array([[-0.5, -0.5], [S - 0.5, -0.5], [S - 0.5, S - 0.5], [-0.5, S - 0.5]])
        pre = warp_points(inv, corners)
        bx0 = int(np.clip(math.floor(pre[:, 0].min()) - 2, 0, w - 1))
        by0 = int(np.clip(math.floor(pre[:, 1].min()) - 2, 0, h - 1))
        bx1 = int(np.clip(math.ceil(pre[:, 0].max()) + 3, bx0 + 1, w))
        by1 = int(np.clip(math.ceil(pre[:, 1].max()) + 3, by0 + 1, h))
        region = photo[by0:by1, bx0:bx1]
        region_to_1 = photo_to_1 @ translation(bx0, by0)
        if self.conf.antialias:
            region, region_to_1 = _downscale_to_target(region, region_to_1, pre - (bx0, by0))
        region = image_to_tensor(region)

        stylized = bool(rng_style.uniform() < self.stylize_probability)
        if stylized:
            region, _ = self.stylizer(region, rng_style, exclude=self.pool.paths[photo_index])
        image1 = warp_image(region, region_to_1, (S, S))
        torch_seed = int(rng_photo.integers(0, 2**62))
        image1, _ = photometric(image1, self.photometric, torch_seed)

        H_t = torch.from_numpy(H)
        return {
            "image0": image_to_tensor(photo[y0 : y0 + S, x0 : x0 + S])[0],
            "image1": image1[0].clamp(0.0, 1.0),
            "H_0to1": H_t,
            "valid0": correspondence_mask(torch.from_numpy(np.linalg.inv(H)), (S, S), (S, S))[None],
            "valid1": correspondence_mask(H_t, (S, S), (S, S))[None],
            "group": self.pool.groups[photo_index],
            "index": index,
            "epoch": epoch,
            "stylized": stylized,
            "name": self.pool.names[photo_index],
        }
