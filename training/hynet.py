"""HyNet trained self-supervised: DoG patches of synthetic pairs, HyNet loss, selectable mining.

Each item of :class:`HyNetPatchDataset` is one synthetic pair (:class:`PairDataset`): DoG
keypoints of the source crop (pycolmap, the extractor's options), overlap-suppressed, frames
inside the crop (:func:`~hloc_hndesc.evaluation.patches.select_reference_keypoints`); each
frame is carried into the target by the homography's local affine map (centre warped, shape
times the Jacobian), optionally jittered there as HPatches' easy/hard patches are
(``patches.jitter``, detector noise; drawn from ``(seed, epoch, index)``), and both patches are cut with kornia's ``extract_patches_from_pyramid``,
exactly as the HyNet extractor cuts them at test time (32 x 32 grey patches, side
``mr_size`` x sigma). Frames that leave the target are dropped; each pair gives at most
``patches.per_pair`` positives, padded to that count with a ``valid`` mask so that batches
collate. A batch of B pairs is up to ``B * per_pair`` patch pairs (the paper's 1024 with
16 x 64).

:class:`HyNetTask` (for :func:`~hloc_hndesc.training.trainer.train`) computes the HyNet loss
(:func:`~hloc_hndesc.training.losses.hynet_loss`) with negatives chosen by the configured
mining mode (:mod:`~hloc_hndesc.training.mining`). For ``global`` mining the bank is refreshed
every ``mining.bank.refresh_every`` updates with the model's own descriptors of DoG patches of
every training photo (HNDesc's "selfgd"; the patches are cut once and kept as uint8) or with
an external global descriptor file (``source: external``, e.g. HOW; "gd").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.feature import extract_patches_from_pyramid
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset
from tqdm import tqdm

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.evaluation.patches import (
    JITTER_LEVELS,
    cut_target_patches,
    fpr_at_recall,
    sample_jitter,
    select_reference_keypoints,
)
from hloc_hndesc.evaluation.splits import check_training_dirs
from hloc_hndesc.features.dog import DEFAULT_DOG_OPTIONS
from hloc_hndesc.io import image_to_tensor
from hloc_hndesc.models.hynet import PATCH_SIZE, build_hynet

from .data.homography import warp_points
from .data.pairs import PAIR_DEFAULTS, PairDataset
from .losses import hynet_loss
from .mining import MINING_DEFAULTS, GlobalNegativeBank, mining_conf, select_negatives
from .trainer import TRAIN_DEFAULTS, train

HYNET_TRAIN_DEFAULTS: dict[str, Any] = {
    "task": "hynet",
    "data": dict(PAIR_DEFAULTS),
    "model": {"drop_rate": 0.3},
    "patches": {
        "per_pair": 64,  # positives per synthetic pair (the strongest DoG frames)
        "mr_size": 12.0,  # patch side in DoG sigmas, as the extractor
        "max_overlap": 0.5,  # disk IoU above which the weaker of two frames is dropped
        # affine jitter of the target frames, as HPatches' easy/hard patches (detector noise):
        # none | easy | hard (evaluation.patches.JITTER_LEVELS), drawn per item
        "jitter": "easy",
        "dog": dict(DEFAULT_DOG_OPTIONS),
    },
    "loss": {"margin": 1.2, "alpha": 2.0, "gamma": 0.1},
    "mining": dict(MINING_DEFAULTS),
    "bank_patches_per_image": 256,  # DoG patches per training photo for the global bank
    "validation": {"pairs": 64},  # held-out synthetic pairs (epoch 0 of the validation slice)
    "train": {**TRAIN_DEFAULTS, "batch_size": 16, "lr": 1e-3, "output_dir": "outputs/train/hynet"},
}


def hynet_train_conf(conf: Mapping[str, Any] | DictConfig | None) -> DictConfig:
    """:data:`HYNET_TRAIN_DEFAULTS` merged strictly with a training config."""
    return merge_conf(HYNET_TRAIN_DEFAULTS, conf, "hynet training")


def grey(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB -> (1, 1, H, W) grey with the weights of the test-time image reader."""
    return rgb_to_grayscale(image[None]).contiguous()


class HyNetPatchDataset(Dataset):
    """Patch pairs of synthetic pairs; see the module docstring."""

    def __init__(self, pairs: PairDataset, conf: Mapping[str, Any] | DictConfig) -> None:
        self.pairs = pairs
        self.conf = conf
        self.per_pair = int(conf["per_pair"])
        self.jitter = str(conf["jitter"])
        if self.jitter not in JITTER_LEVELS:
            raise ConfigError(f"hynet patches: jitter={self.jitter!r}, expected one of {sorted(JITTER_LEVELS)}")
        self.dog = OmegaConf.to_container(conf["dog"]) if isinstance(conf["dog"], DictConfig) else dict(conf["dog"])

    @classmethod
    def from_conf(cls, conf: DictConfig, split: str = "train") -> HyNetPatchDataset:
        """Patch pairs of the ``split`` photos of a merged HyNet training config."""
        return cls(PairDataset(conf.data, split), conf.patches)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        item = self.pairs[key]
        g0, g1 = grey(item["image0"]), grey(item["image1"])
        ref = select_reference_keypoints(
            g0, self.per_pair, float(self.conf["mr_size"]), self.dog, float(self.conf["max_overlap"])
        )
        h = item["H_0to1"].numpy()
        epoch, index = (0, key) if not isinstance(key, (tuple, list)) else key
        rng = np.random.default_rng([self.pairs.seed, int(epoch), int(index), 1])
        jitter = sample_jitter(ref["lafs"].shape[1], self.jitter, rng)
        size0 = (g0.shape[-1], g0.shape[-2])
        patches1, keep = cut_target_patches(g1, ref["lafs"], h, PATCH_SIZE, jitter, size0)
        k, n = self.per_pair, len(keep)
        out0 = torch.zeros(k, 1, PATCH_SIZE, PATCH_SIZE)
        out1 = torch.zeros(k, 1, PATCH_SIZE, PATCH_SIZE)
        kpts1 = torch.zeros(k, 2)
        if n:
            out0[:n] = extract_patches_from_pyramid(g0, ref["lafs"][:, keep], PS=PATCH_SIZE)[0]
            out1[:n] = patches1
            kpts1[:n] = torch.as_tensor(warp_points(h, ref["keypoints"][keep].double().numpy()), dtype=torch.float32)
        valid = torch.arange(k) < n
        photo = item["index"] % len(self.pairs.pool)
        return {
            "patches0": out0, "patches1": out1, "kpts1": kpts1, "valid": valid,
            "group": item["group"], "photo": photo, "stylized": item["stylized"],
        }


class HyNetTask:
    """The HyNet training task for :func:`~hloc_hndesc.training.trainer.train`."""

    def __init__(self, conf: DictConfig) -> None:
        self.conf = conf
        self.model = build_hynet(float(conf.model.drop_rate))
        self.dataset = HyNetPatchDataset.from_conf(conf)
        self.mining = mining_conf(conf.mining)
        self.bank: GlobalNegativeBank | None = None
        self._bank_patches: list[torch.Tensor] | None = None
        if self.mining.mode == "global":
            pool = self.dataset.pairs.pool
            self.bank = GlobalNegativeBank(torch.as_tensor(pool.groups), self.mining, names=list(pool.names))
        self._val: list[dict[str, Any]] | None = None
        self.device = torch.device("cpu")

    def setup(self, context: Any) -> None:
        """Called by the trainer once the model is on its device."""
        self.device = context.device

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """HyNet loss of the batch's valid patch pairs with the configured negatives.

        The global bank is first built here (not in ``setup``) so that a resumed run uses the
        restored bank instead of rebuilding it.
        """
        if self.bank is not None and self.bank.last_refresh is None:
            self.refresh_bank(step)
        valid = batch["valid"].flatten()
        b, k = batch["valid"].shape
        p0 = batch["patches0"].flatten(0, 1)[valid]
        p1 = batch["patches1"].flatten(0, 1)[valid]
        desc_a, norm_a = self.model.forward_with_norms(p0)
        desc_p, norm_p = self.model.forward_with_norms(p1)
        pair_ids = torch.arange(b, device=valid.device).repeat_interleave(k)[valid]
        groups = batch["group"].repeat_interleave(k)[valid]
        photos = batch["photo"].repeat_interleave(k)[valid]
        negatives = select_negatives(
            self.mining, desc_a, desc_p, pair_ids, groups, batch["kpts1"].flatten(0, 1)[valid],
            bank=self.bank, image_ids=photos,
        )
        lc = self.conf.loss
        loss, stats = hynet_loss(
            desc_a, desc_p, norm_a, norm_p, margin=lc.margin, alpha=lc.alpha, gamma=lc.gamma,
            **negatives.loss_kwargs(),
        )
        metrics = {key: float(value) for key, value in stats.items()}
        metrics.update(negatives.stats)
        metrics["patches"] = float(valid.sum())
        metrics["stylized_pairs"] = float(batch["stylized"].float().mean())
        return loss, metrics

    def on_step_end(self, step: int) -> None:
        """Refresh the global bank when it is due."""
        if self.bank is not None and self.bank.needs_refresh(step):
            self.refresh_bank(step)

    @torch.no_grad()
    def refresh_bank(self, step: int) -> dict[str, float]:
        """Describe every training photo's DoG patches with the current model and refresh the bank."""
        start = time.perf_counter()
        if self._bank_patches is None:
            self._bank_patches = self._photo_patches()
        was_training = self.model.training
        self.model.eval()
        local = [
            self.model(p.to(self.device, torch.float32) / 255.0) if len(p) else torch.zeros(0, 128, device=self.device)
            for p in tqdm(self._bank_patches, desc="bank refresh", leave=False)
        ]
        self.model.train(was_training)
        global_desc = None
        stats = self.bank.refresh(global_desc, local, step)
        stats["describe_seconds"] = time.perf_counter() - start
        logger.info("global bank refreshed at step %d in %.1f s", step, stats["describe_seconds"])
        return stats

    def _photo_patches(self) -> list[torch.Tensor]:
        pool = self.dataset.pairs.pool
        n = int(self.conf.bank_patches_per_image)
        out = []
        for i in tqdm(range(len(pool)), desc="bank patches", leave=False):
            g = grey(image_to_tensor(pool.load(i))[0])
            ref = select_reference_keypoints(g, n, float(self.conf.patches.mr_size), self.dataset.dog)
            patches = extract_patches_from_pyramid(g, ref["lafs"], PS=PATCH_SIZE)[0] if len(ref["keypoints"]) else torch.zeros(0, 1, PATCH_SIZE, PATCH_SIZE)
            out.append((patches * 255.0).round().clamp(0, 255).to(torch.uint8))
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the final ``model.pt`` records besides the weights (for the model card)."""
        return {
            "model": "hynet",
            "config": OmegaConf.to_container(self.conf, resolve=True),
            "data_dirs": [str(d) for d in self.conf.data.image_dirs],
            "train_photos": len(self.dataset.pairs.pool),
        }

    def state_dict(self) -> dict[str, Any]:
        """Task state to checkpoint: the global bank."""
        return {"bank": self.bank.state_dict()} if self.bank is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.bank is not None and "bank" in state:
            self.bank.load_state_dict(state["bank"])

    def validate(self) -> dict[str, float]:
        """FPR at 95 % recall on held-out pairs (photos of the validation slice only; none if it is
        empty). Negatives are the other patches of the same pair (distinct DoG frames of one
        scene: hard, like HPatches' intra-sequence negatives), not random patches of other photos."""
        if float(self.conf.data.val_fraction) <= 0:
            return {}
        if self._val is None:
            val = HyNetPatchDataset.from_conf(self.conf, "val")
            count = min(int(self.conf.validation.pairs), len(val))
            self._val = [val[(0, i)] for i in range(count)]
        positives, negatives = [], []
        for item in self._val:
            v = item["valid"]
            if int(v.sum()) < 2:
                continue
            a = self.model(item["patches0"][v].to(self.device))
            p = self.model(item["patches1"][v].to(self.device))
            dist = torch.cdist(a, p)
            off = ~torch.eye(len(a), dtype=torch.bool, device=dist.device)
            positives.append(dist.diagonal())
            negatives.append(dist[off])
        if not positives:
            return {}
        positive, negative = torch.cat(positives), torch.cat(negatives)
        return {
            "fpr95": float(fpr_at_recall(positive.cpu().numpy(), negative.cpu().numpy(), 0.95)),
            "pos_distance": float(positive.mean()),
            "patches": float(len(positive)),
        }


def train_hynet(conf: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """Train HyNet from a training config (``hloc-hndesc train --config hynet``)."""
    conf = hynet_train_conf(conf)
    check_training_dirs(conf.data.image_dirs)
    task = HyNetTask(conf)
    logger.info(
        "HyNet: %d training pairs per epoch, mining %s, batch %d pairs x %d patches",
        len(task.dataset), task.mining.mode, conf.train.batch_size, conf.patches.per_pair,
    )
    return train(task, conf.train)
