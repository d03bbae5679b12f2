"""HyNet patch descriptor (Tian et al., NeurIPS 2020) on top of kornia's implementation.

kornia's ``kornia.feature.HyNet`` has the official architecture and state-dict layout
(44 keys: FRN + TLU blocks, 32x32 grey patches, dropout 0.3 before the final 8x8 conv,
non-affine batch norm, L2 normalisation written as a LocalResponseNorm over all channels).
Its TLU thresholds are initialised at -1 as in the official code. This module only adds
access to the raw (pre-normalisation) descriptor, whose L2 norm HyNet's training loss
regularises. Input patches should be non-negative intensities (e.g. in [0, 1]): the first
FRN layer divides by the root mean square without subtracting a mean.
"""

from __future__ import annotations

import torch
from kornia.feature import HyNet as _KorniaHyNet

PATCH_SIZE = 32
DESCRIPTOR_DIM = 128


class HyNet(_KorniaHyNet):
    """kornia's HyNet (same state dict) with :meth:`forward_with_norms` for training."""

    def raw_descriptors(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32) patches -> (B, D) descriptors before L2 normalisation."""
        if patches.ndim != 4 or patches.shape[1:] != (1, PATCH_SIZE, PATCH_SIZE):
            raise ValueError(f"HyNet expects patches of shape (B, 1, 32, 32), got {tuple(patches.shape)}")
        x = patches
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5, self.layer6, self.layer7):
            x = layer(x)
        return x.flatten(1)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """L2-normalise raw (B, D) descriptors exactly as kornia's forward does."""
        dtype = raw.dtype
        x = raw.float() if dtype in (torch.float16, torch.bfloat16) else raw
        x = self.desc_norm((x + self.eps_l2_norm)[..., None, None])
        return x.flatten(1).to(dtype)

    def forward_with_norms(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit descriptors (B, D) and the L2 norms (B,) of the raw descriptors."""
        raw = self.raw_descriptors(patches)
        return self.normalize(raw), raw.norm(dim=1)


def build_hynet(drop_rate: float = 0.3, dim_desc: int = DESCRIPTOR_DIM) -> HyNet:
    """A randomly initialised HyNet in the official layout (no download)."""
    return HyNet(pretrained=False, dim_desc=dim_desc, drop_rate=drop_rate)
