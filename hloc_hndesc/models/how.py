"""HOW network (Tolias et al., ECCV 2020): ResNet trunk, L2 attention, smoothing, whitening.

For each scale of an image pyramid the trunk gives U (B, D, h, w); the attention is
``w(u) = ||u||`` computed on U *before* smoothing; U is smoothed by 3x3 average
pooling (stride 1, padding 1, ``count_include_pad=False``) and reduced to ``d``
dimensions by a 1x1 convolution ``o(u) = P (u - m)`` initialised from PCA whitening
(:meth:`HOWNet.init_whitening`) and then kept fixed (``requires_grad=False``; see
also :meth:`HOWNet.parameter_groups`). Attentions are divided by their maximum over
all scales of an image.

- global descriptor: ``sum_scales sum_cells w * o(u_bar)``, L2-normalised (SPoC);
- local features: the ``n`` strongest ``o(u_bar)`` over all scales, with their
  strength, image location (receptive-field centre of the cell) and scale.

State dict: ``backbone.<torchvision ResNet keys>``, ``dim_reduction.weight/bias``.
Official checkpoints (``features.<i>`` Sequential) load through
:func:`official_how_key_map`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNet, select_torchvision_state

#: index of each torchvision ResNet child in the official ``features`` Sequential.
OFFICIAL_TRUNK_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def l2_attention(features: torch.Tensor) -> torch.Tensor:
    """Feature strength ``||u||`` per cell: (B, D, h, w) -> (B, h, w)."""
    return (features.pow(2).sum(1) + 1e-10).sqrt()


def smoothing_avg_pool(features: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """M x M average pooling, stride 1, same size, border cells averaged over valid cells only."""
    if kernel_size <= 1:
        return features
    return F.avg_pool2d(features, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=False)


def pca_whitening(descriptors: torch.Tensor, shrinkage: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA whitening with shrinkage learnt from ``descriptors`` (N, D).

    Returns the mean ``m`` (D,) and projection ``P`` (D, D), rows sorted by decreasing
    eigenvalue, ``P = diag(lambda)^(-shrinkage / 2) E^T`` (eigenvalues clipped at 1e-14),
    so that ``P (u - m)`` has identity covariance for ``shrinkage = 1``.
    """
    if descriptors.ndim != 2 or descriptors.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) descriptors, got {tuple(descriptors.shape)}")
    x = descriptors.detach().to(torch.float64)
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / x.shape[0]
    cov = (cov + cov.T) / 2
    eigval, eigvec = torch.linalg.eigh(cov)
    order = torch.argsort(eigval, descending=True)
    eigval = eigval[order].clamp_min(1e-14)
    eigvec = eigvec[:, order]
    projection = eigval.pow(-0.5 * shrinkage)[:, None] * eigvec.T
    return mean.to(descriptors.dtype), projection.to(descriptors.dtype)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Image size after :func:`scale_image`: ``floor(side * scale)``, at least 1."""
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def scale_image(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear rescaling by ``scale`` (no antialiasing, sides floored), as official HOW."""
    if scale == 1.0:
        return image
    size = scaled_size(image.shape[-2], image.shape[-1], scale)
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


class HOWNet(nn.Module):
    """HOW: ResNet trunk (``trunk_layers`` stages) + L2 attention + smoothing + whitening."""

    def __init__(
        self,
        backbone: str = "resnet18",
        trunk_layers: int = 3,
        dim: int = 128,
        smoothing_kernel: int = 3,
        freeze_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(backbone, num_layers=trunk_layers)
        self.backbone_dim = self.backbone.out_channels
        if not 0 < dim <= self.backbone_dim:
            raise ValueError(f"dim must be in 1..{self.backbone_dim}, got {dim}")
        self.dim = dim
        self.smoothing_kernel = smoothing_kernel
        self.freeze_batchnorm = freeze_batchnorm
        self.dim_reduction = nn.Conv2d(self.backbone_dim, dim, kernel_size=1, bias=True)
        for p in self.dim_reduction.parameters():
            p.requires_grad_(False)

    @property
    def stride(self) -> int:
        """Stride of the local feature map with respect to the network input."""
        return self.backbone.stride

    def train(self, mode: bool = True) -> "HOWNet":
        """Training mode, with batch norms kept in eval mode (frozen statistics) as official."""
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that training updates (the trunk; never the whitening)."""
        return (p for p in self.backbone.parameters() if p.requires_grad)

    def parameter_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer parameter groups: the trunk only (whitening stays fixed)."""
        return [{"params": list(self.trainable_parameters()), "lr": lr, "weight_decay": weight_decay}]

    @torch.no_grad()
    def init_whitening(self, descriptors: torch.Tensor, shrinkage: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``dim_reduction`` to ``P[:d] (u - m)`` from PCA whitening of (N, D) local descriptors.

        ``descriptors`` are smoothed trunk features (``forward_local(..., reduce=False)``).
        Returns ``(m, P)``.
        """
        if descriptors.shape[-1] != self.backbone_dim:
            raise ValueError(f"descriptors must be {self.backbone_dim}-D, got {tuple(descriptors.shape)}")
        mean, projection = pca_whitening(descriptors, shrinkage)
        weight = projection[: self.dim].to(self.dim_reduction.weight)
        self.dim_reduction.weight.copy_(weight[:, :, None, None])
        self.dim_reduction.bias.copy_(-(weight @ mean.to(weight)))
        return mean, projection

    def single_scale(self, image: torch.Tensor, reduce: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image (B, 3, H, W) -> (descriptor map (B, d, h, w), raw attention (B, h, w))."""
        feats = self.backbone(image)
        attention = l2_attention(feats)
        feats = smoothing_avg_pool(feats, self.smoothing_kernel)
        if reduce:
            feats = self.dim_reduction(feats)
        return feats, attention

    def multi_scale(
        self, image: torch.Tensor, scales: Sequence[float], reduce: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-scale descriptor maps and attentions, attentions divided by their max over scales."""
        if len(scales) == 0:
            raise ValueError("need at least one scale")
        feats, atts = zip(*(self.single_scale(scale_image(image, s), reduce) for s in scales))
        peak = torch.stack([a.flatten(1).amax(1) for a in atts], 1).amax(1)
        atts = [a / peak[:, None, None] for a in atts]
        return list(feats), atts

    def forward_global(self, image: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """Attention-weighted SPoC summed over scales, L2-normalised: (B, d)."""
        feats, atts = self.multi_scale(image, scales)
        desc = sum((f * a[:, None]).sum((-2, -1)) for f, a in zip(feats, atts))
        return F.normalize(desc, dim=-1)

    def forward(self, image: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """Global descriptor (the training-time output)."""
        return self.forward_global(image, scales)

    def forward_local(
        self,
        image: torch.Tensor,
        scales: Sequence[float] = (1.0,),
        features_num: int | None = 1000,
        reduce: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The ``features_num`` strongest local features over all scales, per image.

        Returns ``descriptors`` (B, n, d) (D if not ``reduce``), ``strengths`` (B, n)
        (attention / max attention), ``keypoints`` (B, n, 2): the cell's receptive-field
        centre ``stride * (j, i)`` in the scaled image mapped to the input image
        (pixel centres at integers), ``scales`` (B, n) and ``cells`` (B, n, 2) int (x, y).
        """
        feats, atts = self.multi_scale(image, scales, reduce)
        height, width = image.shape[-2:]
        descs, strengths, kpts, cells, scls = [], [], [], [], []
        for s, f, a in zip(scales, feats, atts):
            h_l, w_l = scaled_size(height, width, s)
            h_f, w_f = a.shape[-2:]
            ys, xs = torch.meshgrid(
                torch.arange(h_f, device=a.device), torch.arange(w_f, device=a.device), indexing="ij"
            )
            cell = torch.stack([xs, ys], -1).reshape(-1, 2)
            factor = a.new_tensor([width / w_l, height / h_l])
            kpts.append((cell.to(a.dtype) * self.stride + 0.5) * factor - 0.5)
            cells.append(cell)
            scls.append(a.new_full((cell.shape[0],), float(s)))
            descs.append(f.flatten(2).transpose(1, 2))
            strengths.append(a.flatten(1))
        strengths = torch.cat(strengths, 1)
        n = strengths.shape[1] if features_num is None else min(int(features_num), strengths.shape[1])
        top, idx = strengths.topk(n, dim=1, sorted=True)
        descs = torch.cat(descs, 1)
        return {
            "descriptors": descs.gather(1, idx[..., None].expand(-1, -1, descs.shape[-1])),
            "strengths": top,
            "keypoints": torch.cat(kpts, 0)[idx],
            "scales": torch.cat(scls, 0)[idx],
            "cells": torch.cat(cells, 0)[idx],
        }

    def load_imagenet_backbone(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a torchvision ImageNet ResNet state dict into the trunk (``fc``/unused layers dropped)."""
        self.backbone.load_state_dict(select_torchvision_state(state, self.backbone.num_layers), strict=True)


def official_how_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official HOW keys (``features.<i>.*``, ``dim_reduction.*``) -> :class:`HOWNet` keys.

    ``features.0`` -> ``backbone.conv1``, ``features.1`` -> ``backbone.bn1``,
    ``features.4..7`` -> ``backbone.layer1..4``; ``dim_reduction`` is unchanged.
    Keys already in our layout pass through; an unknown ``features`` index raises.
    """
    index_to_name = {i: n for n, i in OFFICIAL_TRUNK_INDEX.items()}
    out = {}
    for key, value in state.items():
        if key.startswith("features."):
            head, _, rest = key[len("features."):].partition(".")
            if not head.isdigit() or int(head) not in index_to_name:
                raise KeyError(f"unexpected key {key!r} in an official HOW checkpoint")
            key = f"backbone.{index_to_name[int(head)]}.{rest}"
        out[key] = value
    return out


def how_key_map_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_how_key_map` (our keys -> ``features.<i>`` layout)."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            head, _, rest = key[len("backbone."):].partition(".")
            key = f"features.{OFFICIAL_TRUNK_INDEX[head]}.{rest}"
        out[key] = value
    return out
