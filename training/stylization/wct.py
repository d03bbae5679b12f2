"""Whitening-colouring transforms (WCT), global and per region, for any number of channels.

A WCT maps content samples ``x`` (mean ``μc``, covariance ``Σc``) to
``Σr^½ Σc^-½ (x − μc) + μr``, so that their mean and covariance become the
reference's. It works on the 3 channels of a colour space (pixel variant) or on the
channels of an encoder (feature variant). The local transform fits one WCT per region
and blends them with soft region weights, so it is smooth in the content and leaves
no seams; regions of the content and of the reference are found by k-means on colour
and height and paired by their vertical order (sky above, facades, ground below), the
only semantic prior available without a segmentation network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .smoothing import box_mean


@dataclass(frozen=True)
class GaussianStats:
    """Mean (C,) and covariance (C, C) of a set of samples."""

    mean: torch.Tensor
    cov: torch.Tensor


def gaussian_stats(x: torch.Tensor, weights: torch.Tensor | None = None) -> GaussianStats:
    """Weighted mean and covariance of samples ``x`` (C, N); ``weights`` (N,) >= 0."""
    x = x.double()
    if weights is None:
        weights = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
    w = weights.double() / weights.double().sum().clamp_min(1e-12)
    mean = x @ w
    centred = x - mean[:, None]
    cov = (centred * w) @ centred.T
    return GaussianStats(mean, cov)


def _sym_power(cov: torch.Tensor, power: float, eps_rel: float, eps_abs: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(cov)
    floor = eps_rel * vals.max().clamp_min(0) + eps_abs
    vals = vals.clamp_min(floor)
    return (vecs * vals.pow(power)) @ vecs.T


def wct_affine(
    content: GaussianStats, reference: GaussianStats, eps_rel: float = 1e-2, eps_abs: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, s)`` with ``y = T x + s`` mapping ``content`` statistics onto ``reference``'s.

    Content eigenvalues are floored at ``eps_rel`` times the largest plus ``eps_abs``,
    so a nearly grey or flat content is not amplified without bound.
    """
    whiten = _sym_power(content.cov, -0.5, eps_rel, eps_abs)
    colour = _sym_power(reference.cov, 0.5, 0.0, 0.0)
    transform = colour @ whiten
    return transform, reference.mean - transform @ content.mean


def _sq_dist(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, k) of rows of ``x`` to ``centres`` (fast for few centres)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centres.T + centres.pow(2).sum(1)).clamp_min(0)


def _kmeans(features: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Centres (k, D) of ``features`` (N, D), initialised at quantiles of the first column."""
    order = features[:, 0].argsort()
    picks = order[((torch.arange(k, dtype=torch.float64) + 0.5) / k * (len(order) - 1)).long()]
    centres = features[picks].clone()
    for _ in range(iters):
        assign = _sq_dist(features, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, features)
        counts = torch.bincount(assign, minlength=k).to(features.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


def _region_features(image: torch.Tensor, height_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c, h, w = image.shape
    flat = image.reshape(c, -1).T.double()
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    ys = torch.linspace(0, 1, h, dtype=flat.dtype, device=image.device)[:, None].expand(h, w).reshape(-1, 1)
    return torch.cat([ys * height_weight, (flat - mean) / std], 1).float(), mean, std


def match_regions(
    content: torch.Tensor,
    reference: torch.Tensor,
    k: int = 3,
    height_weight: float = 2.0,
    temperature: float = 1.0,
    blur: float = 0.03,
    iters: int = 10,
    max_samples: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired regions: soft content weights (k, H, W) and hard reference masks (k, H', W').

    ``content`` and ``reference`` are (3, H, W) images in the working colour space.
    Each is clustered on its own standardised colour plus ``height_weight`` times the
    normalised row; clusters are sorted by mean height and paired in that order. Content
    weights are a softmax over squared distances to the centres (scaled by the mean
    within-cluster distance times ``temperature``), box-blurred over ``blur`` of the
    image diagonal and renormalised.
    """
    out = []
    for image in (content, reference):
        feats, _, _ = _region_features(image, height_weight)
        step = max(1, feats.shape[0] // max_samples)
        centres = _kmeans(feats[::step], k, iters)
        centres = centres[centres[:, 0].argsort()]
        out.append((feats, centres))
    (cf, cc), (rf, rc) = out
    h, w = content.shape[1:]
    d2 = _sq_dist(cf, cc)
    scale = d2.min(1).values.mean().clamp_min(1e-6) * temperature
    soft = torch.softmax(-d2 / scale, dim=1).T.reshape(k, 1, h, w).float()
    soft = box_mean(soft, int(round(blur * (h * h + w * w) ** 0.5)))
    soft = soft[:, 0] / soft[:, 0].sum(0, keepdim=True).clamp_min(1e-8)
    hard = _sq_dist(rf, rc).argmin(1)
    masks = F.one_hot(hard, k).T.reshape(k, *reference.shape[1:]).float()
    return soft.to(content.dtype), masks.to(reference.dtype)


def wct_transfer(
    content: torch.Tensor,
    reference: torch.Tensor,
    content_regions: torch.Tensor | None = None,
    reference_regions: torch.Tensor | None = None,
    local_weight: float = 0.5,
    strength: float = 1.0,
    eps_rel: float = 1e-2,
    min_region_fraction: float = 0.02,
) -> torch.Tensor:
    """WCT of ``content`` (C, H, W) towards ``reference`` (C, H', W').

    Without regions the transform is global. With paired regions (weights (k, H, W) and
    (k, H', W'), e.g. from :func:`match_regions`, resized to the feature resolution) the
    output is ``local_weight`` times the blend of per-region WCTs plus the rest of the
    global WCT; a reference region under ``min_region_fraction`` of the image uses the
    global reference statistics. ``strength`` interpolates from the content (0) to the
    full transfer (1).
    """
    c, h, w = content.shape
    x = content.reshape(c, -1)
    r = reference.reshape(c, -1)
    ref_global = gaussian_stats(r)
    t, s = wct_affine(gaussian_stats(x), ref_global, eps_rel)
    y = t @ x.double() + s[:, None]
    if content_regions is not None and reference_regions is not None and local_weight > 0:
        cw = content_regions.reshape(len(content_regions), -1).double()
        rw = reference_regions.reshape(len(reference_regions), -1).double()
        local = torch.zeros_like(y)
        for ck, rk in zip(cw, rw):
            ref_k = ref_global if rk.mean() < min_region_fraction else gaussian_stats(r, rk)
            tk, sk = wct_affine(gaussian_stats(x, ck), ref_k, eps_rel)
            local += ck * (tk @ x.double() + sk[:, None])
        y = local_weight * local + (1 - local_weight) * y
    y = strength * y + (1 - strength) * x.double()
    return y.to(content.dtype).reshape(c, h, w)
