"""HNDesc-R2D2 training: quantised AP, reliability and repeatability losses, warp convention, mining, a tiny run."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.r2d2 import R2D2Extractor
from hloc_hndesc.io import read_image, resize_max
from hloc_hndesc.training import r2d2 as r2d2_training
from hloc_hndesc.training.data.homography import HomographyParams, sample_homography
from hloc_hndesc.training.losses import (
    ap_candidates,
    ap_loss,
    cosim_loss,
    peakiness_loss,
    quantized_ap,
    reliability_loss,
    repeatability_losses,
)
from hloc_hndesc.training.r2d2 import (
    HNDescR2D2Task,
    grid_points,
    hndesc_r2d2_train_conf,
    sample_maps,
    train_hndesc_r2d2,
    warp_points_batch,
    warp_to_image0,
)
from hloc_hndesc.training.tasks import TASKS, load_train_config
from hloc_hndesc.weights import read_registry, shipped_weights


def exact_ap(similarity: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Brute-force AP per row: mean over positives of the precision at their rank (no ties)."""
    out = []
    for s, p in zip(similarity.tolist(), positive.tolist()):
        order = sorted(range(len(s)), key=lambda j: -s[j])
        hits, precisions = 0, []
        for rank, j in enumerate(order, start=1):
            if p[j]:
                hits += 1
                precisions.append(hits / rank)
        out.append(sum(precisions) / len(precisions))
    return torch.tensor(out, dtype=torch.float64)


def split_ap(similarity: torch.Tensor, positive: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    """Brute-force quantised AP when no two candidates share a bin: a candidate between two bin
    centres is split between them, so a positive with share ``u`` in the upper bin sees itself
    only by ``u`` there: ``u (P + u) / (T + u) + (1 - u) (P + 1) / (T + 1)`` (P, T: positives and
    candidates above it)."""
    step = (high - low) / (bins - 1)
    out = []
    for s, p in zip(similarity.tolist(), positive.tolist()):
        order = sorted(range(len(s)), key=lambda j: -s[j])
        above_pos = above_all = 0
        total = 0.0
        for j in order:
            pos_k = (high - s[j]) / step
            u = 1.0 - (pos_k - math.floor(pos_k))  # share in the upper bin
            if p[j]:
                total += u * (above_pos + u) / (above_all + u) + (1 - u) * (above_pos + 1) / (above_all + 1)
                above_pos += 1
            above_all += 1
        out.append(total / sum(p))
    return torch.tensor(out, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# AP loss
# ---------------------------------------------------------------------------------------------


def test_quantized_ap_is_exact_on_bin_centres_and_known_cases():
    g = torch.Generator().manual_seed(0)
    bins, low, high = 20, -1.0, 1.0
    centres = high - (high - low) / (bins - 1) * torch.arange(bins, dtype=torch.float64)
    rows = torch.stack([centres[torch.randperm(bins, generator=g)[:12]] for _ in range(50)])
    positive = torch.rand(50, 12, generator=g) < 0.3
    positive[:, 0] = True
    assert torch.allclose(quantized_ap(rows, positive, bins=bins).double(), exact_ap(rows, positive), atol=1e-6)
    # positive above every negative (sharing no bin with them, anywhere) -> 1; a single positive on a
    # bin centre below m negatives -> 1 / (m + 1)
    sims = torch.cat([
        torch.tensor([[0.97, 0.75, 0.31, -0.5, -1.0]]),
        centres[torch.tensor([[2, 1, 6, 10, 18], [19, 0, 3, 9, 12]])].float(),
    ])
    first = torch.zeros_like(sims, dtype=torch.bool)
    first[:, 0] = True
    assert torch.allclose(quantized_ap(sims, first), torch.tensor([1.0, 0.5, 0.2]), atol=1e-6)
    # invalid entries are ignored; rows without a positive give AP 0 and do not enter the loss
    valid = torch.ones_like(first)
    valid[1, 1] = False
    assert torch.allclose(quantized_ap(sims, first, valid)[1], torch.tensor(1.0))
    no_pos = first.clone()
    no_pos[2, 0] = False
    loss, ap = ap_loss(sims, no_pos, valid)
    assert ap[2] == 0 and torch.isclose(loss, 1 - (ap[0] + ap[1]) / 2, atol=1e-6)


def test_quantized_ap_matches_brute_force_on_untied_values():
    """Candidates in separate bins: the quantised AP equals the brute-force split-bin AP for any
    offsets, the exact AP when they sit on bin centres, and never drifts far from it."""
    g = torch.Generator().manual_seed(1)
    bins, low, high = 2001, -1.0, 1.0
    step = (high - low) / (bins - 1)
    slots = torch.stack([torch.randperm((bins - 1) // 3, generator=g)[:40] for _ in range(40)]) * 3
    positive = torch.rand(40, 40, generator=g) < 0.25
    positive[:, 0] = True
    on_centres = (high - slots * step).double()
    q_centres = quantized_ap(on_centres, positive, bins=bins).double()
    assert torch.allclose(q_centres, exact_ap(on_centres, positive), atol=1e-5)
    offsets = torch.rand(40, 40, generator=g, dtype=torch.float64) * step
    sims = on_centres - offsets
    q = quantized_ap(sims, positive, bins=bins).double()
    assert torch.allclose(q, split_ap(sims, positive, bins, low, high), atol=1e-6)
    exact = exact_ap(sims, positive)
    assert (q <= exact + 1e-6).all() and (exact - q).mean() < 0.05


def test_ap_candidates_follow_the_negative_sets_and_carry_gradients():
    g = torch.Generator().manual_seed(2)
    n, d, k = 6, 8, 3
    a = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
    p = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
    mask = torch.rand(n, n, generator=g) < 0.5
    mask.fill_diagonal_(False)
    mask[0] = False  # an anchor without batch negatives
    extra = torch.nn.functional.normalize(torch.randn(n, k, d, generator=g), dim=2)
    extra_valid = torch.rand(n, k, generator=g) < 0.7
    sim, pos, valid = ap_candidates(a, p, neg_mask=mask, extra_negatives=extra, extra_valid=extra_valid)
    width = int(mask.sum(1).max())
    assert sim.shape == (n, 1 + width + k) and pos[:, 0].all() and not pos[:, 1:].any()
    full = (a @ p.t()).detach()
    for i in range(n):
        assert torch.isclose(sim[i, 0], (a[i] * p[i]).sum())
        got = sorted(sim[i, 1 : 1 + width][valid[i, 1 : 1 + width]].tolist())
        assert np.allclose(got, sorted(full[i][mask[i]].tolist()), atol=1e-6)
        ext = (extra[i] @ a[i].detach())[extra_valid[i]]
        assert np.allclose(sorted(sim[i, 1 + width :][valid[i, 1 + width :]].tolist()), sorted(ext.tolist()), atol=1e-6)
    loss, ap = ap_loss(sim, pos, valid, bins=20, low=0.0, high=1.0)
    loss.backward()
    assert a.grad is not None and p.grad is not None and a.grad.abs().sum() > 0 and p.grad.abs().sum() > 0
    # raising the positive similarity never lowers the AP
    s = torch.tensor([[0.4, 0.7, 0.3, 0.55]], requires_grad=True)
    one = torch.tensor([[True, False, False, False]])
    quantized_ap(s, one, bins=20, low=0.0, high=1.0).sum().backward()
    assert s.grad[0, 0] > 0 and (s.grad[0, 1:] <= 0).all()


def test_reliability_loss_formula():
    ap = torch.tensor([1.0, 0.0, 0.8, 0.2, 0.5])
    rel = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.3])
    assert torch.allclose(reliability_loss(ap, rel, 0.5), 1 - (ap * rel + 0.5 * (1 - rel)))
    assert torch.allclose(reliability_loss(ap, rel, 0.5)[:2], torch.tensor([0.0, 0.5]))
    r = torch.tensor([0.5, 0.5], requires_grad=True)
    reliability_loss(torch.tensor([0.9, 0.1]), r, 0.5).sum().backward()
    assert r.grad[0] < 0 < r.grad[1]  # good AP pulls R up, bad AP pushes it down
    with pytest.raises(ValueError, match="kappa"):
        reliability_loss(ap, rel, 1.0)


# ---------------------------------------------------------------------------------------------
# Repeatability losses and the warp convention
# ---------------------------------------------------------------------------------------------


def peaky_map(size: int = 64, spacing: int = 16) -> torch.Tensor:
    """3 x 3 blobs of 1 on a background of 0.05, one per ``spacing`` x ``spacing`` cell."""
    heat = torch.full((1, 1, size, size), 0.05)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            heat[..., spacing // 2 + dy :: spacing, spacing // 2 + dx :: spacing] = 1.0
    return heat


def test_repeatability_losses_zero_for_identical_maps_and_higher_when_shuffled():
    g = torch.Generator().manual_seed(3)
    heat = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 64, 64, generator=g), 5, 1, 2)
    identity = torch.eye(3, dtype=torch.float64)[None].expand(2, 3, 3)
    warped = warp_to_image0(heat, identity, (64, 64))
    assert torch.allclose(warped, heat, atol=1e-5)
    valid = torch.ones_like(heat, dtype=torch.bool)
    cos_same, _ = repeatability_losses(heat, warped, valid, 16)
    shuffled = heat.flatten(2)[..., torch.randperm(64 * 64, generator=g)].view_as(heat)
    cos_shuffled = cosim_loss(heat, shuffled, valid, 16)
    assert abs(float(cos_same)) < 1e-5 and float(cos_shuffled) > 10 * max(float(cos_same), 1e-4)
    # invalid pixels do not count: garbage outside the valid half changes nothing
    half = valid.clone()
    half[..., 32:] = False
    garbage = torch.where(half, heat, torch.rand(heat.shape, generator=g))
    assert abs(float(cosim_loss(heat, garbage, half, 16))) < 1e-5 and float(cosim_loss(heat, garbage, None, 16)) > 1e-3
    # peakiness: isolated peaks beat a flat or a smooth map
    flat = torch.full((1, 1, 64, 64), 0.5)
    assert float(peakiness_loss(flat, 16)) == pytest.approx(1.0)
    assert float(peakiness_loss(peaky_map(), 16)) < 0.3 < float(peakiness_loss(heat[:1], 16)) < 1.0
    with pytest.raises(ValueError, match="even"):
        peakiness_loss(flat, 15)


def test_warp_convention_dense_map_and_sampled_points_agree():
    """A map of image1 sampled at H(anchors) equals the same map warped into image0 by kornia and
    read at the anchors; on a linear ramp both are exactly the ramp at the warped points."""
    size = 96
    params = HomographyParams.from_conf({})
    H = torch.stack([
        torch.from_numpy(sample_homography(np.random.default_rng(s), (size, size), params)) for s in (0, 1)
    ])
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    ramp = (0.3 * xx - 0.7 * yy + 5.0)[None, None].expand(2, 1, size, size)
    g = torch.Generator().manual_seed(4)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(2, 1, size, size, generator=g), 7, 1, 3)
    maps1 = torch.cat([ramp, smooth], dim=1)  # (2, 2, S, S)
    anchors = grid_points(size, size, 8, 8)
    kp1, in_front = warp_points_batch(H, anchors)
    inside = in_front & (kp1 >= 1).all(-1) & (kp1 <= size - 2).all(-1)
    assert inside.sum() > 20
    sampled = sample_maps(maps1, kp1)  # (2, G, 2)
    expected_ramp = 0.3 * kp1[..., 0] - 0.7 * kp1[..., 1] + 5.0
    assert torch.allclose(sampled[..., 0][inside], expected_ramp[inside], atol=1e-3)
    warped = warp_to_image0(maps1, H, (size, size))
    at_anchors = warped[:, :, anchors[:, 1].long(), anchors[:, 0].long()].transpose(1, 2)
    assert torch.allclose(at_anchors[inside], sampled[inside], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The task: mining modes, gradients, a tiny run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir: Path) -> Path:
    """Six training photos in two folders, one of them a 'scene' folder (one group)."""
    root = tmp_path_factory.mktemp("photos") / "train_natural"
    for sub, count in (("bsd300", 4), ("tum_freiburg", 2)):
        (root / sub).mkdir(parents=True)
        for path in sorted((data_dir / "train_natural" / sub).glob("*.jpg"))[:count]:
            shutil.copy(path, root / sub / path.name)
    return root


def tiny_conf(photos: Path, out: Path, crop: int = 64, **mining) -> dict:
    return {
        "data": {
            "image_dirs": [str(photos)], "crop": crop, "max_size": 192, "val_fraction": 0.0,
            "stylize_probability": 0.0, "photometric": {"enabled": False},
        },
        "model": {"variant": "slim", "mchan": 2},
        "sampling": {"stride": 6, "border": 4},
        "mining": {"mode": "in_batch", "top_k": 8, **mining},
        "bank_image_size": 96,
        "validation": {"pairs": 2, "keypoints": 64},
        "train": {
            "steps": 6, "batch_size": 3, "log_every": 1, "checkpoint_every": 6, "output_dir": str(out),
            "progress": False, "tensorboard": False,
        },
    }


@pytest.mark.parametrize("mode", ["in_pair", "in_batch", "global"])
def test_loss_per_mining_mode_respects_radius_and_groups_with_gradients(
    photos: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
):
    torch.manual_seed(0)
    task = HNDescR2D2Task(hndesc_r2d2_train_conf(tiny_conf(photos, tmp_path, mode=mode, exclusion_radius=10.0)))
    seen: dict = {}
    original = r2d2_training.select_negatives

    def spy(conf, desc_a, desc_p, pair_ids, groups, kpts_p=None, bank=None, image_ids=None):
        result = original(conf, desc_a, desc_p, pair_ids, groups, kpts_p, bank, image_ids)
        seen.update(pair=pair_ids, groups=groups, kpts=kpts_p, photos=image_ids, negatives=result)
        return result

    monkeypatch.setattr(r2d2_training, "select_negatives", spy)
    batch = default_collate([task.dataset[(0, i)] for i in (0, 1, 4)])  # photo 4 is a tum_freiburg frame
    loss, metrics = task.loss(batch, 0)
    loss.backward()
    mask = seen["negatives"].mask
    pair, groups, kpts = seen["pair"], seen["groups"], seen["kpts"]
    i, j = mask.nonzero(as_tuple=True)
    assert len(i) > 0 and metrics["anchors"] == float(len(pair))
    if mode == "in_pair":
        assert (pair[i] == pair[j]).all() and ((kpts[i] - kpts[j]).norm(dim=1) >= 10.0).all()
    else:
        assert (pair[i] != pair[j]).all() and (groups[i] != groups[j]).all()
    assert (mask.sum(1) <= 8).all()  # top_k
    if mode == "global":
        assert task.bank is not None and task.bank.last_refresh == 0 and metrics["extra_negatives_per_anchor"] > 0
        neighbours = task.bank.neighbours(seen["photos"].cpu())
        pool_groups = torch.as_tensor(task.dataset.pool.groups)
        own = pool_groups[seen["photos"].cpu()]
        assert ((neighbours < 0) | (pool_groups[neighbours.clamp(min=0)] != own[:, None])).all()
    for term in ("ap_loss", "reliability_loss", "cosim_loss", "peaky_loss"):
        assert math.isfinite(metrics[term])
    assert 0.0 <= metrics["ap"] <= 1.0
    grads = {name: p.grad for name, p in task.model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["clf.weight"].abs().sum() > 0 and grads["sal.weight"].abs().sum() > 0


def test_training_steps_on_one_batch_lower_the_loss(photos: Path, tmp_path: Path):
    torch.manual_seed(0)
    task = HNDescR2D2Task(hndesc_r2d2_train_conf(tiny_conf(photos, tmp_path, crop=64)))
    batch = default_collate([task.dataset[(0, i)] for i in (0, 1, 4)])
    optimizer = torch.optim.Adam(task.model.parameters(), lr=1e-3)
    losses = []
    for step in range(8):
        loss, metrics = task.loss(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_tiny_training_run_gives_weights_the_extractor_loads(photos: Path, tmp_path: Path, sacre_coeur: Path):
    out = tmp_path / "run"
    conf = tiny_conf(photos, out, crop=96)
    conf["data"]["val_fraction"] = 0.4
    conf["train"]["batch_size"] = 2
    conf["train"]["validate_every"] = 6
    metrics = train_hndesc_r2d2(conf)
    assert metrics["completed"] and metrics["step"] == 6
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 6
    for row in rows:
        for term in ("ap_loss", "reliability_loss", "cosim_loss", "peaky_loss", "loss"):
            assert math.isfinite(float(row[term]))
    val = metrics["val"]  # two of the six photos are held out (hash of their group keys)
    assert val["pairs"] == 2.0 and 0 <= val["ap"] <= 1 and 0 <= val["mma"] <= 1 and 0 <= val["repeatability"] <= 1
    assert val["matches"] > 0 and math.isfinite(val["cosim"]) and math.isfinite(val["peaky"])
    ckpt = torch.load(out / "model.pt", weights_only=True)
    meta = ckpt["meta"]
    assert meta["arch"] == "r2d2" and meta["variant"] == "slim" and meta["mchan"] == 2
    assert meta["model"] == "hndesc-r2d2"
    assert meta["step"] == 6 and meta["train_photos"] == 4 and meta["config"]["data"]["crop"] == 96
    extractor = R2D2Extractor(
        {"reliability_threshold": 0.0, "repeatability_threshold": 0.0, "max_keypoints": 100, "max_size": 256},
        weights=out / "model.pt",
    )
    assert extractor.net.variant == "slim"
    rgb = read_image(sorted(sacre_coeur.glob("*.jpg"))[0])
    feats = extractor(torch.from_numpy(resize_max(rgb, 256)).permute(2, 0, 1)[None].contiguous())
    n = feats["keypoints"].shape[0]
    assert 0 < n <= 100 and feats["descriptors"].shape == (128, n)
    assert torch.allclose(feats["descriptors"].norm(dim=0), torch.ones(n), atol=1e-4)


@pytest.mark.skipif("hndesc-r2d2" not in read_registry(), reason="no shipped hndesc-r2d2 weights")
def test_slim_config_is_the_recipe_of_the_shipped_weights():
    """`hloc-hndesc train --config hndesc_r2d2` retrains the shipped model: its merged config
    equals the one stored in the shipped checkpoint, apart from where the run wrote to and
    trainer options added since, which must be off (None) by default."""
    shipped = torch.load(shipped_weights("hndesc-r2d2"), map_location="cpu", weights_only=True)["meta"]["config"]
    conf = OmegaConf.to_container(hndesc_r2d2_train_conf(load_train_config("hndesc_r2d2")), resolve=True)
    for c in (shipped, conf):
        del c["train"]["output_dir"]
    added = set(conf["train"]) - set(shipped["train"])
    assert added <= {"init_weights"} and all(conf["train"].pop(k) is None for k in added)
    assert conf == shipped


#: configs/train/hndesc_r2d2.yaml at 48ae2d8, the base config the published ablation ran with
ABLATION_BASE_AT_48AE2D8 = """
task: hndesc_r2d2
data: {image_dirs: [../shared/data/train_natural], crop: 192}
model: {variant: slim}
mining: {mode: in_batch}
train:
  steps: 2000
  batch_size: 4
  lr: 1e-4
  weight_decay: 5e-4
  scheduler: {name: cosine, warmup: 100, min_factor: 0.05}
  checkpoint_every: 100
  log_every: 10
  validate_every: 250
  output_dir: outputs/train/hndesc_r2d2
"""
#: the overrides of the published ablation command (BENCHMARKS.md, "HNDesc-R2D2 ablation")
ABLATION_OVERRIDES = [
    "data.crop=128", "data.homography.difficulty=0.5", "train.batch_size=4", "train.lr=3e-4",
    "train.scheduler={name: cosine, warmup: 10, min_factor: 0.05}", "train.num_workers=0", "train.amp=none",
    "train.validate_every=100", "train.log_every=10", "train.checkpoint_every=50", "train.progress=false",
    "mining.bank.refresh_every=50", "train.steps=100",
]


def test_ablation_config_pins_the_published_ablation_recipe(tmp_path):
    """benchmarks.r2d2_ablation's base config is its own: the published command on it trains
    exactly what it trained (base config of 48ae2d8 + the command's overrides), whatever the
    shipped recipe becomes."""
    old = tmp_path / "hndesc_r2d2_48ae2d8.yaml"
    old.write_text(ABLATION_BASE_AT_48AE2D8)
    ran = OmegaConf.to_container(hndesc_r2d2_train_conf(load_train_config(str(old), ABLATION_OVERRIDES)))
    pinned = OmegaConf.to_container(hndesc_r2d2_train_conf(load_train_config("hndesc_r2d2_ablation")))
    assert pinned == ran
    rerun = OmegaConf.to_container(hndesc_r2d2_train_conf(load_train_config("hndesc_r2d2_ablation", ABLATION_OVERRIDES)))
    assert rerun == pinned
    shipped = OmegaConf.to_container(hndesc_r2d2_train_conf(load_train_config("hndesc_r2d2", ABLATION_OVERRIDES)))
    assert shipped["data"]["stylize_probability"] != pinned["data"]["stylize_probability"]  # why it is pinned


def test_config_checks_and_shipped_configs():
    assert TASKS["hndesc_r2d2"] == ("hloc_hndesc.training.r2d2", "train_hndesc_r2d2")
    slim = hndesc_r2d2_train_conf(load_train_config("hndesc_r2d2"))
    full = hndesc_r2d2_train_conf(load_train_config("hndesc_r2d2_full"))
    assert slim.model.variant == "slim" and slim.mining.mode == "in_pair" and slim.data.crop == 160
    assert full.model.variant == "full" and full.loss.bins == 20 and full.loss.kappa == 0.5
    assert full.mining.mode == "in_pair" and full.data.homography.difficulty == 0.5
    with pytest.raises(ConfigError, match="even"):
        hndesc_r2d2_train_conf({"data": {"crop": 95}})
    with pytest.raises(ConfigError, match="variant"):
        hndesc_r2d2_train_conf({"model": {"variant": "tiny"}})
    with pytest.raises(ConfigError):
        hndesc_r2d2_train_conf({"loss": {"weight": {"ap": 1.0}}})
