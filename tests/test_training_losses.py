"""HyNet loss: hand-computed value, both mining directions, norm term, masks, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hloc_hndesc.training.losses import (
    SOURCES,
    hardest_negative_distance,
    hybrid_similarity,
    hynet_loss,
    negative_mask_from_groups,
)


def unit(*rows: tuple[float, ...]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def random_unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def brute_force_loss(a, p, na, np_, mask, margin=1.2, alpha=2.0, gamma=0.1, thr=8e-3):
    """Python loops over the definition (official HyNet code semantics, mean reduction)."""
    n = a.shape[0]

    def dist(x, y):
        return math.sqrt(abs(2 - 2 * float(x @ y)) + 1e-6)

    hinges, valid = [], []
    for i in range(n):
        cands = []
        for j in range(n):
            if mask[i, j]:
                cands += [dist(a[i], a[j]), dist(p[i], p[j]), dist(a[i], p[j]), dist(a[j], p[i])]
        cands = [c for c in cands if c > thr]
        if not cands:
            continue
        dn, dp = min(cands), dist(a[i], p[i])
        hinges.append(max(0.0, margin + dp + alpha * dp**2 / 2 - dn - alpha * dn**2 / 2))
    norm = sum((float(na[i]) - float(np_[i])) ** 2 for i in range(n)) / n
    return sum(hinges) / max(1, len(hinges)) + gamma * norm


def test_hand_computed_example() -> None:
    a = unit((1.0, 0.0), (0.0, 1.0))
    p = unit((0.6, 0.8), (0.8, 0.6))
    na, np_ = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 3.0])
    # d_pos^2 = 2 - 2 * 0.6 = 0.8; hardest negative: d(p0, p1)^2 = 2 - 2 * 0.96 = 0.08 (both anchors)
    hinge = 1.2 + (math.sqrt(0.8 + 1e-6) + 0.8 + 1e-6) - (math.sqrt(0.08 + 1e-6) + 0.08 + 1e-6)
    expected_mean = hinge + 0.1 * (1.0**2 + 0.0) / 2
    loss, stats = hynet_loss(a, p, na, np_)
    assert loss.item() == pytest.approx(expected_mean, abs=1e-9)
    assert loss.item() == pytest.approx(2.531584 + 0.05, abs=2e-6)
    loss_sum, _ = hynet_loss(a, p, na, np_, reduction="sum")
    assert loss_sum.item() == pytest.approx(2 * hinge + 0.1 * 1.0, abs=1e-9)
    assert stats["pos_distance"].item() == pytest.approx(math.sqrt(0.8 + 1e-6), abs=1e-9)
    assert stats["neg_distance"].item() == pytest.approx(math.sqrt(0.08 + 1e-6), abs=1e-9)
    assert stats["active_fraction"].item() == 1.0
    assert stats["norm_loss"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_random_mask(seed: int) -> None:
    n, d = 12, 16
    a = random_unit(n, d, seed)
    p = F.normalize(a + 0.6 * random_unit(n, d, seed + 100), dim=1)
    a[3] = p[5]  # a duplicate of another positive: excluded by the false-negative threshold
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n, generator=g) > 0.4
    mask[0] = False  # an anchor without negatives
    na, np_ = 1 + torch.rand(n, generator=g, dtype=torch.float64), 1 + torch.rand(n, generator=g, dtype=torch.float64)
    loss, stats = hynet_loss(a, p, na, np_, neg_mask=mask)
    assert loss.item() == pytest.approx(brute_force_loss(a, p, na, np_, mask), abs=1e-9)
    assert stats["valid_fraction"].item() == pytest.approx((n - 1) / n)


def test_gradient_flows_to_descriptors_and_norms() -> None:
    gen = torch.Generator().manual_seed(0)
    raw_a = torch.randn(16, 32, generator=gen).requires_grad_(True)
    raw_p = (raw_a.detach() + 2.0 * torch.randn(16, 32, generator=gen)).requires_grad_(True)
    loss, stats = hynet_loss(F.normalize(raw_a, dim=1), F.normalize(raw_p, dim=1), raw_a.norm(dim=1), raw_p.norm(dim=1))
    loss.backward()
    assert stats["active_fraction"].item() > 0
    for grad in (raw_a.grad, raw_p.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_no_negative_gives_zero_triplet_and_finite_gradient() -> None:
    a = random_unit(4, 8, 0).requires_grad_(True)
    p = random_unit(4, 8, 1).requires_grad_(True)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    loss, stats = hynet_loss(a, p, torch.ones(4), torch.ones(4), neg_mask=mask)
    loss.backward()
    assert loss.item() == 0.0 and stats["valid_fraction"].item() == 0.0
    assert torch.isfinite(a.grad).all() and torch.isfinite(p.grad).all()


@pytest.mark.parametrize(
    "plant, source",
    [
        ("row", "anchor_positive"),  # a_0 close to p_2: row 0 of the cross matrix
        ("column", "positive_anchor"),  # a_2 close to p_0: column 0 of the cross matrix
        ("anchors", "anchor_anchor"),
        ("positives", "positive_positive"),
    ],
)
def test_hardest_negative_both_directions(plant: str, source: str) -> None:
    n, d = 6, 32
    a = random_unit(n, d, 3)
    p = F.normalize(a + 0.05 * random_unit(n, d, 4), dim=1)
    near = lambda x: F.normalize(x + 0.02 * random_unit(1, d, 9)[0], dim=0)  # noqa: E731
    if plant == "row":
        p[2] = near(a[0])
    elif plant == "column":
        a[2] = near(p[0])
    elif plant == "anchors":
        a[2] = near(a[0])
    else:
        p[2] = near(p[0])
    hard = hardest_negative_distance(a, p)
    expected = {"row": (a[0], p[2]), "column": (a[2], p[0]), "anchors": (a[0], a[2]), "positives": (p[0], p[2])}[plant]
    dist = math.sqrt(abs(2 - 2 * float(expected[0] @ expected[1])) + 1e-6)
    assert hard.distance[0].item() == pytest.approx(dist, abs=1e-9)
    assert SOURCES[int(hard.source[0])] == source
    # the mask removes the planted candidate: the hardest negative gets farther
    mask = ~torch.eye(n, dtype=torch.bool)
    mask[0, 2] = False
    assert hardest_negative_distance(a, p, mask).distance[0] > hard.distance[0] + 0.1


def test_gamma_term_is_mean_squared_norm_difference() -> None:
    a, p = random_unit(8, 16, 0), random_unit(8, 16, 1)
    na = torch.linspace(1.0, 2.0, 8, dtype=torch.float64)
    np_ = torch.linspace(0.5, 3.0, 8, dtype=torch.float64)
    l0, _ = hynet_loss(a, p, na, np_, gamma=0.0)
    l1, stats = hynet_loss(a, p, na, np_, gamma=0.1)
    assert (l1 - l0).item() == pytest.approx(0.1 * float(((na - np_) ** 2).mean()), abs=1e-12)
    assert stats["norm_loss"].item() == pytest.approx(float(((na - np_) ** 2).mean()))
    na_req = na.clone().requires_grad_(True)
    hynet_loss(a, p, na_req, np_, gamma=0.1)[0].backward()
    assert torch.allclose(na_req.grad, 0.1 * 2 * (na - np_) / 8)


def test_hybrid_similarity() -> None:
    d = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(hybrid_similarity(d, 2.0), torch.tensor([0.0, 0.75, 2.0]))


def test_extra_negatives_used_and_masked() -> None:
    n, d = 5, 16
    a = random_unit(n, d, 0)
    p = F.normalize(a + 0.1 * random_unit(n, d, 1), dim=1)
    extra = random_unit(n * 3, d, 2).view(n, 3, d).clone()
    extra[1, 2] = F.normalize(p[1] + 0.03 * random_unit(1, d, 5)[0], dim=0)  # close to p_1
    hard = hardest_negative_distance(a, p, extra_negatives=extra)
    assert SOURCES[int(hard.source[1])] == "extra"
    assert hard.distance[1].item() == pytest.approx(math.sqrt(abs(2 - 2 * float(p[1] @ extra[1, 2])) + 1e-6))
    valid = torch.ones(n, 3, dtype=torch.bool)
    valid[1, 2] = False
    masked = hardest_negative_distance(a, p, extra_negatives=extra, extra_valid=valid)
    assert masked.distance[1] > hard.distance[1] + 0.5
    loss, stats = hynet_loss(a, p, torch.ones(n), torch.ones(n), extra_negatives=extra)
    assert stats["extra_fraction"].item() >= 1 / n
    # explicit negatives only: an all-False mask still leaves the extras
    only = hardest_negative_distance(a, p, torch.zeros(n, n, dtype=torch.bool), extra, None)
    assert bool(only.valid.all()) and bool((only.source == len(SOURCES) - 1).all())


def test_half_precision_inputs_are_upcast() -> None:
    a, p = random_unit(16, 32, 0).float(), random_unit(16, 32, 1).float()
    ref, _ = hynet_loss(a, p, torch.ones(16), torch.ones(16))
    half, _ = hynet_loss(a.half(), p.half(), torch.ones(16).half(), torch.ones(16).half())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(ref.item(), rel=1e-2)


def test_negative_mask_groups_and_radius() -> None:
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    image_ids = torch.tensor([0, 0, 1, 2, 2, 3])  # images 0 and 1 share group 0
    kpts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [10.0, 10.0], [12.0, 10.0], [0.0, 0.0]])
    mask = negative_mask_from_groups(groups, image_ids, kpts, radius=5.0)
    assert not mask.diagonal().any()
    assert mask[0, 1] and mask[1, 0]  # same image, exactly 5 px apart: allowed
    assert not mask[0, 2] and not mask[2, 1]  # same group, other image: excluded
    assert not mask[3, 4]  # same image, 2 px apart: excluded
    assert mask[0, 3] and mask[3, 0] and mask[5, 0] and mask[2, 5]  # other groups
    assert negative_mask_from_groups(groups, image_ids, None)[3, 4]  # no radius test


def test_shape_errors() -> None:
    a, p = random_unit(4, 8, 0), random_unit(4, 8, 1)
    ones = torch.ones(4)
    with pytest.raises(ValueError, match="same shape"):
        hynet_loss(a, p[:3], ones, ones)
    with pytest.raises(ValueError, match="raw_norm"):
        hynet_loss(a, p, ones[:3], ones)
    with pytest.raises(ValueError, match="neg_mask"):
        hynet_loss(a, p, ones, ones, neg_mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="neg_mask"):
        hynet_loss(a, p, ones, ones, neg_mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="extra_negatives"):
        hynet_loss(a, p, ones, ones, extra_negatives=torch.ones(4, 2, 7))
    with pytest.raises(ValueError, match="extra_valid"):
        bad_valid = torch.ones(4, 3, dtype=torch.bool)
        hynet_loss(a, p, ones, ones, extra_negatives=torch.ones(4, 2, 8), extra_valid=bad_valid)
    with pytest.raises(ValueError, match="reduction"):
        hynet_loss(a, p, ones, ones, reduction="max")
    with pytest.raises(ValueError, match="kpts"):
        negative_mask_from_groups(torch.zeros(4), torch.zeros(4), torch.zeros(4, 3), 1.0)
