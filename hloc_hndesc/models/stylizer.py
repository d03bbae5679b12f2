"""Encoder/decoder of the feature-space photorealistic stylization (after Li et al., PhotoWCT).

The encoder is a small VGG-like stack of 3x3 convolutions (reflection padding, ReLU) with
max-pooling that returns its pooling indices. The decoder mirrors it and replaces each
pooling by a max-unpooling at the *content's* indices, so features re-coloured by a
whitening-colouring transform are put back at the positions where the content image had its
maxima: this keeps edges and fine geometry where a plain upsampling would blur them.

Input images are RGB in [0, 1], (B, 3, H, W), any H and W: the image is padded (replicate)
to a multiple of the total stride (and to at least two feature cells) and the output is
cropped back. The network is trained here with a reconstruction loss only (no perceptual
loss); see ``hloc_hndesc.training.stylization.autoencoder``.

Output range: the last convolution is linear and the decoded image is clamped to [0, 1]
(``clamp=False`` returns the raw output, which the training loss uses so that every pixel
keeps a gradient). A sigmoid is not used on purpose: it compresses the tones near black and
white, which would need ever larger logits to reconstruct dark (night-like) or saturated
pixels, whereas a linear head reproduces them exactly and a clamp only cuts the overshoot of
re-coloured features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import merge_conf

STYLIZER_DEFAULTS: dict[str, Any] = {
    # channels of each level; a max-pooling (factor 2) separates consecutive levels.
    "channels": [32, 64, 128],
    # 3x3 convolutions at every level but the last (the last level has one).
    "convs_per_level": 2,
    # constant input normalisation: (x - mean) / std, x in [0, 1].
    "input_mean": 0.45,
    "input_std": 0.25,
}


class EncodedFeatures(NamedTuple):
    """Encoder output: deepest features and what the decoder needs to put them back."""

    #: (B, C, h, w) features at 1 / stride of the padded input.
    features: torch.Tensor
    #: max-pooling indices, from the finest level to the coarsest.
    indices: tuple[torch.Tensor, ...]
    #: spatial size (h, w) of the feature map entering each pooling, same order.
    sizes: tuple[tuple[int, int], ...]
    #: (H, W) of the input image before padding; the decoder crops back to it.
    image_size: tuple[int, int]


def _conv(c_in: int, c_out: int, relu: bool = True) -> nn.Sequential:
    """Reflection-padded 3x3 convolution, optionally followed by a ReLU."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class StylizerAutoencoder(nn.Module):
    """Conv/ReLU encoder with max-pooling indices and a mirrored max-unpooling decoder."""

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(STYLIZER_DEFAULTS, conf, "StylizerAutoencoder")
        channels = [int(c) for c in self.conf.channels]
        per_level = int(self.conf.convs_per_level)
        if len(channels) < 2 or per_level < 1 or min(channels) < 1:
            raise ValueError(
                "StylizerAutoencoder: need at least two levels of positive channels and "
                f"convs_per_level >= 1, got channels={channels}, convs_per_level={per_level}"
            )
        if float(self.conf.input_std) <= 0:
            raise ValueError(f"StylizerAutoencoder: input_std must be > 0, got {self.conf.input_std}")
        self.channels = channels
        self.stride = 2 ** (len(channels) - 1)

        enc: list[nn.Sequential] = []
        c_prev = 3
        for level, c in enumerate(channels):
            n = per_level if level < len(channels) - 1 else 1
            convs = [_conv(c_prev if i == 0 else c, c) for i in range(n)]
            enc.append(nn.Sequential(*convs))
            c_prev = c
        self.encoder = nn.ModuleList(enc)

        # decoder block k undoes encoder level L-1-k; each ends at the channels of the level
        # below it (or at 3 for the image), the last convolution being linear.
        dec: list[nn.Sequential] = []
        for level in range(len(channels) - 1, -1, -1):
            c = channels[level]
            c_out = channels[level - 1] if level > 0 else 3
            n = per_level if level < len(channels) - 1 else 1
            convs = [_conv(c, c) for _ in range(n - 1)]
            convs.append(_conv(c, c_out, relu=level > 0))
            dec.append(nn.Sequential(*convs))
        self.decoder = nn.ModuleList(dec)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation of every convolution (fan-in, ReLU gain), zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (replicate) so both sides are multiples of the stride and >= 2 strides."""
        h, w = x.shape[-2:]
        s = self.stride
        th = max(2 * s, -(-h // s) * s)
        tw = max(2 * s, -(-w // s) * s)
        if (th, tw) == (h, w):
            return x
        return F.pad(x, (0, tw - w, 0, th - h), mode="replicate")

    def encode(self, x: torch.Tensor) -> EncodedFeatures:
        """Encode RGB images (B, 3, H, W) in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"StylizerAutoencoder expects (B, 3, H, W) RGB images, got {tuple(x.shape)}")
        image_size = (int(x.shape[-2]), int(x.shape[-1]))
        h = (self._pad(x) - float(self.conf.input_mean)) / float(self.conf.input_std)
        indices: list[torch.Tensor] = []
        sizes: list[tuple[int, int]] = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                sizes.append((int(h.shape[-2]), int(h.shape[-1])))
                h, idx = self.pool(h)
                indices.append(idx)
            h = block(h)
        return EncodedFeatures(h, tuple(indices), tuple(sizes), image_size)

    def decode(
        self, enc: EncodedFeatures, features: torch.Tensor | None = None, clamp: bool = True
    ) -> torch.Tensor:
        """Decode ``features`` (default ``enc.features``) with ``enc``'s indices and sizes.

        ``features`` replaces the encoded ones (e.g. WCT-transformed) and must have their
        shape. Returns (B, 3, H, W) at the encoded image's size, in [0, 1] if ``clamp``.
        """
        h = enc.features if features is None else features
        if h.shape != enc.features.shape:
            raise ValueError(
                f"decode: features of shape {tuple(h.shape)} do not fit the encoded content "
                f"{tuple(enc.features.shape)} (the indices and sizes come from the content)"
            )
        n = len(enc.indices)
        for k, block in enumerate(self.decoder):
            h = block(h)
            if k < n:
                level = n - 1 - k
                h = self.unpool(h, enc.indices[level], output_size=enc.sizes[level])
        out = h[..., : enc.image_size[0], : enc.image_size[1]]
        return out.clamp(0.0, 1.0) if clamp else out

    def forward(self, x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x), clamp=clamp)
