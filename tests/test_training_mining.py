"""Hard-negative mining: in-pair, in-batch (top-k), global bank against brute force, external h5."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError
from hloc_hndesc.training.losses import hynet_loss
from hloc_hndesc.training.mining import (
    MINING_DEFAULTS,
    GlobalNegativeBank,
    candidate_similarity,
    mining_conf,
    pooled_global_descriptors,
    read_global_descriptors,
    select_negatives,
)


def random_unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def make_batch(pairs: int = 4, per_pair: int = 6, d: int = 16, seed: int = 0):
    """N = pairs * per_pair correspondences; pairs 0 and 1 share group 7 (same scene)."""
    n = pairs * per_pair
    a = random_unit(n, d, seed)
    p = F.normalize(a + 0.3 * random_unit(n, d, seed + 1), dim=1)
    pair_ids = torch.arange(pairs).repeat_interleave(per_pair)
    groups = torch.tensor([7, 7] + list(range(pairs - 2))).repeat_interleave(per_pair)
    g = torch.Generator().manual_seed(seed)
    kpts = torch.rand(n, 2, generator=g) * 40
    return a, p, pair_ids, groups, kpts


def test_defaults_and_conf_errors() -> None:
    assert MINING_DEFAULTS["top_k"] == 20 and MINING_DEFAULTS["mode"] in ("in_pair", "in_batch", "global")
    with pytest.raises(ConfigError, match="unknown mode 'hardest'"):
        mining_conf({"mode": "hardest"})
    with pytest.raises(ConfigError, match="topk"):
        mining_conf({"topk": 3})
    with pytest.raises(ConfigError, match="source"):
        mining_conf({"bank": {"source": "how"}})
    merged = mining_conf({"mode": "in_pair", "top_k": 3})
    assert mining_conf(merged) is merged and merged.exclusion_radius == MINING_DEFAULTS["exclusion_radius"]
    a, p, pair_ids, groups, kpts = make_batch()
    assert select_negatives(merged, a, p, pair_ids, groups, kpts).mask.sum(1).max() <= 3
    with pytest.raises(ConfigError, match="unknown mode"):
        select_negatives({"mode": "in_image"}, a, p, pair_ids, groups, kpts)
    with pytest.raises(ValueError, match="same shape"):
        select_negatives({"mode": "in_batch"}, a, p[:-1], pair_ids, groups, kpts)
    with pytest.raises(ValueError, match="groups"):
        select_negatives({"mode": "in_batch"}, a, p, pair_ids, groups[:-1], kpts)
    with pytest.raises(ValueError, match="kpts_p"):
        select_negatives({"mode": "in_pair"}, a, p, pair_ids, groups, None)
    with pytest.raises(ValueError, match="GlobalNegativeBank"):
        select_negatives({"mode": "global"}, a, p, pair_ids, groups, kpts)


def test_in_pair_restricts_to_same_pair_outside_radius() -> None:
    a, p, pair_ids, groups, kpts = make_batch()
    radius = 12.0
    neg = select_negatives({"mode": "in_pair", "top_k": 0, "exclusion_radius": radius}, a, p, pair_ids, groups, kpts)
    n = a.shape[0]
    for i in range(n):
        for j in range(n):
            expected = i != j and pair_ids[i] == pair_ids[j] and float((kpts[i] - kpts[j]).norm()) >= radius
            assert bool(neg.mask[i, j]) == expected, (i, j)
    assert neg.descriptors is None and neg.mode == "in_pair"
    # top-k keeps at most k per anchor, the most similar ones
    top = select_negatives({"mode": "in_pair", "top_k": 2, "exclusion_radius": radius}, a, p, pair_ids, groups, kpts)
    assert bool((top.mask <= neg.mask).all())
    assert torch.equal(top.mask.sum(1), neg.mask.sum(1).clamp(max=2))


def test_in_batch_other_pairs_other_groups_top_k_balance() -> None:
    a, p, pair_ids, groups, kpts = make_batch(pairs=6, per_pair=8)
    n = a.shape[0]
    full = select_negatives({"mode": "in_batch", "top_k": 0}, a, p, pair_ids, groups, kpts)
    expected = (pair_ids[:, None] != pair_ids[None, :]) & (groups[:, None] != groups[None, :])
    assert torch.equal(full.mask, expected)
    assert not full.mask[0, 8:16].any()  # pair 1 shares pair 0's group
    k = 5
    top = select_negatives({"mode": "in_batch", "top_k": k}, a, p, pair_ids, groups, kpts)
    assert torch.equal(top.mask.sum(1), torch.full((n,), k))
    assert top.stats["negatives_per_anchor"] == k
    sim = candidate_similarity(a, p)
    for i in range(n):
        allowed = torch.nonzero(expected[i]).flatten()
        best = allowed[sim[i, allowed].argsort(descending=True)[:k]]
        assert set(best.tolist()) == set(torch.nonzero(top.mask[i]).flatten().tolist())
    # the top-k never drops HyNet's hardest negative
    ones = torch.ones(n)
    l_full, _ = hynet_loss(a, p, ones, ones, **full.loss_kwargs())
    l_top, _ = hynet_loss(a, p, ones, ones, **top.loss_kwargs())
    assert l_top.item() == pytest.approx(l_full.item(), abs=1e-6)
    # fewer allowed than k: all of them are kept
    few = select_negatives({"mode": "in_batch", "top_k": 1000}, a, p, pair_ids, groups, kpts)
    assert torch.equal(few.mask, expected)


def make_bank_data(num_images: int = 24, d: int = 16, seed: int = 0):
    groups = torch.arange(num_images) // 3  # groups of 3 photos
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(5, 40, (num_images,), generator=g)
    centres = random_unit(num_images, d, seed + 1)
    local = [F.normalize(centres[i] + 0.8 * torch.randn(int(c), d, generator=g), dim=1) for i, c in enumerate(counts)]
    return groups, local


def brute_neighbours(glob: torch.Tensor, groups: torch.Tensor, ids: torch.Tensor, m: int) -> list[list[int]]:
    sim = F.normalize(glob, dim=1) @ F.normalize(glob, dim=1).t()
    out = []
    for i in ids.tolist():
        order = [j for j in sim[i].argsort(descending=True).tolist() if groups[j] != groups[i]]
        out.append(order[:m])
    return out


def test_bank_neighbours_and_hardest_match_brute_force() -> None:
    groups, local = make_bank_data()
    conf = {"mode": "global", "bank": {"num_neighbours": 4, "locals_per_image": 16}}
    bank = GlobalNegativeBank(groups, conf)
    with pytest.raises(RuntimeError, match="refresh"):
        bank.neighbours(torch.tensor([0]))
    assert bank.needs_refresh(0)
    stats = bank.refresh(None, local, step=0)
    assert stats["refresh_seconds"] >= 0 and stats["cache_bytes"] == 24 * 16 * 16 * 2
    assert not bank.needs_refresh(1) and bank.needs_refresh(2000)
    assert bank.cache.dtype == torch.float16 and int(bank.counts.max()) == 16

    ids = torch.arange(24)
    nbrs = bank.neighbours(ids)
    assert nbrs.shape == (24, 4)
    assert bool((groups[nbrs] != groups[ids][:, None]).all())  # never the same group
    glob = pooled_global_descriptors(local)
    assert nbrs.tolist() == brute_neighbours(glob, groups, ids, 4)

    anchors = random_unit(30, 16, 5)
    anchor_ids = torch.randint(0, 24, (30,), generator=torch.Generator().manual_seed(3))
    k = 7
    neg, valid = bank.hardest(anchors, anchor_ids, k)
    assert neg.shape == (30, k, 16) and valid.shape == (30, k) and bool(valid.all())
    for i in range(30):
        cand = torch.cat([bank.cache[j, : int(bank.counts[j])].float() for j in nbrs[anchor_ids[i]].tolist()])
        sims = cand @ anchors[i]
        top = sims.topk(k).values
        got = F.normalize(cand, dim=1) @ neg[i].t()  # each returned negative is a candidate
        assert bool((got.max(dim=0).values > 1 - 1e-5).all())
        assert torch.allclose((neg[i] @ anchors[i]).sort(descending=True).values, top, atol=2e-3)
    assert bank.last_mining_stats["mining_seconds"] >= 0
    assert bank.last_mining_stats["candidates_per_anchor"] > k


def test_bank_pads_when_few_candidates_and_checks_inputs() -> None:
    groups = torch.tensor([0, 0, 1, 2])
    local = [random_unit(2, 8, i) for i in range(4)]
    bank = GlobalNegativeBank(groups, {"bank": {"num_neighbours": 3, "locals_per_image": 4}})
    bank.refresh(None, local, step=0)
    nbrs = bank.neighbours(torch.tensor([0, 2]))
    assert nbrs[0].tolist()[2] == -1 and sorted(nbrs[0].tolist()[:2]) == [2, 3]  # only 2 images outside group 0
    assert set(nbrs[1].tolist()) == {0, 1, 3}
    neg, valid = bank.hardest(random_unit(2, 8, 9), torch.tensor([0, 2]), k=10)
    assert valid.sum(1).tolist() == [4, 6]  # 2 images x 2 descriptors, 3 images x 2 descriptors
    assert neg.shape == (2, 10, 8)
    with pytest.raises(ValueError, match="image_ids"):
        bank.neighbours(torch.tensor([4]))
    with pytest.raises(ValueError, match="anchors"):
        bank.hardest(random_unit(2, 7, 0), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="image ids"):
        bank.hardest(random_unit(2, 8, 0), torch.tensor([0]))
    with pytest.raises(ValueError, match="local descriptor sets"):
        bank.refresh(None, local[:3], step=1)
    with pytest.raises(ValueError, match="global_desc"):
        bank.refresh(torch.zeros(3, 4), local, step=1)


def test_refresh_changes_results_and_state_roundtrip() -> None:
    groups, local = make_bank_data(num_images=12)
    bank = GlobalNegativeBank(groups, {"bank": {"num_neighbours": 2, "refresh_every": 10}})
    glob = random_unit(12, 8, 0)
    bank.refresh(glob, local, step=0)
    ids = torch.arange(12)
    before = bank.neighbours(ids)
    assert before.tolist() == brute_neighbours(glob, groups, ids, 2)
    state = bank.state_dict()
    new_glob = glob.clone()
    new_glob[11] = F.normalize(glob[0] + 0.05 * random_unit(1, 8, 7)[0], dim=0)  # image 11 (group 3) ~ image 0
    assert bank.needs_refresh(10) and not bank.needs_refresh(9)
    bank.refresh(new_glob, local, step=10)
    after = bank.neighbours(ids)
    assert after[0, 0].item() == 11 and before[0, 0].item() != 11
    assert after.tolist() == brute_neighbours(new_glob, groups, ids, 2)
    restored = GlobalNegativeBank(groups, {"bank": {"num_neighbours": 2}})
    restored.load_state_dict(state)
    assert restored.neighbours(ids).tolist() == before.tolist() and restored.last_refresh == 0
    anchors = random_unit(5, 16, 1)
    # the cached subsample is drawn from seed + step: a restored bank mines identically
    bank2 = GlobalNegativeBank(groups, {"bank": {"num_neighbours": 2}})
    bank2.refresh(glob, local, step=0)
    assert torch.equal(restored.hardest(anchors, ids[:5], 3)[0], bank2.hardest(anchors, ids[:5], 3)[0])


def test_external_global_descriptors_from_h5(tmp_path: Path) -> None:
    groups, local = make_bank_data(num_images=9)
    names = [f"scene{i // 3}/img{i}.jpg" for i in range(9)]
    glob = random_unit(9, 12, 4)
    path = tmp_path / "global-feats-how.h5"
    with h5py.File(path, "w") as fd:
        for name, row in zip(names, glob.numpy()):
            grp = fd.create_group(name)
            grp.create_dataset("global_descriptor", data=3.0 * row)  # unnormalised on disk
            grp.create_dataset("image_size", data=np.array([64, 48]))
    assert torch.allclose(read_global_descriptors(path, names), 3.0 * glob, atol=1e-6)
    conf = {"bank": {"source": "external", "global_path": str(path), "num_neighbours": 3}}
    bank = GlobalNegativeBank(groups, conf, names=names)
    bank.refresh(None, local, step=0)
    ids = torch.arange(9)
    assert bank.neighbours(ids).tolist() == brute_neighbours(glob, groups, ids, 3)
    with pytest.raises(ValueError, match="external"):
        bank.refresh(glob, local, step=1)
    with pytest.raises(KeyError, match="missing.jpg"):
        read_global_descriptors(path, names[:2] + ["missing.jpg"])
    with pytest.raises(ConfigError, match="global_path"):
        GlobalNegativeBank(groups, {"bank": {"source": "external"}}, names=names)
    with pytest.raises(FileNotFoundError):
        read_global_descriptors(tmp_path / "none.h5", names)


def test_select_negatives_global_mode_feeds_the_loss() -> None:
    groups_img, local = make_bank_data(num_images=12, d=16)
    # a batch of 2 pairs from images 0 and 4 (groups 0 and 1), 6 correspondences each
    a, p, pair_ids, _, kpts = make_batch(pairs=2, per_pair=6, d=16, seed=3)
    image_ids = torch.tensor([0, 4]).repeat_interleave(6)
    groups = groups_img[image_ids]
    conf = {"mode": "global", "top_k": 4, "bank": {"num_neighbours": 3, "locals_per_image": 8}}
    bank = GlobalNegativeBank(groups_img, conf)
    # the cached descriptors of image 0's neighbours contain near-copies of a_0
    local = [x.clone() for x in local]
    bank.refresh(None, local, step=0)
    target = bank.neighbours(torch.tensor([0]))[0, 0].item()
    local[target][0] = F.normalize(a[0] + 0.01 * random_unit(1, 16, 8)[0], dim=0)
    bank.refresh(None, local, step=0)
    logs: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logs.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        neg = select_negatives(conf, a, p, pair_ids, groups, kpts, bank=bank, image_ids=image_ids)
        bank.refresh(None, local, step=1)
    finally:
        logger.removeHandler(handler)
    assert any("refreshed at step 1" in line for line in logs)
    assert neg.descriptors.shape == (12, 4, 16) and bool(neg.valid.all())
    other_pair = pair_ids[:, None] != pair_ids[None, :]
    assert bool((neg.mask <= other_pair).all()) and neg.mask.sum(1).tolist() == [4] * 12  # in-batch top-k part
    assert neg.stats["bank_mining_seconds"] >= 0 and neg.stats["extra_negatives_per_anchor"] == 4
    assert float(neg.descriptors[0, 0] @ a[0]) > 0.99
    loss, stats = hynet_loss(a, p, torch.ones(12), torch.ones(12), **neg.loss_kwargs())
    assert stats["extra_fraction"].item() > 0 and torch.isfinite(loss)
    only = select_negatives(
        {**conf, "bank": {**conf["bank"], "with_in_batch": False}}, a, p, pair_ids, groups, kpts, bank, image_ids
    )
    assert not only.mask.any()
    with pytest.raises(ValueError, match="image_ids"):
        select_negatives(conf, a, p, pair_ids, groups, kpts, bank=bank)
