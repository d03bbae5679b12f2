"""CAPS-family network: ResNet encoder + U-Net decoder giving coarse and fine descriptor maps.

Layout (attribute names as in the official CAPS ``ResUNet`` / HNDesc ``CapsDesc``,
so their checkpoints load after :func:`official_caps_key_map`):

- encoder ``firstconv, firstbn, firstrelu, firstmaxpool, layer1, layer2, layer3``
  (torchvision ResNet blocks, keys ``layer3.1.bn2.running_var`` etc.);
- ``conv_coarse``: 1x1 conv + BN + ELU on ``layer3`` -> coarse map at stride 16;
- decoder ``upconv3`` (x2 bilinear upsampling + 3x3 conv block), concatenation with
  ``layer2``, ``iconv3``; ``upconv2``, concatenation with ``layer1``, ``iconv2``;
- ``conv_fine``: 1x1 conv block -> fine map at stride 4.

Each conv block is ``conv -> BatchNorm -> ELU`` with submodules ``conv`` and ``bn``.
Upsampling is bilinear with ``align_corners=True`` (as official) to exactly the size
of the skip connection, so the fine map always has ``layer1``'s size (the official
code upsamples by x2 and zero-pads the skip instead; both agree when the image sides
are multiples of 16).

The official decoder widths are (512, 256) with a ResNet-50 encoder. The default
here is ResNet-18 with a slimmer decoder (128, 128) so that a float32 checkpoint
stays below 16 MiB (about 15.2 MB) and a 1024x768 forward costs about 90 GFLOP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNet, select_torchvision_state

#: (coarse, fine) strides of the two output maps with respect to the input.
CAPS_STRIDES = (16, 4)


class ConvBlock(nn.Module):
    """``Conv2d`` (same padding, bias) -> ``BatchNorm2d`` -> ELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.bn(self.conv(x)))


class UpConvBlock(nn.Module):
    """Bilinear upsampling (``align_corners=True``) to a given size, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.conv(x)


class CAPSNet(nn.Module):
    """ResUNet of CAPS / HNDesc-CAPS. ``forward`` returns ``(coarse, fine)`` raw maps."""

    def __init__(
        self,
        backbone: str = "resnet18",
        coarse_dim: int = 128,
        fine_dim: int = 128,
        decoder_channels: Sequence[int] = (128, 128),
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 2:
            raise ValueError(f"decoder_channels needs two widths, got {list(decoder_channels)}")
        resnet = ResNet(backbone, num_layers=3)
        self.backbone_name = backbone
        self.firstconv = resnet.conv1
        self.firstbn = resnet.bn1
        self.firstrelu = resnet.relu
        self.firstmaxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        c1, c2, c3 = resnet.channels
        d3, d2 = (int(c) for c in decoder_channels)
        self.conv_coarse = ConvBlock(c3, coarse_dim, 1)
        self.upconv3 = UpConvBlock(c3, d3)
        self.iconv3 = ConvBlock(c2 + d3, d3, 3)
        self.upconv2 = UpConvBlock(d3, d2)
        self.iconv2 = ConvBlock(c1 + d2, d2, 3)
        self.conv_fine = ConvBlock(d2, fine_dim, 1)
        self.coarse_dim = coarse_dim
        self.fine_dim = fine_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder outputs at strides 4, 8 and 16."""
        x = self.firstmaxpool(self.firstrelu(self.firstbn(self.firstconv(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return x1, x2, x3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised image -> coarse (B, Dc, H/16, W/16), fine (B, Df, H/4, W/4)."""
        x1, x2, x3 = self.encode(x)
        coarse = self.conv_coarse(x3)
        y = self.upconv3(x3, x2.shape[-2:])
        y = self.iconv3(torch.cat([x2, y], dim=1))
        y = self.upconv2(y, x1.shape[-2:])
        y = self.iconv2(torch.cat([x1, y], dim=1))
        fine = self.conv_fine(y)
        return coarse, fine

    def load_imagenet_encoder(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a torchvision ImageNet ResNet state dict into the encoder (strictly)."""
        mapped = torchvision_to_caps_encoder(state)
        own = self.state_dict()
        missing = sorted(k for k in own if k.startswith(_ENCODER_PREFIXES) and k not in mapped)
        unexpected = sorted(k for k in mapped if k not in own)
        if missing or unexpected:
            raise ValueError(f"encoder state does not fit {self.backbone_name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        bad = [k for k, v in mapped.items() if v.shape != own[k].shape]
        if bad:
            raise ValueError(f"encoder state has wrong shapes for {bad[:5]} (is it a {self.backbone_name}?)")
        self.load_state_dict(mapped, strict=False)


_ENCODER_PREFIXES = ("firstconv.", "firstbn.", "layer1.", "layer2.", "layer3.")
_STEM_RENAMES = {"conv1.": "firstconv.", "bn1.": "firstbn."}


def torchvision_to_caps_encoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map torchvision ResNet keys (``conv1.*``, ``bn1.*``, ``layer1-3.*``) to the CAPS encoder's.

    ``layer4`` and ``fc`` are dropped.
    """
    out = {}
    for key, value in select_torchvision_state(state, num_layers=3).items():
        for old, new in _STEM_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def official_caps_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official CAPS / HNDesc-CAPS checkpoint keys -> :class:`CAPSNet` keys.

    The official loader drops the 4-character ``net.`` prefix of the ``CAPSNet``
    wrapper; our attribute names are the ``ResUNet`` ones, so nothing else changes.
    A ``module.`` left after it (DataParallel inside the wrapper) is dropped too.
    Keys already in our layout pass through. (Official checkpoints are ResNet-50
    with decoder widths (512, 256): build ``CAPSNet("resnet50", decoder_channels=(512, 256))``.)
    """
    out = {}
    for key, value in state.items():
        for prefix in ("net.", "module."):  # CAPSNet wrapper, then a DataParallel inside it
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out
