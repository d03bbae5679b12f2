"""The stylizer: WCT (pixel or feature space) then content-guided smoothing; online transform.

:class:`Stylizer` holds one configuration (:data:`STYLIZE_DEFAULTS`, the only place of
the defaults) and, for the feature variant, the encoder/decoder trained by
``hloc-hndesc train --config stylizer_ae``. :meth:`Stylizer.stylize` is the
deterministic core (content + reference -> stylized); :meth:`Stylizer.__call__` is the
online transform of the training pairs: it draws a reference from a
:class:`ReferencePool` (random photos of the training pool, or a rendered night scene)
with the caller's random generator.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.io import image_to_tensor, list_images, read_image, resize_max

from .autoencoder import load_autoencoder
from .colour import lalphabeta_to_rgb, rgb_to_lalphabeta
from .night import NIGHT_DEFAULTS, render_night_reference
from .smoothing import SolveReport, guided_filter, matting_smooth
from .wct import match_regions, wct_transfer

STYLIZE_DEFAULTS: dict[str, Any] = {
    "variant": "pixel",  # pixel: WCT of lαβ colours; feature: WCT of encoder features
    "strength": 1.0,  # 0: content unchanged, 1: full transfer
    "local_weight": 0.5,  # share of the per-region WCT in the blend with the global one
    "regions": 3,
    "region_height_weight": 2.0,
    "eps_rel": 1e-2,  # content eigenvalue floor, relative to the largest (pixel variant)
    "feature_eps_rel": 1e-3,  # the same for encoder features
    "feature_weights": None,  # None: the shipped stylizer_ae checkpoint
    "smoothing": "guided",  # guided (online), matting (exact, offline) or none
    "guided": {"radius": 4, "eps": 1e-4},
    "matting": {"mu": 100.0, "radius": 1, "eps": 1e-5, "tol": 1e-6, "max_iter": 3000},
    "references": {
        "image_dirs": [],
        "night_probability": 0.3,
        "max_size": 256,  # references only give statistics: a small copy is enough
        "cache_size": 256,
    },
    "night": dict(NIGHT_DEFAULTS),
}
VARIANTS = ("pixel", "feature")
SMOOTHINGS = ("guided", "matting", "none")


def stylize_conf(conf: Mapping[str, Any] | DictConfig | None = None) -> DictConfig:
    """:data:`STYLIZE_DEFAULTS` merged strictly with ``conf`` (unknown keys raise ConfigError)."""
    merged = merge_conf(STYLIZE_DEFAULTS, conf, "stylization")
    if merged.variant not in VARIANTS:
        raise ConfigError(f"stylization: variant={merged.variant!r}, expected one of {VARIANTS}")
    if merged.smoothing not in SMOOTHINGS:
        raise ConfigError(f"stylization: smoothing={merged.smoothing!r}, expected one of {SMOOTHINGS}")
    return merged


@dataclass(frozen=True)
class Reference:
    """A style reference: the image (1, 3, H, W) and what it is (a path or ``night:<seed>``)."""

    image: torch.Tensor
    source: str


class ReferencePool:
    """Style references: photos of ``image_dirs`` (downscaled, cached) and rendered night scenes.

    ``paths`` gives the photos directly (e.g. a training split already listed) instead of
    listing ``conf["image_dirs"]``.
    """

    def __init__(
        self,
        conf: Mapping[str, Any] | DictConfig,
        night_conf: Mapping[str, Any] | None = None,
        paths: list[Path] | None = None,
    ) -> None:
        self.conf = conf
        self.night_conf = night_conf
        if paths is not None:
            self.paths = list(paths)
        else:
            self.paths = [Path(root) / name for root in conf["image_dirs"] for name in list_images(root)]
        if not self.paths and conf["night_probability"] < 1:
            raise ValueError(
                "stylization references: no photos (references.image_dirs is empty or has no images) "
                "and night_probability < 1"
            )
        self._cache: OrderedDict[Path, torch.Tensor] = OrderedDict()
        self._index = {p.resolve(): i for i, p in enumerate(self.paths)}

    def load(self, path: Path) -> torch.Tensor:
        """A reference photo at ``max_size``, as (1, 3, H, W); read errors name the file."""
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        image = image_to_tensor(resize_max(read_image(path), self.conf["max_size"]))
        self._cache[path] = image
        while len(self._cache) > self.conf["cache_size"]:
            self._cache.popitem(last=False)
        return image

    def night(self, seed: int, aspect: float) -> Reference:
        """A rendered night scene of the pool's size with the given aspect (w / h)."""
        side = int(self.conf["max_size"])
        size = (side, max(16, round(side * aspect))) if aspect <= 1 else (max(16, round(side / aspect)), side)
        image = render_night_reference(size, np.random.default_rng(seed), self.night_conf)
        return Reference(image_to_tensor(image), f"night:{seed}")

    def sample(self, rng: np.random.Generator, aspect: float = 4 / 3, exclude: Path | None = None) -> Reference:
        """Draw a reference: a night render with ``night_probability``, else a random photo
        other than ``exclude`` (a night render when ``exclude`` is the only photo)."""
        if not self.paths or rng.uniform() < self.conf["night_probability"]:
            return self.night(int(rng.integers(2**31)), aspect)
        skip = None if exclude is None else self._index.get(Path(exclude).resolve())
        if skip is not None and len(self.paths) == 1:
            return self.night(int(rng.integers(2**31)), aspect)
        i = int(rng.integers(len(self.paths) - (skip is not None)))
        path = self.paths[i + (skip is not None and i >= skip)]
        return Reference(self.load(path), str(path))


class Stylizer:
    """Photorealistic stylization with one configuration; see the module docstring."""

    def __init__(
        self,
        conf: Mapping[str, Any] | DictConfig | None = None,
        references: ReferencePool | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.conf = stylize_conf(conf)
        self.device = torch.device(device)
        self.autoencoder = None
        if self.conf.variant == "feature":
            self.autoencoder = load_autoencoder(self.conf.feature_weights).to(self.device).eval()
        self._references = references
        self.last_solve: SolveReport | None = None

    @property
    def references(self) -> ReferencePool:
        """The reference pool (built from the config on first use)."""
        if self._references is None:
            self._references = ReferencePool(self.conf.references, OmegaConf.to_container(self.conf.night))
        return self._references

    @torch.no_grad()
    def stylize(self, content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Stylize ``content`` (1, 3, H, W) in [0, 1] with ``reference`` (1, 3, H', W')."""
        if content.ndim != 4 or content.shape[:2] != (1, 3) or reference.ndim != 4 or reference.shape[:2] != (1, 3):
            raise ValueError(
                f"stylize expects (1, 3, H, W) images, got {tuple(content.shape)} and {tuple(reference.shape)}"
            )
        content = content.to(self.device, torch.float32).clamp(0, 1)
        reference = reference.to(self.device, torch.float32).clamp(0, 1)
        c = self.conf
        c_lab, r_lab = rgb_to_lalphabeta(content), rgb_to_lalphabeta(reference)
        regions = (None, None)
        if c.local_weight > 0 and c.regions > 1:
            regions = match_regions(c_lab[0], r_lab[0], c.regions, c.region_height_weight)
        if c.variant == "pixel":
            out = lalphabeta_to_rgb(wct_transfer(c_lab[0], r_lab[0], *regions, c.local_weight, c.strength, c.eps_rel)[None])
        else:
            out = self._feature_wct(content, reference, regions)
        return self.smooth(content, out).clamp(0, 1)

    def _feature_wct(
        self, content: torch.Tensor, reference: torch.Tensor, regions: tuple[torch.Tensor | None, torch.Tensor | None]
    ) -> torch.Tensor:
        enc_c = self.autoencoder.encode(content)
        enc_r = self.autoencoder.encode(reference)
        fc, fr = enc_c.features[0], enc_r.features[0]
        cr, rr = regions
        if cr is not None:
            cr = F.interpolate(cr[None], fc.shape[-2:], mode="area")[0]
            rr = F.interpolate(rr[None], fr.shape[-2:], mode="area")[0]
        c = self.conf
        styled = wct_transfer(fc, fr, cr, rr, c.local_weight, c.strength, c.feature_eps_rel)
        return self.autoencoder.decode(enc_c, styled[None]).clamp(0, 1)

    def smooth(self, content: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
        """Content-guided smoothing of ``stylized`` with the configured method."""
        c = self.conf
        if c.smoothing == "guided":
            return guided_filter(content, stylized, c.guided.radius, c.guided.eps).float()
        if c.smoothing == "matting":
            m = c.matting
            out, self.last_solve = matting_smooth(content, stylized, m.mu, m.radius, m.eps, m.tol, m.max_iter)
            return out
        return stylized

    def __call__(
        self, image: torch.Tensor, rng: np.random.Generator, exclude: Path | None = None
    ) -> tuple[torch.Tensor, str]:
        """Online transform: stylize ``image`` (1, 3, H, W) with a reference drawn by ``rng``.

        Returns the stylized image and the reference's source (path or ``night:<seed>``).
        """
        h, w = image.shape[-2:]
        ref = self.references.sample(rng, w / h, exclude)
        return self.stylize(image, ref.image), ref.source
