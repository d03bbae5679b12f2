"""HOW extractor: multi-scale global descriptor (``mode: global``) or local features (``mode: local``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..models.how import HOWNet, official_how_key_map
from ..weights import load_weights
from .base import Extractor, imagenet_normalize

MODES = ("global", "local")


class HOWExtractor(Extractor):
    """HOW (Tolias et al. 2020) through our :class:`~hloc_hndesc.models.how.HOWNet`.

    The image is first downscaled (bilinear, antialiased) so that its longer side is
    at most ``max_size``, then run at every factor of ``scales``. ``max_scaled_side``
    (optional) drops the pyramid levels whose longer side would exceed it (the
    smallest scale is always kept), capping time and memory of the x2 level.

    - ``mode: global``: ``global_descriptor`` (d,), attention-weighted SPoC over scales.
    - ``mode: local``: the ``features_num`` strongest features: ``descriptors`` (d, n)
      (whitened, not L2-normalised, as official HOW hands them to ASMK), ``scores``
      (n,) strengths, ``keypoints`` (n, 2) receptive-field centres in the input image
      (hloc convention), ``scales`` (n,) the pyramid factor of each feature.

    Official checkpoints load through :func:`official_how_key_map`; ``how_r18_1000``
    has the full trunk (``trunk_layers: 4``, D = 512), ``how_r50-_*`` is
    ``backbone: resnet50, trunk_layers: 3``.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "backbone": "resnet18",
        "trunk_layers": 3,
        "dim": 128,
        "smoothing_kernel": 3,
        "mode": "global",
        "max_size": 1024,
        "scales": [2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25],
        "max_scaled_side": None,
        "features_num": 1000,
    }
    in_channels: ClassVar[int] = 3
    weights_name: ClassVar[str] = "how"

    def __init__(self, conf: dict[str, Any] | DictConfig | None = None, weights: str | Path | None = None) -> None:
        super().__init__(conf, weights)
        if self.conf.mode not in MODES:
            raise ValueError(f"HOWExtractor: mode {self.conf.mode!r} is not one of {MODES}")
        if len(self.conf.scales) == 0:
            raise ValueError("HOWExtractor: scales is empty")
        self.net = HOWNet(
            backbone=self.conf.backbone,
            trunk_layers=self.conf.trunk_layers,
            dim=self.conf.dim,
            smoothing_kernel=self.conf.smoothing_kernel,
        )
        self.weights_path = load_weights(self.net, self.weights_name, weights, convert=official_how_key_map)
        self.net.eval()
        self.descriptor_dim = int(self.conf.dim)

    @property
    def is_global(self) -> bool:
        return self.conf.mode == "global"

    def pyramid_scales(self, height: int, width: int) -> list[float]:
        """The conf scales kept for an image of this (already ``max_size``-bounded) size."""
        scales = [float(s) for s in self.conf.scales]
        cap = self.conf.max_scaled_side
        if cap is None:
            return scales
        kept = [s for s in scales if max(height, width) * s <= cap]
        return kept or [min(scales)]

    @torch.no_grad()
    def _forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = image.shape[-2:]
        factor = min(1.0, self.conf.max_size / max(height, width)) if self.conf.max_size else 1.0
        if factor < 1.0:
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        small_h, small_w = image.shape[-2:]
        scales = self.pyramid_scales(small_h, small_w)
        x = imagenet_normalize(image)
        if self.conf.mode == "global":
            return {"global_descriptor": self.net.forward_global(x, scales)[0]}
        out = self.net.forward_local(x, scales, self.conf.features_num)
        back = out["keypoints"].new_tensor([width / small_w, height / small_h])
        return {
            "keypoints": (out["keypoints"][0] + 0.5) * back - 0.5,
            "scores": out["strengths"][0],
            "descriptors": out["descriptors"][0].T.contiguous(),
            "scales": out["scales"][0],
        }
