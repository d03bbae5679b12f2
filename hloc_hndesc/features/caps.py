"""HNDesc-CAPS extractor: DoG keypoints described by the CAPS coarse + fine maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ..models.caps import CAPS_STRIDES, CAPSNet, official_caps_key_map
from ..weights import load_weights
from .base import Extractor, empty_local_features, imagenet_normalize
from .sampling import CONVENTIONS, sample_dense

DETECTORS = ("dog",)


def caps_strides(
    image_size: Sequence[int], map_sizes: Sequence[Sequence[int]], convention: str = "corner"
) -> list[tuple[float, float]]:
    """(sx, sy) stride of each CAPS map (sizes ``(h, w)``) for an image of ``(H, W)`` px.

    ``corner``: the image extent over the map extent (as official CAPS); ``receptive``: the
    nominal strides :data:`~hloc_hndesc.models.caps.CAPS_STRIDES`.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if convention == "corner":
        return [(width / int(size[-1]), height / int(size[-2])) for size in map_sizes]
    return [(float(s), float(s)) for s in CAPS_STRIDES]


def sample_caps(
    maps: Sequence[torch.Tensor], keypoints: torch.Tensor, image_size: Sequence[int], convention: str = "corner"
) -> list[torch.Tensor]:
    """Unit descriptors (B, D_level, N) of keypoints (B, N, 2) in each CAPS map (B, D_level, h, w).

    The sampling of :meth:`CAPSExtractor.describe` (training samples through it too).
    """
    strides = caps_strides(image_size, [m.shape[-2:] for m in maps], convention)
    return [sample_dense(m, keypoints, stride, convention, normalize=True) for m, stride in zip(maps, strides)]


def join_caps(parts: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The extractor's descriptor: unit per-level descriptors concatenated along ``dim``, L2-normalised."""
    return F.normalize(torch.cat(list(parts), dim=dim), dim=dim)


def detect_caps_keypoints(
    image: torch.Tensor, dog: Mapping[str, Any] | None, max_keypoints: int, upright: bool
) -> dict[str, torch.Tensor]:
    """DoG keypoints of an RGB (1, 3, H, W) image in [0, 1] (grey = 0.299 R + 0.587 G + 0.114 B).

    The detection of :meth:`CAPSExtractor.detect` (training detects through it too);
    ``dog`` options go to :func:`hloc_hndesc.features.dog.detect_dog` (None: its defaults).
    """
    from .dog import detect_dog

    weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    gray = (image * weights).sum(1, keepdim=True)
    return detect_dog(gray, dict(dog) if dog is not None else None, max_keypoints=max_keypoints, upright=upright)


class CAPSExtractor(Extractor):
    """DoG keypoints + 256-D CAPS descriptors (coarse and fine, each L2-normalised, concatenated).

    Conf: ``backbone`` / ``decoder_channels`` / ``coarse_dim`` / ``fine_dim`` select the
    network (official CAPS/HNDesc weights: ``resnet50`` with ``[512, 256]``);
    ``detector`` (only ``"dog"`` now); ``max_keypoints`` (strongest by DoG score,
    -1 keeps all); ``dog``: options handed unchanged to
    :func:`hloc_hndesc.features.dog.detect_dog` (``null`` for its defaults);
    ``upright`` (default true: CAPS descriptors ignore orientation, so one keypoint
    per location instead of one per DoG orientation);
    ``sampling``: ``"corner"`` (as official CAPS training samples, the map spanning
    the image) or ``"receptive"`` (see :mod:`hloc_hndesc.features.sampling`).
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "backbone": "resnet18",
        "decoder_channels": [128, 128],
        "coarse_dim": 128,
        "fine_dim": 128,
        "detector": "dog",
        "max_keypoints": 4096,
        "dog": None,
        "upright": True,
        "sampling": "corner",
    }
    in_channels: ClassVar[int] = 3
    weights_name: ClassVar[str] = "hndesc-caps"

    def __init__(self, conf: dict[str, Any] | DictConfig | None = None, weights: str | Path | None = None) -> None:
        super().__init__(conf, weights)
        if self.conf.detector not in DETECTORS:
            raise ValueError(f"CAPSExtractor: detector {self.conf.detector!r} is not supported; choose one of {DETECTORS}")
        if self.conf.sampling not in CONVENTIONS:
            raise ValueError(f"CAPSExtractor: sampling {self.conf.sampling!r} is not one of {CONVENTIONS}")
        self.net = CAPSNet(
            backbone=self.conf.backbone,
            coarse_dim=self.conf.coarse_dim,
            fine_dim=self.conf.fine_dim,
            decoder_channels=tuple(self.conf.decoder_channels),
        )
        self.weights_path = load_weights(self.net, self.weights_name, weights, convert=official_caps_key_map)
        self.net.eval()
        self.descriptor_dim = self.conf.coarse_dim + self.conf.fine_dim

    @torch.no_grad()
    def describe(self, image: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors (D, N) of ``keypoints`` (N, 2, hloc convention) in ``image`` (1, C, H, W) in [0, 1]."""
        image = self.check_image(image)
        keypoints = keypoints.to(self.device, torch.float32)
        if keypoints.ndim != 2 or keypoints.shape[-1] != 2:
            raise ValueError(f"expected keypoints of shape (N, 2), got {tuple(keypoints.shape)}")
        if keypoints.shape[0] == 0:
            return image.new_zeros(self.descriptor_dim, 0)
        maps = self.net(imagenet_normalize(image))
        parts = sample_caps(maps, keypoints[None], image.shape[-2:], self.conf.sampling)
        return join_caps(parts)[0]

    def detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """DoG keypoints of a checked (1, 3, H, W) image (the ``max_keypoints`` of largest score)."""
        options = OmegaConf.to_container(self.conf.dog) if self.conf.dog is not None else None
        found = detect_caps_keypoints(image, options, int(self.conf.max_keypoints), bool(self.conf.upright))
        return {k: v.to(self.device) for k, v in found.items()}

    def _forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        detected = self.detect(image)
        if detected["keypoints"].shape[0] == 0:
            out = empty_local_features(self.descriptor_dim, self.device)
            out.update({k: v for k, v in detected.items() if k not in out})
            return out
        out = dict(detected)
        out["keypoints"] = detected["keypoints"].float()
        out["scores"] = detected["scores"].float()
        out["descriptors"] = self.describe(image, out["keypoints"])
        return out
