"""Measures of a stylization: geometry kept (DoG repeatability, edge SSIM), colour moved.

All images are float (1, 3, H, W) RGB tensors in [0, 1] of the same size (a stylized
image is pixel-aligned with its content, so positions are compared directly).
"""

from __future__ import annotations

import torch
from kornia.color import rgb_to_grayscale, rgb_to_lab
from kornia.filters import sobel
from kornia.metrics import ssim

from ..features.dog import detect_dog


def dog_keypoints(image: torch.Tensor, max_keypoints: int = 2000) -> torch.Tensor:
    """Upright DoG keypoint positions (N, 2) of the strongest ``max_keypoints``."""
    return detect_dog(rgb_to_grayscale(image.float().cpu()), max_keypoints=max_keypoints, upright=True)["keypoints"]


def repeatability(kpts0: torch.Tensor, kpts1: torch.Tensor, threshold: float = 2.0) -> float:
    """Mutual nearest keypoints within ``threshold`` px, over the smaller count (0 if none)."""
    if len(kpts0) == 0 or len(kpts1) == 0:
        return 0.0
    dist = torch.cdist(kpts0.double(), kpts1.double())
    nn01, nn10 = dist.argmin(1), dist.argmin(0)
    idx = torch.arange(len(kpts0))
    mutual = (nn10[nn01] == idx) & (dist[idx, nn01] <= threshold)
    return float(mutual.sum()) / min(len(kpts0), len(kpts1))


def dog_repeatability(content: torch.Tensor, stylized: torch.Tensor, threshold: float = 2.0, max_keypoints: int = 2000) -> float:
    """:func:`repeatability` of the DoG keypoints of ``stylized`` against those of ``content``."""
    return repeatability(dog_keypoints(content, max_keypoints), dog_keypoints(stylized, max_keypoints), threshold)


def edge_map(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image, divided by its 99th percentile and clipped to [0, 1]."""
    mag = sobel(rgb_to_grayscale(image.float()))
    scale = torch.quantile(mag.flatten()[:: max(1, mag.numel() // 1_000_000)], 0.99).clamp_min(1e-6)
    return (mag / scale).clamp(0, 1)


def edge_ssim(content: torch.Tensor, stylized: torch.Tensor, window: int = 11) -> float:
    """Mean SSIM of the two :func:`edge_map` s (structure kept whatever the contrast)."""
    return float(ssim(edge_map(content), edge_map(stylized), window).mean())


def gaussian_w2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """2-Wasserstein distance between Gaussians fitted to samples ``x`` (N, C) and ``y`` (M, C)."""
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.cov(x.T.double()), torch.cov(y.T.double())
    vals, vecs = torch.linalg.eigh(cx)
    root = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    inner = torch.linalg.eigvalsh(root @ cy @ root).clamp_min(0).sqrt().sum()
    w2 = (mx - my).double().pow(2).sum() + torch.trace(cx) + torch.trace(cy) - 2 * inner
    return w2.clamp_min(0).sqrt().to(x.dtype)


def sliced_w1(x: torch.Tensor, y: torch.Tensor, n_dirs: int = 64, n_quantiles: int = 256) -> torch.Tensor:
    """Sliced 1-Wasserstein distance of samples ``x`` (N, C), ``y`` (M, C) (fixed directions)."""
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(x.shape[1], n_dirs, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    q = torch.linspace(0, 1, n_quantiles, dtype=torch.float64)
    px = torch.quantile(x.double() @ dirs, q, dim=0)
    py = torch.quantile(y.double() @ dirs, q, dim=0)
    return (px - py).abs().mean().to(x.dtype)


def colour_distances(image: torch.Tensor, reference: torch.Tensor, max_pixels: int = 65536) -> dict[str, float]:
    """Colour-statistic distances of two sRGB (1, 3, H, W) images in CIELAB.

    CIELAB rather than the stylizer's own lαβ, so that matching the statistics the
    transform optimises is not rewarded twice. Returns ``w2`` (Gaussian 2-Wasserstein)
    and ``sw1`` (sliced 1-Wasserstein of the full distributions), in ΔE units.
    """
    samples = []
    for img in (image, reference):
        lab = rgb_to_lab(img.clamp(0, 1).float()).flatten(2)[0].T
        step = max(1, lab.shape[0] // max_pixels)
        samples.append(lab[::step])
    return {"w2": float(gaussian_w2(*samples)), "sw1": float(sliced_w1(*samples))}
