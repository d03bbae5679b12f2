"""The extractor contract shared by every feature extractor of the package.

An extractor is a ``torch.nn.Module`` built from a conf (merged strictly with its
class ``default_conf``) and optional ``weights``. ``forward`` takes one image as a
float tensor of shape (1, C, H, W) in [0, 1] (C = 3 RGB, or 1 grey where the
extractor allows it) and returns *unbatched* tensors:

- local features: ``keypoints`` (N, 2) float32, x, y with pixel centres at integer
  coordinates (hloc's convention), ``scores`` (N,), ``descriptors`` (D, N), plus
  optional extras such as ``scales`` (N,) and ``oris`` (N,, degrees);
- global features: ``global_descriptor`` (D,), L2-normalised.

Extractors know nothing of files or of hloc; the hloc wrapper adds the batch dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig

from ..config import merge_conf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Extractor(torch.nn.Module):
    """Base class: strict conf merge, device bookkeeping, input checks."""

    default_conf: ClassVar[dict[str, Any]] = {}
    #: number of input channels the extractor needs (1 or 3); grey input is expanded.
    in_channels: ClassVar[int] = 3
    #: registry name used for shipped weights.
    weights_name: ClassVar[str] = ""
    #: dimension of the descriptors (subclasses set it from their network).
    descriptor_dim: int = 128

    @classmethod
    def shipped_name(cls, conf: Mapping[str, Any]) -> str:
        """Registry name of the shipped weights loaded under ``conf`` when none are given."""
        return cls.weights_name

    @property
    def is_global(self) -> bool:
        """Whether the output is a ``global_descriptor`` instead of local features."""
        return False

    def __init__(
        self, conf: Mapping[str, Any] | DictConfig | None = None, weights: str | Path | None = None
    ) -> None:
        super().__init__()
        self.conf = merge_conf(self.default_conf, conf, f"{type(self).__name__} conf")
        self.weights_path: Path | None = None
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    def check_image(self, image: torch.Tensor) -> torch.Tensor:
        """Validate (1, C, H, W) input in [0, 1]; adapt channels to ``in_channels``."""
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
            raise ValueError(f"expected an image tensor of shape (1, 1|3, H, W), got {tuple(image.shape)}")
        if not torch.is_floating_point(image):
            raise ValueError(f"expected a float image in [0, 1], got dtype {image.dtype}")
        image = image.to(self.device, torch.float32)
        if self.in_channels == 3 and image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        elif self.in_channels == 1 and image.shape[1] == 3:
            weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            image = (image * weights).sum(1, keepdim=True)
        return image

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._forward(self.check_image(image))

    def _forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """Normalise an RGB (B, 3, H, W) tensor in [0, 1] with ImageNet mean and std."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def empty_local_features(descriptor_dim: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A valid result with no keypoints (e.g. a flat image)."""
    return {
        "keypoints": torch.zeros(0, 2, device=device),
        "scores": torch.zeros(0, device=device),
        "descriptors": torch.zeros(descriptor_dim, 0, device=device),
    }
