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

The dense R2D2-family losses (R2D2, Revaud et al., NeurIPS 2019; HNDesc's descriptor loss):

* :func:`quantized_ap` / :func:`ap_loss`: differentiable average precision of each anchor's
  ranked candidates, every similarity spread over ``bins`` evenly spaced bins by triangular
  (linear) soft assignment; :func:`ap_candidates` lays out the candidates of N anchors from
  the same negative sets as :func:`hynet_loss` (``**NegativeSet.loss_kwargs()``);
* :func:`reliability_loss`: ``1 - [AP * R + kappa * (1 - R)]`` per anchor;
* :func:`cosim_loss`, :func:`peakiness_loss`, :func:`repeatability_losses`: the repeatability
  terms on dense heatmaps (cosine similarity of N x N patches after warping; local max minus
  local mean).

HOW's global loss (Tolias et al., ECCV 2020; Radenović et al.'s contrastive loss):
:func:`contrastive_loss`, ``1/2 ||a - p||^2`` for positive pairs and
``1/2 max(0, margin - ||a - n||)^2`` for negative pairs of global descriptors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

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


# --------------------------------------------------------------------------------------------
# Quantised average precision (descriptor loss) and R2D2's reliability loss
# --------------------------------------------------------------------------------------------


def _check_ap_inputs(
    similarity: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None, bins: int, low: float, high: float
) -> torch.Tensor:
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (N, M), got {tuple(similarity.shape)}")
    if positive.dtype != torch.bool or positive.shape != similarity.shape:
        raise ValueError(
            f"positive must be a bool tensor of shape {tuple(similarity.shape)}, got {positive.dtype} "
            f"{tuple(positive.shape)}"
        )
    if valid is None:
        valid = torch.ones_like(positive)
    elif valid.dtype != torch.bool or valid.shape != similarity.shape:
        raise ValueError(
            f"valid must be a bool tensor of shape {tuple(similarity.shape)}, got {valid.dtype} {tuple(valid.shape)}"
        )
    if int(bins) < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if not high > low:
        raise ValueError(f"the similarity range must have high > low, got [{low}, {high}]")
    return valid


def soft_histogram_weights(
    similarity: torch.Tensor, bins: int = 20, low: float = -1.0, high: float = 1.0
) -> torch.Tensor:
    """(..., M) similarities -> (..., bins, M) triangular bin weights, bin 0 at ``high``.

    Bin centres are ``high - k * (high - low) / (bins - 1)``; a similarity between two centres
    is shared linearly between them (the weights of an in-range value sum to 1, a value on a
    centre falls in that bin only). Values outside ``[low, high]`` count fully in the end bin
    and carry no gradient (as R2D2's quantiser).
    """
    step = (high - low) / (bins - 1)
    centres = high - step * torch.arange(bins, device=similarity.device, dtype=similarity.dtype)
    clamped = similarity.clamp(low, high).unsqueeze(-2)
    return (1.0 - (clamped - centres[:, None]).abs() / step).clamp(min=0.0)


def quantized_ap(
    similarity: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor | None = None,
    bins: int = 20,
    low: float = -1.0,
    high: float = 1.0,
) -> torch.Tensor:
    """Differentiable average precision of each row of ``similarity`` (N, M) -> (N,).

    ``positive`` (N, M) bool marks the positives of each anchor, ``valid`` (N, M) bool the
    entries that take part at all (None: all). The candidates are ranked by similarity through
    a soft histogram (:func:`soft_histogram_weights`); scanning the bins from the most similar,
    precision at bin ``k`` is (positives so far) / (candidates so far) and AP the sum of the
    precisions weighted by the share of the positives in each bin. When every candidate sits
    on a bin centre and no bin mixes positives and negatives this is the exact AP; with many
    bins it tends to the exact AP. Rows without a valid positive get AP 0 (see
    :func:`ap_loss`). Computed in at least float32; memory N x bins x M.
    """
    valid = _check_ap_inputs(similarity, positive, valid, bins, low, high)
    dtype = torch.promote_types(similarity.dtype, torch.float32)
    weights = soft_histogram_weights(similarity.to(dtype), int(bins), float(low), float(high))
    weights = weights * valid.unsqueeze(1).to(dtype)
    per_bin_all = weights.sum(dim=-1)  # (N, bins)
    per_bin_pos = (weights * positive.unsqueeze(1).to(dtype)).sum(dim=-1)
    precision = per_bin_pos.cumsum(dim=-1) / per_bin_all.cumsum(dim=-1).clamp(min=1e-12)
    n_pos = (positive & valid).sum(dim=1, keepdim=True).to(dtype)
    recall_share = per_bin_pos / n_pos.clamp(min=1.0)
    return (precision * recall_share).sum(dim=-1)


def ap_loss(
    similarity: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor | None = None,
    bins: int = 20,
    low: float = -1.0,
    high: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AP loss of N anchors: ``(mean of 1 - AP over the anchors with a positive, AP (N,))``.

    Arguments as :func:`quantized_ap` (build them with :func:`ap_candidates`); the per-anchor
    AP is returned so that callers can weight it (e.g. :func:`reliability_loss`). The loss is
    0 (still attached to the graph) when no anchor has a positive.
    """
    ap = quantized_ap(similarity, positive, valid, bins, low, high)
    has_positive = (positive & (valid if valid is not None else torch.ones_like(positive))).any(dim=1)
    loss = ((1.0 - ap) * has_positive.to(ap.dtype)).sum() / has_positive.sum().clamp(min=1)
    return loss, ap


def ap_candidates(
    desc_a: torch.Tensor,
    desc_p: torch.Tensor,
    neg_mask: torch.Tensor | None = None,
    extra_negatives: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(similarity, positive, valid)`` of N anchors for :func:`quantized_ap` / :func:`ap_loss`.

    Anchor ``a_i`` is ranked against its positive ``p_i`` (column 0), the target descriptors
    ``p_j`` with ``neg_mask[i, j]`` (None: every ``j != i``) and the explicit negatives
    ``extra_negatives[i, k]`` (N, K, D) where ``extra_valid[i, k]``: exactly the negative sets
    of :func:`hynet_loss`, so ``ap_candidates(a, p, **negatives.loss_kwargs())`` works for every
    mining mode. The masked batch candidates are packed into the fewest columns (the largest
    number of negatives of any anchor), so memory is N x (1 + max negatives + K), not N x N.
    Similarities keep their gradient (explicit negatives are constants).
    """
    n, dim = _check_pair(desc_a, desc_p)
    _check_extra(extra_negatives, extra_valid, n, dim)
    device = desc_a.device
    if neg_mask is None:
        allowed = ~torch.eye(n, dtype=torch.bool, device=device)
    else:
        if neg_mask.dtype != torch.bool or neg_mask.shape != (n, n):
            raise ValueError(
                f"neg_mask must be a bool tensor of shape ({n}, {n}), got {neg_mask.dtype} {tuple(neg_mask.shape)}"
            )
        allowed = neg_mask.to(device)
    positive_sim = (desc_a * desc_p).sum(dim=1, keepdim=True)
    columns = [positive_sim]
    valid_columns = [torch.ones(n, 1, dtype=torch.bool, device=device)]
    width = int(allowed.sum(dim=1).max()) if n else 0
    if width > 0:
        scores = desc_a @ desc_p.t()
        with torch.no_grad():
            keyed = torch.where(allowed, scores.detach(), torch.full_like(scores, float("-inf")))
            index = keyed.topk(width, dim=1).indices
        columns.append(torch.gather(scores, 1, index))
        valid_columns.append(torch.gather(allowed, 1, index))
    if extra_negatives is not None:
        extra = extra_negatives.to(desc_a.dtype).detach()
        columns.append(torch.einsum("nd,nkd->nk", desc_a, extra))
        if extra_valid is None:
            extra_valid = torch.ones(extra.shape[:2], dtype=torch.bool, device=device)
        valid_columns.append(extra_valid.to(device))
    similarity = torch.cat(columns, dim=1)
    valid = torch.cat(valid_columns, dim=1)
    positive = torch.zeros_like(valid)
    positive[:, 0] = True
    return similarity, positive, valid


def reliability_loss(ap: torch.Tensor, reliability: torch.Tensor, kappa: float = 0.5) -> torch.Tensor:
    """R2D2's AP-weighted reliability loss per element: ``1 - [AP * R + kappa * (1 - R)]``.

    ``ap`` and ``reliability`` broadcast together; an anchor whose AP is above ``kappa`` pulls
    its reliability to 1, below ``kappa`` to 0 (and with a gradient through ``ap``, the
    descriptor loss of unreliable anchors is down-weighted). Reduce it as needed.
    """
    if not 0.0 <= float(kappa) < 1.0:
        raise ValueError(f"kappa must lie in [0, 1), got {kappa}")
    return 1.0 - (ap * reliability + float(kappa) * (1.0 - reliability))


# --------------------------------------------------------------------------------------------
# Repeatability losses (dense heatmaps)
# --------------------------------------------------------------------------------------------


def _check_heat(name: str, heat: torch.Tensor) -> None:
    if heat.ndim != 4 or heat.shape[1] != 1:
        raise ValueError(f"{name} must be a (B, 1, H, W) heatmap, got {tuple(heat.shape)}")


def _as_weight(valid: torch.Tensor | None, heat: torch.Tensor) -> torch.Tensor:
    if valid is None:
        return torch.ones_like(heat)
    if valid.shape != heat.shape:
        raise ValueError(f"valid must have the heatmap's shape {tuple(heat.shape)}, got {tuple(valid.shape)}")
    return valid.to(heat.dtype)


def cosim_loss(
    heat0: torch.Tensor,
    heat1_warped: torch.Tensor,
    valid: torch.Tensor | None = None,
    n: int = 16,
    min_valid: float = 0.5,
) -> torch.Tensor:
    """``1 -`` mean cosine similarity of two aligned (B, 1, H, W) heatmaps over N x N patches.

    Patches are taken with stride ``n // 2`` (R2D2's layout); pixels where ``valid`` (same
    shape, bool or float) is false are zeroed in both maps and patches whose valid share is
    below ``min_valid`` are ignored. 0 (attached to the graph) when no patch is valid.
    """
    _check_heat("heat0", heat0)
    _check_heat("heat1_warped", heat1_warped)
    if heat0.shape != heat1_warped.shape:
        raise ValueError(f"heatmaps differ in shape: {tuple(heat0.shape)} vs {tuple(heat1_warped.shape)}")
    if int(n) < 2 or min(heat0.shape[-2:]) < int(n):
        raise ValueError(f"patch size n={n} must be >= 2 and fit in the {tuple(heat0.shape[-2:])} heatmap")
    weight = _as_weight(valid, heat0)
    n, stride = int(n), max(int(n) // 2, 1)
    p0 = F.unfold(heat0 * weight, n, stride=stride)  # (B, n*n, L)
    p1 = F.unfold(heat1_warped * weight, n, stride=stride)
    share = F.unfold(weight, n, stride=stride).mean(dim=1)  # (B, L)
    cos = (F.normalize(p0, dim=1) * F.normalize(p1, dim=1)).sum(dim=1)
    keep = (share >= float(min_valid)).to(cos.dtype)
    return 1.0 - (cos * keep).sum() / keep.sum().clamp(min=1.0)


def peakiness_loss(heat: torch.Tensor, n: int = 16, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``1 -`` mean over pixels of (local max - local mean) of a (B, 1, H, W) heatmap.

    As R2D2: the map is first smoothed by a 3 x 3 mean, then max- and mean-pooled over
    (n + 1) x (n + 1) windows centred on every pixel (the mean over the pixels inside the
    image). ``valid``: average only over those pixels (None: all).
    """
    _check_heat("heat", heat)
    if int(n) < 2 or int(n) % 2:
        raise ValueError(f"peakiness window n must be even and >= 2, got {n}")
    n = int(n)
    smooth = F.avg_pool2d(heat, 3, stride=1, padding=1, count_include_pad=False)
    local_max = F.max_pool2d(smooth, n + 1, stride=1, padding=n // 2)
    local_mean = F.avg_pool2d(smooth, n + 1, stride=1, padding=n // 2, count_include_pad=False)
    weight = _as_weight(valid, heat)
    return 1.0 - ((local_max - local_mean) * weight).sum() / weight.sum().clamp(min=1.0)


def repeatability_losses(
    heat0: torch.Tensor,
    heat1_warped: torch.Tensor,
    valid: torch.Tensor | None = None,
    n: int = 16,
    heat1: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R2D2's repeatability terms ``(cosim, peakiness)`` of a pair of heatmaps.

    ``heat1_warped``: image1's heatmap resampled in image0's frame (kornia ``warp_perspective``
    by ``H_1to0``), ``valid`` image0's pixels seen in image1. ``cosim``: :func:`cosim_loss`;
    ``peakiness``: the mean of :func:`peakiness_loss` of ``heat0`` and of ``heat1`` (the
    unwarped map, whole image), or when ``heat1`` is None of ``heat1_warped`` over ``valid``.
    """
    cosim = cosim_loss(heat0, heat1_warped, valid, n)
    second = peakiness_loss(heat1, n) if heat1 is not None else peakiness_loss(heat1_warped, n, valid)
    return cosim, 0.5 * (peakiness_loss(heat0, n) + second)


# --------------------------------------------------------------------------------------------
# Contrastive loss of global descriptors (HOW)
# --------------------------------------------------------------------------------------------


def contrastive_loss(
    anchor: torch.Tensor,
    others: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor | None = None,
    margin: float = 0.8,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Contrastive loss of B tuples: anchors (B, D) against their tuple's images (B, M, D).

    ``positive`` (B, M) bool marks the positives, the other ``valid`` (B, M) entries (None: all)
    are negatives. Per pair: ``1/2 ||a - x||^2`` for a positive, ``1/2 max(0, margin - ||a - x||)^2``
    for a negative; each tuple's pairs are summed (as the official per-tuple loss) and the tuples
    averaged (a constant rescaling of the official sum over a batch, to which Adam is invariant).
    ``eps`` keeps the gradient of ``||a - x||`` finite at 0. Computed in at least float32.

    ``stats`` (detached): ``pos_distance``, ``neg_distance`` (means over the valid pairs),
    ``active_negatives`` (share of negatives inside the margin).
    """
    if anchor.ndim != 2 or others.ndim != 3 or others.shape[0] != anchor.shape[0] or others.shape[2] != anchor.shape[1]:
        raise ValueError(
            f"anchor must be (B, D) and others (B, M, D), got {tuple(anchor.shape)} and {tuple(others.shape)}"
        )
    if positive.dtype != torch.bool or positive.shape != others.shape[:2]:
        raise ValueError(
            f"positive must be a bool tensor of shape {tuple(others.shape[:2])}, got {positive.dtype} "
            f"{tuple(positive.shape)}"
        )
    if valid is None:
        valid = torch.ones_like(positive)
    elif valid.dtype != torch.bool or valid.shape != positive.shape:
        raise ValueError(
            f"valid must be a bool tensor of shape {tuple(positive.shape)}, got {valid.dtype} {tuple(valid.shape)}"
        )
    dtype = torch.promote_types(anchor.dtype, torch.float32)
    sq = (anchor.to(dtype)[:, None, :] - others.to(dtype)).square().sum(dim=-1)  # (B, M)
    dist = (sq + eps).sqrt()
    pos = positive & valid
    neg = ~positive & valid
    per_pair = torch.where(pos, 0.5 * sq, 0.5 * (float(margin) - dist).clamp(min=0.0).square())
    per_pair = torch.where(valid, per_pair, torch.zeros_like(per_pair))
    loss = per_pair.sum(dim=1).mean()
    with torch.no_grad():
        d = dist.detach()
        stats = {
            "pos_distance": (d * pos).sum() / pos.sum().clamp(min=1),
            "neg_distance": (d * neg).sum() / neg.sum().clamp(min=1),
            "active_negatives": ((d < float(margin)) & neg).sum() / neg.sum().clamp(min=1),
        }
    return loss, stats
