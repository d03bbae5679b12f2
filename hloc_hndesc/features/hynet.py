"""DoG keypoints + HyNet descriptors of 32x32 patches cut along local affine frames.

A keypoint (x, y) in hloc's convention with DoG ``scale`` sigma and pycolmap orientation
``ori`` (degrees, clockwise on screen) becomes the kornia LAF centred at (x, y) (kornia
0.9 also puts pixel centres at integers), of half-side ``scale * mr_size / 2`` and kornia
orientation ``-ori`` (kornia's angle turns counter-clockwise on screen). The patch is then
the same whatever the in-plane rotation of the image (see tests/test_hynet.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from kornia.feature import extract_patches_from_pyramid, laf_from_center_scale_ori
from omegaconf import DictConfig, OmegaConf

from ..models.hynet import DESCRIPTOR_DIM, PATCH_SIZE, build_hynet
from ..weights import load_weights
from .base import Extractor, empty_local_features
from .dog import DEFAULT_DOG_OPTIONS, detect_dog


def keypoints_to_lafs(
    keypoints: torch.Tensor, scales: torch.Tensor, oris: torch.Tensor, mr_size: float = 12.0
) -> torch.Tensor:
    """(N, 2) hloc keypoints, (N,) DoG sigmas, (N,) pycolmap degrees -> (1, N, 2, 3) kornia LAFs."""
    n = keypoints.shape[0]
    return laf_from_center_scale_ori(
        keypoints.reshape(1, n, 2).float(),
        (scales.float() * (mr_size / 2.0)).reshape(1, n, 1, 1),
        (-oris.float()).reshape(1, n, 1),
    )


def extract_patches(
    image: torch.Tensor,
    keypoints: torch.Tensor,
    scales: torch.Tensor,
    oris: torch.Tensor,
    mr_size: float = 12.0,
    patch_size: int = PATCH_SIZE,
) -> torch.Tensor:
    """Cut (N, 1, P, P) patches from a (1, 1, H, W) image as the HyNet extractor does.

    The patch side covers ``mr_size * scale`` pixels, rotated by the keypoint orientation
    so that it is upright in the keypoint's frame; sampling uses kornia's image pyramid
    (anti-aliased for large scales) with bilinear interpolation.
    """
    if image.ndim != 4 or image.shape[:2] != (1, 1):
        raise ValueError(f"expected a grey image of shape (1, 1, H, W), got {tuple(image.shape)}")
    n = keypoints.shape[0]
    if n == 0:
        return image.new_zeros(0, 1, patch_size, patch_size)
    device = image.device
    lafs = keypoints_to_lafs(keypoints.to(device), scales.to(device), oris.to(device), mr_size)
    return extract_patches_from_pyramid(image, lafs, PS=patch_size)[0]


class HyNetExtractor(Extractor):
    """DoG (pycolmap) keypoints described by HyNet; outputs also ``scales`` and ``oris``."""

    default_conf: ClassVar[dict[str, Any]] = {
        "max_keypoints": -1,
        "dog": dict(DEFAULT_DOG_OPTIONS),
        "upright": False,
        "patch_size": PATCH_SIZE,
        "mr_size": 12.0,
        "batch_size": 1024,
    }
    in_channels: ClassVar[int] = 1
    weights_name: ClassVar[str] = "hynet"

    def __init__(
        self, conf: Mapping[str, Any] | DictConfig | None = None, weights: str | Path | None = None
    ) -> None:
        super().__init__(conf, weights)
        if self.conf.patch_size != PATCH_SIZE:
            raise ValueError(f"HyNet takes {PATCH_SIZE}x{PATCH_SIZE} patches, got patch_size={self.conf.patch_size}")
        if self.conf.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.conf.batch_size}")
        self.net = build_hynet()
        self.weights_path = load_weights(self.net, self.weights_name, weights)
        self.eval()

    def train(self, mode: bool = True) -> HyNetExtractor:
        """The extractor only infers: the network stays in eval mode (dropout off, BN frozen)."""
        super().train(mode)
        self.net.eval()
        return self

    @torch.inference_mode()
    def describe(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) patches -> (N, 128) unit descriptors, ``batch_size`` patches at a time."""
        if patches.shape[0] == 0:
            return patches.new_zeros(0, DESCRIPTOR_DIM)
        return torch.cat([self.net(chunk) for chunk in patches.split(int(self.conf.batch_size))])

    def _forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        dog_conf = OmegaConf.to_container(self.conf.dog, resolve=True)
        feats = detect_dog(image, dog_conf, int(self.conf.max_keypoints), bool(self.conf.upright))
        if feats["keypoints"].shape[0] == 0:
            out = empty_local_features(DESCRIPTOR_DIM, self.device)
            out.update(scales=feats["scales"], oris=feats["oris"])
            return out
        patches = extract_patches(
            image, feats["keypoints"], feats["scales"], feats["oris"], float(self.conf.mr_size), PATCH_SIZE
        )
        feats["descriptors"] = self.describe(patches).T.contiguous()
        return feats
