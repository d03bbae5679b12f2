"""Descriptor losses: HyNet's hybrid-similarity triplet loss with its L2-norm regulariser.

The loss follows the official HyNet training code (Tian et al., NeurIPS 2020):

* ``d(x, y) = sqrt(|2 - 2 x.y| + 1e-6)`` for unit descriptors (the official distance, the
  small constant keeps the square root differentiable at 0);
* hybrid similarity ``s_H(d) = d + alpha * d**2 / 2`` (``alpha * (1 - cos) + d``, Eq. 6);
* for each positive pair ``(a_i, p_i)`` the hardest negative is the smallest distance among
  ``d(a_i, a_j)``, ``d(p_i, p_j)``, ``d(a_i, p_j)`` and ``d(a_j, p_i)`` over the allowed ``j``
  (both directions of the cross distance matrix and both intra-image matrices), ignoring
  candidates closer than ``false_negative_threshold`` (8e-3, HardNet's duplicate threshold);
* triplet term ``max(0, margin + s_H(d_pos) - s_H(d_neg))`` and
  ``gamma * (|x_i| - |x_i^+|)**2`` on the norms of the raw (pre-normalisation) descriptors.

The official code *sums* both terms over the batch; ``reduction="mean"`` (the default, the
paper's Eq. 5-6) divides both by the batch size, which only rescales the gradient (Adam is
invariant to that) and keeps logged values comparable across batch sizes.

Which ``j`` may serve as a negative for anchor ``i`` is given by a boolean mask (see
:func:`negative_mask_from_groups` and :mod:`hloc_hndesc.training.mining`); explicit negatives
(e.g. mined from other images through a global index) can be added per anchor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

EPS_SQRT = 1e-6
FALSE_NEGATIVE_THRESHOLD = 8e-3

#: Where the hardest negative of an anchor came from (values of ``HardestNegatives.source``).
SOURCES = ("anchor_anchor", "positive_positive", "anchor_positive", "positive_anchor", "extra")


class HardestNegatives(NamedTuple):
    """Per-anchor hardest negative: ``distance`` (N,), ``valid`` (N,) bool, ``source`` (N,) long
    (index into :data:`SOURCES`; meaningless where not valid)."""

    distance: torch.Tensor
    valid: torch.Tensor
    source: torch.Tensor


def descriptor_distance(x: torch.Tensor, y: torch.Tensor, eps: float = EPS_SQRT) -> torch.Tensor:
    """(N, D) x (M, D) unit descriptors -> (N, M) distances ``sqrt(|2 - 2 x.y| + eps)``."""
    return (2.0 - 2.0 * (x @ y.transpose(-1, -2))).abs().add(eps).sqrt()


def hybrid_similarity(distance: torch.Tensor, alpha: float) -> torch.Tensor:
    """HyNet's hybrid similarity ``d + alpha * d**2 / 2`` of distances."""
    return distance + 0.5 * alpha * distance.square()


def _check_pair(desc_a: torch.Tensor, desc_p: torch.Tensor) -> tuple[int, int]:
    if desc_a.ndim != 2 or desc_a.shape != desc_p.shape:
        raise ValueError(
            f"desc_a and desc_p must both be (N, D) with the same shape, got "
            f"{tuple(desc_a.shape)} and {tuple(desc_p.shape)}"
        )
    return desc_a.shape[0], desc_a.shape[1]


def _check_extra(
    extra_negatives: torch.Tensor | None, extra_valid: torch.Tensor | None, n: int, dim: int
) -> None:
    if extra_negatives is None:
        if extra_valid is not None:
            raise ValueError("extra_valid given without extra_negatives")
        return
    if extra_negatives.ndim != 3 or extra_negatives.shape[0] != n or extra_negatives.shape[2] != dim:
        raise ValueError(f"extra_negatives must be (N={n}, K, D={dim}), got {tuple(extra_negatives.shape)}")
    if extra_valid is not None and (
        extra_valid.dtype != torch.bool or extra_valid.shape != extra_negatives.shape[:2]
    ):
        raise ValueError(
            f"extra_valid must be a bool tensor of shape {tuple(extra_negatives.shape[:2])}, "
            f"got {extra_valid.dtype} {tuple(extra_valid.shape)}"
        )


def _masked_min(dist: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Row-wise minimum of ``dist`` over ``allowed`` entries (+inf for rows with none)."""
    return torch.where(allowed, dist, torch.full_like(dist, float("inf"))).min(dim=1).values


def hardest_negative_distance(
    desc_a: torch.Tensor,
    desc_p: torch.Tensor,
    neg_mask: torch.Tensor | None = None,
    extra_negatives: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
    false_negative_threshold: float = FALSE_NEGATIVE_THRESHOLD,
) -> HardestNegatives:
    """Hardest negative distance of each positive pair ``(a_i, p_i)``, in both directions.

    Candidates: ``d(a_i, a_j)``, ``d(p_i, p_j)``, ``d(a_i, p_j)``, ``d(a_j, p_i)`` for every ``j``
    with ``neg_mask[i, j]`` (None: every ``j != i``), and ``d(a_i, e)``, ``d(p_i, e)`` for the
    explicit negatives ``e = extra_negatives[i, k]`` (unit descriptors, (N, K, D)) where
    ``extra_valid[i, k]``. Candidates at distance ``<= false_negative_threshold`` are treated
    as duplicates of the positive and ignored. ``valid`` is False for anchors left with no
    candidate (their ``distance`` is 0 and carries no gradient).
    """
    n, dim = _check_pair(desc_a, desc_p)
    _check_extra(extra_negatives, extra_valid, n, dim)
    device = desc_a.device
    if neg_mask is None:
        allowed = ~torch.eye(n, dtype=torch.bool, device=device)
    else:
        if neg_mask.dtype != torch.bool or neg_mask.shape != (n, n):
            raise ValueError(f"neg_mask must be a bool tensor of shape ({n}, {n}), got {neg_mask.dtype} "
                             f"{tuple(neg_mask.shape)}")
        allowed = neg_mask.to(device)
    aa = descriptor_distance(desc_a, desc_a)
    pp = descriptor_distance(desc_p, desc_p)
    ap = descriptor_distance(desc_a, desc_p)
    pa = ap.transpose(0, 1)  # pa[i, j] = d(a_j, p_i)
    candidates = [
        _masked_min(dist, allowed & (dist.detach() > false_negative_threshold)) for dist in (aa, pp, ap, pa)
    ]
    if extra_negatives is not None:
        extra = extra_negatives.to(desc_a.dtype)
        valid_extra = (
            extra_valid.to(device)
            if extra_valid is not None
            else torch.ones(extra.shape[:2], dtype=torch.bool, device=device)
        )
        for desc in (desc_a, desc_p):
            dot = torch.einsum("nd,nkd->nk", desc, extra)
            dist = (2.0 - 2.0 * dot).abs().add(EPS_SQRT).sqrt()
            candidates.append(_masked_min(dist, valid_extra & (dist.detach() > false_negative_threshold)))
    stacked = torch.stack(candidates, dim=1)
    distance, column = stacked.min(dim=1)
    valid = torch.isfinite(distance)
    distance = torch.where(valid, distance, torch.zeros_like(distance))
    source = column.clamp(max=len(SOURCES) - 1)
    return HardestNegatives(distance, valid, source)


def hynet_loss(
    desc_a: torch.Tensor,
    desc_p: torch.Tensor,
    raw_norm_a: torch.Tensor,
    raw_norm_p: torch.Tensor,
    neg_mask: torch.Tensor | None = None,
    margin: float = 1.2,
    alpha: float = 2.0,
    gamma: float = 0.1,
    *,
    extra_negatives: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
    false_negative_threshold: float = FALSE_NEGATIVE_THRESHOLD,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HyNet loss of N positive pairs of unit descriptors; returns ``(loss, stats)``.

    ``desc_a``/``desc_p`` (N, D) are L2-normalised, ``raw_norm_a``/``raw_norm_p`` (N,) the L2
    norms of the descriptors before normalisation. Negatives: see
    :func:`hardest_negative_distance`. ``reduction``: ``"mean"`` (over the anchors; the
    triplet term over the anchors that have a negative) or ``"sum"`` (the official code).
    Computed in at least float32 (half-precision inputs are upcast: autocast-safe).

    ``stats`` (detached 0-d tensors): ``triplet_loss``, ``norm_loss``, ``pos_distance`` (mean
    positive distance), ``neg_distance`` (mean hardest negative distance), ``active_fraction``
    (share of anchors with a violated margin), ``valid_fraction`` (share of anchors with a
    negative), ``extra_fraction`` (share of hardest negatives taken from ``extra_negatives``).
    """
    n, _ = _check_pair(desc_a, desc_p)
    if raw_norm_a.shape != (n,) or raw_norm_p.shape != (n,):
        raise ValueError(
            f"raw_norm_a and raw_norm_p must be (N={n},), got {tuple(raw_norm_a.shape)} and "
            f"{tuple(raw_norm_p.shape)}"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if n == 0:
        raise ValueError("hynet_loss needs at least one positive pair")
    dtype = torch.promote_types(desc_a.dtype, torch.float32)
    desc_a, desc_p = desc_a.to(dtype), desc_p.to(dtype)
    extra = extra_negatives.to(dtype) if extra_negatives is not None else None
    hardest = hardest_negative_distance(
        desc_a, desc_p, neg_mask, extra, extra_valid, false_negative_threshold
    )
    d_pos = (2.0 - 2.0 * (desc_a * desc_p).sum(dim=1)).abs().add(EPS_SQRT).sqrt()
    hinge = (margin + hybrid_similarity(d_pos, alpha) - hybrid_similarity(hardest.distance, alpha)).clamp(min=0.0)
    hinge = torch.where(hardest.valid, hinge, torch.zeros_like(hinge))
    norm_sq = (raw_norm_a.to(dtype) - raw_norm_p.to(dtype)).square()
    n_valid = hardest.valid.sum()
    if reduction == "sum":
        triplet, norm_term = hinge.sum(), norm_sq.sum()
    else:
        triplet, norm_term = hinge.sum() / n_valid.clamp(min=1), norm_sq.mean()
    loss = triplet + gamma * norm_term
    with torch.no_grad():
        valid_f = hardest.valid.float()
        n_valid_f = n_valid.clamp(min=1).float()
        stats = {
            "triplet_loss": triplet.detach(),
            "norm_loss": norm_term.detach(),
            "pos_distance": d_pos.mean(),
            "neg_distance": (hardest.distance * valid_f).sum() / n_valid_f,
            "active_fraction": (hinge > 0).float().mean(),
            "valid_fraction": valid_f.mean(),
            "extra_fraction": ((hardest.source == len(SOURCES) - 1) & hardest.valid).float().sum() / n_valid_f,
        }
    return loss, stats


def negative_mask_from_groups(
    groups: torch.Tensor,
    image_ids: torch.Tensor,
    kpts: torch.Tensor | None = None,
    radius: float = 0.0,
) -> torch.Tensor:
    """(N, N) bool: True where keypoint ``j`` may be a negative for anchor ``i``.

    ``j`` is allowed when it lies in another group (another scene), or in the same image as
    ``i`` at least ``radius`` pixels from ``i`` (``kpts`` (N, 2), in one frame per image, e.g.
    the positives' coordinates in the target image). Other images of the same group are
    excluded (views of the same scene), and so is ``j == i``. ``kpts=None``: no radius test.
    """
    n = groups.shape[0]
    if groups.shape != (n,) or image_ids.shape != (n,):
        raise ValueError(
            f"groups and image_ids must both be (N,), got {tuple(groups.shape)} and {tuple(image_ids.shape)}"
        )
    same_image = image_ids[:, None] == image_ids[None, :]
    other_group = groups[:, None] != groups[None, :]
    if kpts is not None:
        if kpts.shape != (n, 2):
            raise ValueError(f"kpts must be (N={n}, 2), got {tuple(kpts.shape)}")
        kp = kpts.to(torch.float64)
        far = (kp[:, None, :] - kp[None, :, :]).square().sum(dim=-1) >= float(radius) ** 2
        in_image = same_image & far
    else:
        in_image = same_image
    mask = other_group | in_image
    mask.fill_diagonal_(False)
    return mask
