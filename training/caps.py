"""HNDesc-CAPS trained self-supervised: the AP loss on coarse and fine descriptors at DoG keypoints.

Each training item is one synthetic pair (:class:`DoGPairDataset`: a
:class:`~hloc_hndesc.training.data.pairs.PairDataset` item plus the DoG keypoints of image0,
detected in the data workers exactly as the ``hndesc-caps`` extractor detects them,
:func:`~hloc_hndesc.features.caps.detect_caps_keypoints`). Both images of every pair go
through the CAPS-family network (:class:`~hloc_hndesc.models.caps.CAPSNet`, from scratch) in
one batch; then

* anchors: image0's DoG keypoints (the ``keypoints.max_keypoints`` strongest) whose
  homography image lies at least ``keypoints.border`` px inside image1 (and in front of the
  camera); their positives are those warped points in image1;
* descriptors: the coarse (stride 16) and fine (stride 4) maps sampled at the anchors in
  image0 and at the positives in image1 by :func:`~hloc_hndesc.features.caps.sample_caps`,
  the extractor's own sampling (``model.sampling``), each level L2-normalised;
* negatives, per level: the configured mining mode
  (:func:`~hloc_hndesc.training.mining.select_negatives`): ``in_pair`` the other keypoints of
  the pair farther than the exclusion radius (``mining.exclusion_radius`` px for the fine
  level, at least ``coarse_exclusion_radius`` px for the coarse one, whose 16 px cells make
  closer keypoints near-duplicates), ``in_batch`` the keypoints of the other pairs of other
  groups, ``global`` those plus one :class:`~hloc_hndesc.training.mining.GlobalNegativeBank` per
  level; the banks share the global descriptors: HNDesc's "selfgd" (the model's own extractor
  descriptors at the DoG keypoints of every training photo, pooled) or "gd" (an hloc
  global-features h5, ``mining.bank.source: external``);
* loss: ``sum_level loss.weights[level] * (1 - AP_level)``
  (:func:`~hloc_hndesc.training.losses.ap_loss`, ``loss.bins`` bins on ``loss.ap_range``): one AP
  loss per level, summed (HNDesc's CAPS variant replaces CAPS's epipolar losses by the AP loss
  of the descriptors the extractor concatenates).

The extractor's descriptor is both unit levels concatenated and renormalised
(:func:`~hloc_hndesc.features.caps.join_caps`): the validation measures that one. Coordinates:
x, y with pixel centres at integers, ``[x1, y1, 1] ~ H_0to1 [x0, y0, 1]``.

BatchNorm: the network normalises over the 2 x ``batch_size`` crops of an update; below ~4
pairs per process the statistics get noisy (the CPU smoke settings of
``configs/train/hndesc_caps.yaml`` still train, slowly).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.evaluation.splits import check_training_dirs
from hloc_hndesc.features.base import imagenet_normalize
from hloc_hndesc.features.caps import detect_caps_keypoints, join_caps, sample_caps
from hloc_hndesc.features.sampling import CONVENTIONS
from hloc_hndesc.io import resize_max
from hloc_hndesc.models.caps import CAPSNet

from .data.pairs import PAIR_DEFAULTS, PairDataset
from .losses import ap_candidates, ap_loss, quantized_ap
from .mining import MINING_DEFAULTS, GlobalNegativeBank, mining_conf, pooled_global_descriptors, select_negatives
from .r2d2 import mutual_nearest_neighbours, warp_points_batch
from .trainer import TRAIN_DEFAULTS, seed_everything, train

LEVELS = ("coarse", "fine")

HNDESC_CAPS_TRAIN_DEFAULTS: dict[str, Any] = {
    "task": "hndesc_caps",
    # in-plane rotation within ±45°: upright DoG keypoints and CAPS descriptors have no orientation;
    # difficulty 0.5 (±22.5°, zoom <= 1.41x, tilt <= 30°): at full difficulty a 1200-update CPU run
    # stayed at random-initialisation level on real pairs, at 0.5 it did not (BENCHMARKS.md, block
    # "HNDesc-CAPS synthetic-homography difficulty at 1200 updates")
    "data": {
        **PAIR_DEFAULTS,
        "crop": 256,
        "homography": {**PAIR_DEFAULTS["homography"], "rotation": 45.0, "difficulty": 0.5},
    },
    # the hndesc-caps extractor's defaults (its conf must repeat any change, see checkpoint_meta)
    "model": {
        "backbone": "resnet18",
        "coarse_dim": 128,
        "fine_dim": 128,
        "decoder_channels": [128, 128],
        "sampling": "corner",  # corner | receptive (features/sampling.py)
    },
    "keypoints": {
        "max_keypoints": 512,  # strongest DoG keypoints of image0 per pair (fixed-size, padded)
        "dog": None,  # options of features/dog.detect_dog (None: the extractor's defaults)
        "upright": True,  # as the extractor: one keypoint per location
        "border": 4,  # px: positives stay this far inside image1
    },
    "loss": {
        "bins": 20,  # quantisation of the AP
        "ap_range": [0.0, 1.0],  # similarity range of the bins (R2D2's and HNDesc's)
        "weights": {"coarse": 1.0, "fine": 1.0},
    },
    "mining": dict(MINING_DEFAULTS),
    # in_pair mining and validation AP of the coarse level: exclusion radius at least this (px)
    "coarse_exclusion_radius": 24.0,
    # global mining: photos described at this longer side, at their locals_per_image best DoG keypoints
    "bank_image_size": 256,
    "validation": {
        "pairs": 16,  # held-out synthetic pairs (epoch 0 of the validation split)
        "threshold": 3.0,  # px, MMA of mutual nearest neighbours at DoG keypoints of both images
    },
    "train": {
        **TRAIN_DEFAULTS, "batch_size": 8, "lr": 1e-4, "weight_decay": 1e-5,
        "output_dir": "outputs/train/hndesc_caps",
    },
}


def hndesc_caps_train_conf(conf: Mapping[str, Any] | DictConfig | None) -> DictConfig:
    """:data:`HNDESC_CAPS_TRAIN_DEFAULTS` merged strictly with a training config, and checked."""
    merged = merge_conf(HNDESC_CAPS_TRAIN_DEFAULTS, conf, "hndesc_caps training")
    crop, kc, lc = int(merged.data.crop), merged.keypoints, merged.loss
    if crop % 16:
        raise ConfigError(f"hndesc_caps: data.crop must be a multiple of 16 (the coarse stride), got {crop}")
    if merged.model.sampling not in CONVENTIONS:
        raise ConfigError(f"hndesc_caps: model.sampling={merged.model.sampling!r}, expected one of {CONVENTIONS}")
    if len(merged.model.decoder_channels) != 2:
        raise ConfigError(
            f"hndesc_caps: model.decoder_channels needs two widths, got {list(merged.model.decoder_channels)}"
        )
    if int(kc.max_keypoints) < 2 or not 0 <= int(kc.border) < crop // 2:
        raise ConfigError(f"hndesc_caps: keypoints need max_keypoints >= 2 and 0 <= border < crop / 2, got {dict(kc)}")
    if int(lc.bins) < 2 or len(lc.ap_range) != 2 or not float(lc.ap_range[1]) > float(lc.ap_range[0]):
        raise ConfigError(f"hndesc_caps: loss needs bins >= 2 and ap_range [low, high], got {lc.bins}, {lc.ap_range}")
    if any(float(lc.weights[k]) < 0 for k in LEVELS) or not any(float(lc.weights[k]) > 0 for k in LEVELS):
        raise ConfigError(f"hndesc_caps: loss weights must be >= 0 and not all 0, got {dict(lc.weights)}")
    if float(merged.coarse_exclusion_radius) < 0:
        raise ConfigError(f"hndesc_caps: coarse_exclusion_radius must be >= 0, got {merged.coarse_exclusion_radius}")
    mining_conf(merged.mining)
    return merged


def level_mining_confs(conf: DictConfig) -> dict[str, DictConfig]:
    """The checked mining conf of each level: the coarse one with the larger exclusion radius."""
    fine = mining_conf(conf.mining)
    coarse = OmegaConf.to_container(conf.mining, resolve=True)
    coarse["exclusion_radius"] = max(float(fine.exclusion_radius), float(conf.coarse_exclusion_radius))
    return {"coarse": mining_conf(coarse), "fine": fine}


class DoGPairDataset(PairDataset):
    """Synthetic pairs whose items also hold image0's DoG keypoints (as the extractor detects them).

    Adds ``keypoints0`` (K, 2) float32 (hloc convention; zero-padded) and ``keypoints0_valid``
    (K,) bool, K = ``keypoints.max_keypoints`` (the strongest by DoG score).
    """

    def __init__(
        self, data: Mapping[str, Any] | DictConfig | None, keypoints: DictConfig, split: str = "train"
    ) -> None:
        super().__init__(data, split)
        self.keypoints = keypoints

    def detect(self, image: torch.Tensor) -> torch.Tensor:
        """(n, 2) DoG keypoints of one RGB (3, H, W) image in [0, 1], n <= ``max_keypoints``."""
        kc = self.keypoints
        dog = OmegaConf.to_container(kc.dog) if kc.dog is not None else None
        return detect_caps_keypoints(image[None], dog, int(kc.max_keypoints), bool(kc.upright))["keypoints"]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        item = super().__getitem__(key)
        found = self.detect(item["image0"])
        k = int(self.keypoints.max_keypoints)
        kpts = torch.zeros(k, 2, dtype=torch.float32)
        kpts[: len(found)] = found
        valid = torch.zeros(k, dtype=torch.bool)
        valid[: len(found)] = True
        item["keypoints0"], item["keypoints0_valid"] = kpts, valid
        return item


class HNDescCAPSTask:
    """The HNDesc-CAPS training task for :func:`~hloc_hndesc.training.trainer.train` (see the module doc)."""

    def __init__(self, conf: DictConfig) -> None:
        self.conf = conf
        mc = conf.model
        self.model = CAPSNet(str(mc.backbone), int(mc.coarse_dim), int(mc.fine_dim), tuple(mc.decoder_channels))
        self.dataset = DoGPairDataset(conf.data, conf.keypoints, "train")
        self.mining = level_mining_confs(conf)
        self.banks: dict[str, GlobalNegativeBank] = {}
        if self.mining["fine"].mode == "global":
            pool = self.dataset.pool
            self.banks = {
                level: GlobalNegativeBank(torch.as_tensor(pool.groups), self.mining[level], names=list(pool.names))
                for level in LEVELS
            }
        self._bank_photos: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._val: list[dict[str, Any]] | None = None
        self.device = torch.device("cpu")

    def setup(self, context: Any) -> None:
        """Called by the trainer once the model is on its device."""
        self.device = context.device

    # -- correspondences ------------------------------------------------------------------

    def sample(
        self, maps: Sequence[torch.Tensor], keypoints: torch.Tensor, image_size: Sequence[int]
    ) -> list[torch.Tensor]:
        """Unit descriptors (B, N, D_level) of each level's map (B, D_level, h, w) at keypoints (B, N, 2)."""
        parts = sample_caps([m.float() for m in maps], keypoints, image_size, str(self.conf.model.sampling))
        return [p.transpose(1, 2) for p in parts]

    def describe(self, images: torch.Tensor, keypoints: torch.Tensor) -> list[torch.Tensor]:
        """Unit descriptors (B, N, D_level) of each level at keypoints (B, N, 2) of images (B, 3, H, W) in [0, 1]."""
        return self.sample(self.model(imagenet_normalize(images)), keypoints, images.shape[-2:])

    def correspondences(
        self, batch: Mapping[str, Any], maps: Sequence[torch.Tensor] | None = None
    ) -> dict[str, Any]:
        """Anchors (image0's DoG keypoints) and their positives in image1 (see the module doc).

        ``maps``: the network's maps of ``cat([image0, image1])`` if already computed. Returns
        ``valid`` (B, K) and, for the N valid anchors, ``kpts0``/``kpts1`` (N, 2), ``pair`` (N,)
        batch index, ``desc_a``/``desc_p``: per level (N, D_level) unit.
        """
        image0, image1 = batch["image0"], batch["image1"]
        b, k = batch["keypoints0"].shape[:2]
        h, w = image1.shape[-2:]
        border = float(self.conf.keypoints.border)
        kp0 = batch["keypoints0"].float()
        kp1, in_front = warp_points_batch(batch["H_0to1"], kp0)
        valid = (
            batch["keypoints0_valid"] & in_front
            & (kp1[..., 0] >= border) & (kp1[..., 0] <= w - 1 - border)
            & (kp1[..., 1] >= border) & (kp1[..., 1] <= h - 1 - border)
        )
        # both images in one batch (BatchNorm statistics over the whole update)
        if maps is None:
            maps = self.model(imagenet_normalize(torch.cat([image0, image1])))
        descs = self.sample(maps, torch.cat([kp0, kp1]), image0.shape[-2:])
        pair = torch.arange(b, device=kp0.device)[:, None].expand(b, k)[valid]
        return {
            "valid": valid, "kpts0": kp0[valid], "kpts1": kp1[valid], "pair": pair,
            "desc_a": {lvl: d[:b][valid] for lvl, d in zip(LEVELS, descs)},
            "desc_p": {lvl: d[b:][valid] for lvl, d in zip(LEVELS, descs)},
        }

    # -- the loss ---------------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the coarse and fine AP losses of a batch of pairs.

        The global banks are first built here (not in ``setup``) so that a resumed run uses the
        restored banks instead of rebuilding them.
        """
        if self.banks and any(bank.last_refresh is None for bank in self.banks.values()):
            self.refresh_banks(step)
        corr = self.correspondences(batch)
        # the losses run in float32 even under the trainer's autocast (similarities near 1)
        with torch.autocast(batch["image0"].device.type, enabled=False):
            return self._losses(corr, batch)

    def _losses(self, corr: dict[str, Any], batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        lc = self.conf.loss
        n = int(corr["pair"].shape[0])
        device = corr["pair"].device
        metrics: dict[str, float] = {
            "anchors": float(n), "stylized_pairs": float(torch.as_tensor(batch["stylized"]).float().mean()),
        }
        total = sum(d.sum() * 0.0 for d in corr["desc_a"].values())  # attached to the graph
        if n < 2:
            return total, metrics
        groups = torch.as_tensor(batch["group"], device=device)[corr["pair"]]
        photos = torch.as_tensor(batch["index"], device=device)[corr["pair"]] % len(self.dataset.pool)
        for level in LEVELS:
            weight = float(lc.weights[level])
            desc_a, desc_p = corr["desc_a"][level].float(), corr["desc_p"][level].float()
            negatives = select_negatives(
                self.mining[level], desc_a, desc_p, corr["pair"], groups, corr["kpts1"],
                bank=self.banks.get(level), image_ids=photos,
            )
            sim, pos, usable = ap_candidates(desc_a, desc_p, **negatives.loss_kwargs())
            term, ap = ap_loss(sim, pos, usable, int(lc.bins), float(lc.ap_range[0]), float(lc.ap_range[1]))
            if weight > 0:
                total = total + weight * term
            metrics[f"{level}_ap_loss"] = float(term.detach())
            metrics.update({f"{level}_{k}": v for k, v in negatives.stats.items()})
            with torch.no_grad():
                metrics[f"{level}_ap"] = float(ap.mean())
                metrics[f"{level}_pos_similarity"] = float(sim[:, 0].mean())
                if sim.shape[1] > 1:
                    negs = torch.where(usable[:, 1:], sim[:, 1:], torch.full_like(sim[:, 1:], -2.0))
                    metrics[f"{level}_hardest_neg_similarity"] = float(negs.amax(dim=1).mean())
        return total, metrics

    # -- global banks -------------------------------------------------------------------------

    def on_step_end(self, step: int) -> None:
        """Refresh the global banks when they are due."""
        if self.banks and self.banks["fine"].needs_refresh(step):
            self.refresh_banks(step)

    def bank_photos(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every training photo at ``bank_image_size`` (uint8 (3, h, w)) with its best DoG keypoints (computed once)."""
        if self._bank_photos is None:
            pool, size = self.dataset.pool, int(self.conf.bank_image_size)
            num = int(self.mining["fine"].bank.locals_per_image)
            kc = self.conf.keypoints
            dog = OmegaConf.to_container(kc.dog) if kc.dog is not None else None
            photos = []
            for i in tqdm(range(len(pool)), desc="bank photos", leave=False):
                image = torch.from_numpy(resize_max(pool.load(i), size)).permute(2, 0, 1).contiguous()
                kpts = detect_caps_keypoints(image[None].float() / 255.0, dog, num, bool(kc.upright))["keypoints"]
                photos.append((image, kpts))
            self._bank_photos = photos
        return self._bank_photos

    @torch.no_grad()
    def describe_photo(self, image: torch.Tensor, keypoints: torch.Tensor) -> list[torch.Tensor]:
        """Coarse, fine and joint (extractor) unit descriptors (n, D) of one uint8 (3, h, w) photo in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            x = image[None].to(self.device, torch.float32) / 255.0
            parts = [p[0] for p in self.describe(x, keypoints[None].to(self.device))]
        finally:
            self.model.train(was_training)
        return [*parts, join_caps(parts, dim=1)]

    @torch.no_grad()
    def refresh_banks(self, step: int) -> dict[str, float]:
        """Describe every training photo with the current model and refresh both banks."""
        start = time.perf_counter()
        per_level: dict[str, list[torch.Tensor]] = {level: [] for level in LEVELS}
        joint: list[torch.Tensor] = []
        for image, kpts in tqdm(self.bank_photos(), desc="bank refresh", leave=False):
            coarse, fine, both = self.describe_photo(image, kpts)
            per_level["coarse"].append(coarse)
            per_level["fine"].append(fine)
            joint.append(both)
        external = self.mining["fine"].bank.source == "external"
        global_desc = None if external else pooled_global_descriptors(joint)
        stats: dict[str, float] = {}
        for level in LEVELS:
            refreshed = self.banks[level].refresh(global_desc, per_level[level], step)
            stats.update({f"{level}_{k}": v for k, v in refreshed.items()})
        stats["describe_seconds"] = time.perf_counter() - start
        logger.info("global banks refreshed at step %d in %.1f s", step, stats["describe_seconds"])
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Task state to checkpoint: the global banks."""
        return {"banks": {level: bank.state_dict() for level, bank in self.banks.items()}} if self.banks else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for level, saved in state.get("banks", {}).items():
            if level in self.banks:
                self.banks[level].load_state_dict(saved)

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the final ``model.pt`` records besides the weights: the ``hndesc-caps`` extractor conf
        (``backbone``, ``decoder_channels``, ``coarse_dim``, ``fine_dim``, ``sampling``, the DoG
        settings; the extractor builds its network from its conf, whose defaults these are unless
        the training config changed them) and the training set-up."""
        mc, kc = self.conf.model, self.conf.keypoints
        return {
            "arch": "caps",
            "model": "hndesc-caps",
            "backbone": str(mc.backbone),
            "decoder_channels": [int(c) for c in mc.decoder_channels],
            "coarse_dim": int(mc.coarse_dim),
            "fine_dim": int(mc.fine_dim),
            "sampling": str(mc.sampling),
            "detector": "dog",
            "dog": OmegaConf.to_container(kc.dog) if kc.dog is not None else None,
            "upright": bool(kc.upright),
            "config": OmegaConf.to_container(self.conf, resolve=True),
            "data_dirs": [str(d) for d in self.conf.data.image_dirs],
            "train_photos": len(self.dataset.pool),
        }

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Held-out synthetic pairs (validation split, epoch 0; none if the split is empty).

        ``ap`` (the extractor's joint descriptor), ``coarse_ap``, ``fine_ap``: mean quantised AP
        of image0's DoG keypoints against every other keypoint of the pair farther than the
        level's exclusion radius (in-pair, no top-k: independent of the mining mode);
        ``mma``: share of the mutual nearest neighbours between the DoG keypoints of both images
        (image1's detected as the extractor would) within ``validation.threshold`` px of the
        homography (mean over pairs), ``matches`` their number.
        """
        if float(self.conf.data.val_fraction) <= 0:
            return {}
        if self._val is None:
            val = DoGPairDataset(self.conf.data, self.conf.keypoints, "val")
            items = [val[(0, i)] for i in range(min(int(self.conf.validation.pairs), len(val)))]
            for item in items:
                item["keypoints1"] = val.detect(item["image1"])
            self._val = items
        if not self._val:
            return {}
        lc, thr = self.conf.loss, float(self.conf.validation.threshold)
        radius = {level: float(self.mining[level].exclusion_radius) for level in LEVELS}
        radius["joint"] = radius["fine"]
        rows: dict[str, list[float]] = {k: [] for k in ("ap", "coarse_ap", "fine_ap", "mma", "matches")}
        for item in self._val:
            batch = {
                k: (v[None].to(self.device) if isinstance(v, torch.Tensor) else [v]) for k, v in item.items()
                if k != "keypoints1"
            }
            maps = self.model(imagenet_normalize(torch.cat([batch["image0"], batch["image1"]])))
            corr = self.correspondences(batch, maps)
            if corr["pair"].shape[0] >= 2:
                kp = corr["kpts1"].double()
                dist = torch.cdist(kp, kp)
                a = {**corr["desc_a"], "joint": join_caps([corr["desc_a"][lvl] for lvl in LEVELS])}
                p = {**corr["desc_p"], "joint": join_caps([corr["desc_p"][lvl] for lvl in LEVELS])}
                for level, key in (("joint", "ap"), ("coarse", "coarse_ap"), ("fine", "fine_ap")):
                    far = dist >= radius[level]
                    far.fill_diagonal_(False)
                    sim, pos, valid = ap_candidates(a[level], p[level], neg_mask=far)
                    ap = quantized_ap(sim, pos, valid, int(lc.bins), *map(float, lc.ap_range))
                    rows[key].append(float(ap.mean()))
            kp0 = item["keypoints0"][item["keypoints0_valid"]].to(self.device)
            kp1 = item["keypoints1"].to(self.device)
            if len(kp0) and len(kp1):
                size = batch["image0"].shape[-2:]
                d0 = join_caps([d[0] for d in self.sample([m[:1] for m in maps], kp0[None], size)], dim=1)
                d1 = join_caps([d[0] for d in self.sample([m[1:] for m in maps], kp1[None], size)], dim=1)
                matches = mutual_nearest_neighbours(d0, d1)
                warped, in_front = warp_points_batch(batch["H_0to1"], kp0)
                if len(matches):
                    err = (warped[0][matches[:, 0]] - kp1[matches[:, 1]]).norm(dim=1)
                    rows["mma"].append(float(((err <= thr) & in_front[0][matches[:, 0]]).float().mean()))
                rows["matches"].append(float(len(matches)))
        out = {k: sum(v) / len(v) for k, v in rows.items() if v}
        out["pairs"] = float(len(self._val))
        return out


def train_hndesc_caps(conf: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """Train HNDesc-CAPS from a training config (``hloc-hndesc train --config hndesc_caps``)."""
    conf = hndesc_caps_train_conf(conf)
    check_training_dirs(conf.data.image_dirs)
    seed_everything(int(conf.train.seed))  # the initial weights of a fresh run
    task = HNDescCAPSTask(conf)
    logger.info(
        "HNDesc-CAPS (%s): %d training pairs per epoch of %d px crops, <= %d DoG keypoints, mining %s, batch %d pairs",
        conf.model.backbone, len(task.dataset), conf.data.crop, conf.keypoints.max_keypoints,
        task.mining["fine"].mode, conf.train.batch_size,
    )
    return train(task, conf.train)
