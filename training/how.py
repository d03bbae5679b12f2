"""HOW trained self-supervised: contrastive loss on the attention-weighted SPoC of tuples.

The HOW paper (Tolias et al., ECCV 2020) trains with landmark labels from SfM and an ImageNet
initialisation; here the labels are free and the trunk starts from scratch:

* tuples: 1 anchor, 1 positive, ``negatives`` (5) negatives; ``train.batch_size`` (5) tuples
  per update. Item ``(epoch, index)`` is training photo ``index % len(pool)`` (:class:`TupleDataset`,
  a :class:`~hloc_hndesc.training.data.pairs.PairDataset`): the anchor is the pair's source crop
  (image0), the positive another view of the same photo: the pair's target (homography,
  photometric change, stylization), or, when ``sfm.model`` names an SfM model and the photo has
  covisible training photos (at least ``sfm.min_shared_points`` shared 3D points), with
  probability ``sfm.probability`` a crop of one of them (:func:`covisible_photos`);
* negatives: mined once per epoch, before its first update, with the current model
  (:func:`hard_negatives`): global descriptors of every training photo (whole photo at
  ``mining.image_size`` px, single scale, eval mode) in a faiss inner-product index; for each
  photo the most similar photos outside its *mining group* (its photo-pool group, merged with
  every photo covisible with it), at most one per group; each negative enters the tuple as a
  random crop (drawn from ``(seed, epoch, index, k)``). A batch that straddles two epochs uses
  each item's own epoch's table;
* loss: :func:`~hloc_hndesc.training.losses.contrastive_loss` (margin ``loss.margin`` = 0.8) on the
  attention-weighted SPoC (:meth:`~hloc_hndesc.models.how.HOWNet.forward_global`, the
  training scale 1): ``1/2 ||a - p||^2 + sum_n 1/2 max(0, m - ||a - n||)^2`` per tuple;
* whitening: before the first update of a fresh run, the 1x1 ``dim_reduction`` is set by PCA
  whitening of local descriptors (smoothed trunk features of the ``whitening.features_per_image``
  strongest cells, single scale) of ``whitening.images`` training photos
  (:meth:`~hloc_hndesc.models.how.HOWNet.init_whitening`) and stays fixed (it is not trainable,
  so neither the optimiser nor the weight decay touch it). From scratch the BatchNorm statistics
  are first calibrated on the same photos (train-mode forwards without gradients), so that the
  PCA sees the features training will see;
* optimiser: Adam with weight decay 1e-4 (trainer config).

Validation (:meth:`HOWTask.validate`): retrieval mAP among synthetic views of held-out photos,
each photo with its views one class (views of other photos of its group are ignored).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.evaluation.splits import check_training_dirs
from hloc_hndesc.features.base import imagenet_normalize
from hloc_hndesc.io import image_to_tensor, resize_max
from hloc_hndesc.models.how import HOWNet

from .data.pairs import PAIR_DEFAULTS, PairDataset
from .losses import contrastive_loss
from .trainer import TRAIN_DEFAULTS, seed_everything, train

HOW_TRAIN_DEFAULTS: dict[str, Any] = {
    "task": "how",
    "data": {**PAIR_DEFAULTS, "crop": 256},
    "sfm": {
        "model": None,  # COLMAP model folder of (some of) the training photos; None: no covisible positives
        "min_shared_points": 20,  # 3D points two photos must share to be covisible
        "probability": 0.5,  # share of the positives taken from covisible photos (when the anchor has some)
    },
    # the how / how-asmk extractor's defaults (its conf must repeat any change, see checkpoint_meta)
    "model": {
        "backbone": "resnet18",
        "trunk_layers": 3,
        "dim": 128,
        "smoothing_kernel": 3,
        # official HOW freezes the ImageNet BatchNorm statistics; from scratch they must be learnt
        "freeze_batchnorm": False,
    },
    "negatives": 5,  # per tuple
    "loss": {"margin": 0.8},
    "mining": {"image_size": 256},  # longer side of the photos described for the per-epoch mining
    "whitening": {
        "images": 5000,  # training photos whose local descriptors initialise the whitening (all if fewer)
        "image_size": 256,  # their longer side
        "features_per_image": 1000,  # strongest cells per photo (single scale)
        "shrinkage": 1.0,  # eigenvalue power of the whitening (1: full whitening)
    },
    "validation": {
        "photos": 24,  # held-out photos (validation split), each one class
        "views": 4,  # per photo: its source crop and views - 1 synthetic targets (epochs 0, 1, ...)
    },
    "train": {
        **TRAIN_DEFAULTS, "batch_size": 5, "optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4,
        "output_dir": "outputs/train/how",
    },
}


def how_train_conf(conf: Mapping[str, Any] | DictConfig | None) -> DictConfig:
    """:data:`HOW_TRAIN_DEFAULTS` merged strictly with a training config, and checked."""
    merged = merge_conf(HOW_TRAIN_DEFAULTS, conf, "how training")
    if int(merged.data.crop) < 32:
        raise ConfigError(f"how: data.crop must be >= 32, got {merged.data.crop}")
    if int(merged.negatives) < 1:
        raise ConfigError(f"how: negatives must be >= 1, got {merged.negatives}")
    if not float(merged.loss.margin) > 0:
        raise ConfigError(f"how: loss.margin must be > 0, got {merged.loss.margin}")
    sc, wc, vc = merged.sfm, merged.whitening, merged.validation
    if int(sc.min_shared_points) < 1 or not 0.0 <= float(sc.probability) <= 1.0:
        raise ConfigError(f"how: sfm needs min_shared_points >= 1 and probability in [0, 1], got {dict(sc)}")
    if int(wc.images) < 1 or int(wc.features_per_image) < 1 or int(wc.image_size) < 32:
        raise ConfigError(f"how: whitening needs images, features_per_image >= 1 and image_size >= 32, got {dict(wc)}")
    if int(merged.mining.image_size) < 32:
        raise ConfigError(f"how: mining.image_size must be >= 32, got {merged.mining.image_size}")
    if int(vc.photos) < 0 or int(vc.views) < 2:
        raise ConfigError(f"how: validation needs photos >= 0 and views >= 2, got {dict(vc)}")
    return merged


# --------------------------------------------------------------------------------------------
# Covisibility, groups, negatives
# --------------------------------------------------------------------------------------------


def covisible_photos(model: str | Path, names: Sequence[str], min_shared_points: int) -> list[list[int]]:
    """Per photo of ``names``, the indices of the photos sharing >= ``min_shared_points`` 3D points with it.

    ``model``: a COLMAP reconstruction folder (pycolmap). An SfM image matches the photo whose
    name equals its name or ends with ``/`` + its name (so ``tum_freiburg/x.jpg`` matches
    ``train_natural/tum_freiburg/x.jpg``); SfM images matching no photo are ignored, names
    matching several photos raise ValueError.
    """
    import pycolmap  # only with an SfM model: HOW training needs no pycolmap otherwise

    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"SfM model folder not found: {path}")
    rec = pycolmap.Reconstruction(str(path))
    by_suffix: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        parts = name.split("/")
        for j in range(len(parts)):
            by_suffix.setdefault("/".join(parts[j:]), []).append(i)
    photo_of: dict[int, int] = {}
    for image_id, image in rec.images.items():
        hits = by_suffix.get(image.name, [])
        if len(hits) > 1:
            raise ValueError(f"SfM image {image.name!r} matches several training photos: {[names[h] for h in hits]}")
        if hits:
            photo_of[int(image_id)] = hits[0]
    if len(photo_of) < rec.num_images():
        logger.info("SfM model %s: %d of its %d images are training photos", path, len(photo_of), rec.num_images())
    shared: Counter[tuple[int, int]] = Counter()
    for point in rec.points3D.values():
        seen = sorted({photo_of[int(el.image_id)] for el in point.track.elements if int(el.image_id) in photo_of})
        shared.update(combinations(seen, 2))
    neighbours: list[list[int]] = [[] for _ in names]
    for (a, b), count in shared.items():
        if count >= int(min_shared_points):
            neighbours[a].append(b)
            neighbours[b].append(a)
    return [sorted(n) for n in neighbours]


def mining_groups(groups: Sequence[int], covisible: Sequence[Sequence[int]]) -> list[int]:
    """Photo groups merged along covisibility edges (connected components), relabelled 0, 1, ... in order."""
    parent = list(range(len(groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[int, int] = {}
    for i, g in enumerate(groups):
        j = first_of.setdefault(int(g), i)
        parent[find(i)] = find(j)
    for i, others in enumerate(covisible):
        for j in others:
            parent[find(i)] = find(int(j))
    labels: dict[int, int] = {}
    return [labels.setdefault(find(i), len(labels)) for i in range(len(groups))]


def hard_negatives(
    descriptors: torch.Tensor, groups: Sequence[int] | torch.Tensor, num: int,
    queries: Sequence[int] | None = None,
) -> torch.Tensor:
    """(Q, num) indices of the photos most similar to each query photo, outside its group, one per group.

    ``descriptors`` (P, D) global descriptors of all photos (normalised here), searched with a
    faiss inner-product index; ``groups`` (P,); ``queries`` photo indices (None: all). Rows are
    best first, padded with -1 when fewer groups exist.
    """
    desc = F.normalize(descriptors.detach().float().cpu(), dim=1).contiguous().numpy()
    group = np.asarray(torch.as_tensor(groups).cpu(), dtype=np.int64)
    if desc.shape[0] != group.shape[0]:
        raise ValueError(f"hard_negatives: {desc.shape[0]} descriptors for {group.shape[0]} groups")
    qs = np.arange(len(group)) if queries is None else np.asarray(list(queries), dtype=np.int64)
    index = faiss.IndexFlatIP(desc.shape[1])
    index.add(desc)
    # within the top (num + 1) * largest group, num new groups always appear when they exist
    depth = min(len(group), (int(num) + 1) * int(np.bincount(group).max()))
    _, found = index.search(desc[qs], depth)
    out = torch.full((len(qs), int(num)), -1, dtype=torch.long)
    for row, (q, cands) in enumerate(zip(qs, found)):
        taken, col = {int(group[q])}, 0
        for j in cands:
            if j < 0 or int(group[j]) in taken:
                continue
            out[row, col] = int(j)
            taken.add(int(group[j]))
            col += 1
            if col == num:
                break
    return out


def average_precision_ranking(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Exact AP of each row of ``scores`` (Q, N) over its ``valid`` entries, ``positive`` the relevant ones.

    Rows without a valid positive give NaN.
    """
    keyed = torch.where(valid, scores.double(), torch.full_like(scores, float("-inf"), dtype=torch.float64))
    order = torch.argsort(keyed, dim=1, descending=True, stable=True)
    rel = torch.gather(positive & valid, 1, order).double()
    hits = rel.cumsum(dim=1)
    ranks = torch.arange(1, scores.shape[1] + 1, dtype=torch.float64)
    n_pos = rel.sum(dim=1)
    return (rel * hits / ranks).sum(dim=1) / torch.where(n_pos > 0, n_pos, torch.full_like(n_pos, float("nan")))


def retrieval_map(
    descriptors: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None
) -> dict[str, float]:
    """Leave-one-out retrieval among (N, D) unit descriptors: ``map`` and ``top1`` (precision at 1).

    Each item queries all others; relevant: same label; ignored: another label of the same
    group (``groups``: None ignores nothing).
    """
    labels = torch.as_tensor(labels).cpu()
    groups = labels if groups is None else torch.as_tensor(groups).cpu()
    desc = descriptors.detach().double().cpu()
    n = desc.shape[0]
    sim = desc @ desc.t()
    same = labels[:, None] == labels[None, :]
    valid = ~((groups[:, None] == groups[None, :]) & ~same) & ~torch.eye(n, dtype=torch.bool)
    ap = average_precision_ranking(sim, same, valid)
    best = torch.where(valid, sim, torch.full_like(sim, float("-inf"))).argmax(dim=1)
    keep = ~torch.isnan(ap)
    return {
        "map": float(ap[keep].mean()) if bool(keep.any()) else 0.0,
        "top1": float(same[torch.arange(n), best][keep].float().mean()) if bool(keep.any()) else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class TupleDataset(PairDataset):
    """Anchors and positives of HOW's tuples (see the module doc); negatives are added by the task.

    An item: ``anchor``, ``positive`` (3, S, S) float32 in [0, 1], ``photo`` (pool index),
    ``group`` (mining group), ``index``, ``epoch``, ``stylized``, ``covisible`` (bool: the positive
    is a covisible photo).
    """

    def __init__(self, data: Mapping[str, Any] | DictConfig | None, sfm: DictConfig, split: str = "train") -> None:
        super().__init__(data, split)
        self.sfm = sfm
        names = list(self.pool.names)
        self.covisible = (
            covisible_photos(str(sfm.model), names, int(sfm.min_shared_points)) if sfm.model else [[] for _ in names]
        )
        self.groups = mining_groups(self.pool.groups, self.covisible)

    def random_crop(self, photo: int, rng: np.random.Generator) -> torch.Tensor:
        """A random (3, S, S) crop of a pool photo (upscaled first when a side is below S)."""
        image, s = self._photo(photo), self.crop
        h, w = image.shape[:2]
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        return image_to_tensor(image[y0 : y0 + s, x0 : x0 + s])[0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        item = super().__getitem__(key)
        epoch, index = int(item["epoch"]), int(item["index"])
        photo = index % len(self.pool)
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        others = self.covisible[photo]
        covisible = bool(others) and bool(rng.uniform() < float(self.sfm.probability))
        positive = self.random_crop(others[int(rng.integers(len(others)))], rng) if covisible else item["image1"]
        return {
            "anchor": item["image0"], "positive": positive, "photo": photo, "group": self.groups[photo],
            "index": index, "epoch": epoch, "stylized": bool(item["stylized"]) and not covisible,
            "covisible": covisible,
        }


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class HOWTask:
    """The self-supervised HOW training task for :func:`~hloc_hndesc.training.trainer.train` (see the module doc)."""

    def __init__(self, conf: DictConfig) -> None:
        self.conf = conf
        mc = conf.model
        self.model = HOWNet(
            str(mc.backbone), int(mc.trunk_layers), int(mc.dim), int(mc.smoothing_kernel), bool(mc.freeze_batchnorm)
        )
        self.dataset = TupleDataset(conf.data, conf.sfm, "train")
        self.negatives: dict[int, torch.Tensor] = {}  # epoch -> (P, negatives) photo indices
        self.whitened = False
        self._photos: dict[int, list[torch.Tensor]] = {}
        self._val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.device = torch.device("cpu")

    def setup(self, context: Any) -> None:
        """Called by the trainer once the model is on its device: whitening of a fresh run."""
        self.device = context.device
        if int(context.start_step) == 0:
            self.init_whitening()

    # -- photos, whitening, mining --------------------------------------------------------

    def photos(self, size: int) -> list[torch.Tensor]:
        """Every training photo at longer side ``size``, uint8 (3, h, w) (cached per size)."""
        if size not in self._photos:
            pool = self.dataset.pool
            self._photos[size] = [
                torch.from_numpy(resize_max(pool.load(i), size)).permute(2, 0, 1).contiguous()
                for i in tqdm(range(len(pool)), desc=f"photos at {size} px", leave=False)
            ]
        return self._photos[size]

    def _input(self, image: torch.Tensor) -> torch.Tensor:
        return imagenet_normalize(image[None].to(self.device, torch.float32) / 255.0)

    @torch.no_grad()
    def calibrate_batchnorm(self, images: Sequence[torch.Tensor]) -> None:
        """BatchNorm running statistics := their cumulative average over train-mode forwards of ``images``."""
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        self.model.train()
        try:
            for image in tqdm(images, desc="BatchNorm calibration", leave=False):
                self.model.single_scale(self._input(image), reduce=False)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum

    @torch.no_grad()
    def init_whitening(self) -> dict[str, float]:
        """PCA whitening of the current trunk's local descriptors into ``dim_reduction`` (kept fixed)."""
        wc = self.conf.whitening
        start = time.perf_counter()
        everything = self.photos(int(wc.image_size))
        picks = np.unique(np.linspace(0, len(everything) - 1, min(int(wc.images), len(everything))).round().astype(int))
        chosen = [everything[i] for i in picks]
        if not self.model.freeze_batchnorm:
            self.calibrate_batchnorm(chosen)
        self.model.eval()
        num = int(wc.features_per_image)
        local = [
            self.model.forward_local(self._input(image), (1.0,), num, reduce=False)["descriptors"][0]
            for image in tqdm(chosen, desc="whitening descriptors", leave=False)
        ]
        self.model.train()
        descriptors = torch.cat(local).float()
        if len(descriptors) <= self.model.backbone_dim:
            logger.warning(
                "HOW whitening from %d local descriptors of dimension %d: the PCA is rank-deficient; "
                "raise whitening.images, image_size or features_per_image", len(descriptors), self.model.backbone_dim,
            )
        self.model.init_whitening(descriptors, float(wc.shrinkage))
        self.whitened = True
        stats = {"whitening_descriptors": float(len(descriptors)), "whitening_seconds": time.perf_counter() - start}
        logger.info(
            "HOW whitening initialised from %d local descriptors of %d photos in %.1f s",
            len(descriptors), len(chosen), stats["whitening_seconds"],
        )
        return stats

    @torch.no_grad()
    def photo_descriptors(self) -> torch.Tensor:
        """(P, d) global descriptors of every training photo (eval mode, single scale), on the CPU."""
        was_training = self.model.training
        self.model.eval()
        try:
            rows = [
                self.model.forward_global(self._input(image), (1.0,))[0].float().cpu()
                for image in tqdm(self.photos(int(self.conf.mining.image_size)), desc="mining descriptors", leave=False)
            ]
        finally:
            self.model.train(was_training)
        return torch.stack(rows)

    def mine_epoch(self, epoch: int, step: int) -> dict[str, float]:
        """Hard negatives of every training photo for ``epoch`` with the current model."""
        start = time.perf_counter()
        desc = self.photo_descriptors()
        table = hard_negatives(desc, self.dataset.groups, int(self.conf.negatives))
        self.negatives[int(epoch)] = table
        ok = table >= 0
        sims = (desc[:, None, :] * desc[table.clamp(min=0)]).sum(-1)[ok]
        stats = {
            "mining_seconds": time.perf_counter() - start,
            "negative_similarity": float(sims.mean()) if len(sims) else 0.0,
        }
        logger.info(
            "HOW negatives of epoch %d mined at step %d in %.1f s (mean similarity %.3f)",
            epoch, step, stats["mining_seconds"], stats["negative_similarity"],
        )
        return stats

    def negative_views(
        self, photos: Sequence[int], epochs: Sequence[int], indices: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Negatives of B tuples: (B, n) photo ids (-1: none), (M, 3, S, S) crops of the valid ones, (B, n) valid."""
        rows = torch.stack([self.negatives[int(e)][int(p)] for p, e in zip(photos, epochs)])
        valid = rows >= 0
        crops = []
        for b, (e, i) in enumerate(zip(epochs, indices)):
            for k in range(rows.shape[1]):
                if valid[b, k]:
                    rng = np.random.default_rng([self.dataset.seed, int(e), int(i), 2, k])
                    crops.append(self.dataset.random_crop(int(rows[b, k]), rng))
        s = self.dataset.crop
        return rows, torch.stack(crops) if crops else torch.zeros(0, 3, s, s), valid

    # -- the loss ---------------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Contrastive loss of a batch of tuples; mines the negatives of a new epoch first."""
        epochs = [int(e) for e in torch.as_tensor(batch["epoch"]).tolist()]
        for epoch in sorted(set(epochs)):
            if epoch not in self.negatives:
                self.mine_epoch(epoch, step)
        for old in [e for e in self.negatives if e < min(epochs)]:
            del self.negatives[old]
        photos = torch.as_tensor(batch["photo"]).tolist()
        indices = torch.as_tensor(batch["index"]).tolist()
        _, crops, valid = self.negative_views(photos, epochs, indices)
        anchor, positive = batch["anchor"], batch["positive"]
        b, n = valid.shape
        images = torch.cat([anchor, positive, crops.to(anchor.device, anchor.dtype)])
        desc = self.model.forward_global(imagenet_normalize(images), (1.0,))
        with torch.autocast(anchor.device.type, enabled=False):
            desc = desc.float()
            negatives = desc.new_zeros(b, n, desc.shape[1])
            valid = valid.to(desc.device)
            negatives[valid] = desc[2 * b :]
            others = torch.cat([desc[b : 2 * b, None], negatives], dim=1)
            positive_mask = torch.zeros(b, n + 1, dtype=torch.bool, device=desc.device)
            positive_mask[:, 0] = True
            all_valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=desc.device), valid], dim=1)
            loss, stats = contrastive_loss(desc[:b], others, positive_mask, all_valid, float(self.conf.loss.margin))
        metrics = {k: float(v) for k, v in stats.items()}
        metrics["negatives_per_tuple"] = float(valid.sum(dim=1).float().mean())
        metrics["covisible_positives"] = float(torch.as_tensor(batch["covisible"]).float().mean())
        metrics["stylized_positives"] = float(torch.as_tensor(batch["stylized"]).float().mean())
        return loss, metrics

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Task state to checkpoint: the negatives of the current epoch(s)."""
        epochs = sorted(self.negatives)
        return {"negative_epochs": epochs, "negative_tables": [self.negatives[e].clone() for e in epochs]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        tables = state.get("negative_tables", [])
        self.negatives = {int(e): torch.as_tensor(t).long() for e, t in zip(state.get("negative_epochs", []), tables)}
        self.whitened = True

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the final ``model.pt`` records besides the weights: the ``how`` extractor conf
        (``backbone``, ``trunk_layers``, ``dim``, ``smoothing_kernel``; the extractor builds its
        network from its conf, whose defaults these are unless the training config changed
        them) and the training set-up (self-supervised, from scratch)."""
        mc = self.conf.model
        return {
            "arch": "how",
            "model": "how",
            "backbone": str(mc.backbone),
            "trunk_layers": int(mc.trunk_layers),
            "dim": int(mc.dim),
            "smoothing_kernel": int(mc.smoothing_kernel),
            "supervision": "self-supervised: synthetic views" + (", SfM covisibility" if self.conf.sfm.model else ""),
            "config": OmegaConf.to_container(self.conf, resolve=True),
            "data_dirs": [str(d) for d in self.conf.data.image_dirs],
            "train_photos": len(self.dataset.pool),
        }

    # -- validation ---------------------------------------------------------------------------

    def validation_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views (N, 3, S, S) of the held-out photos, their photo labels (N,) and groups (N,)."""
        if self._val is None:
            val = PairDataset(self.conf.data, "val")
            views, labels, groups = [], [], []
            for i in range(min(int(self.conf.validation.photos), len(val.pool))):
                for e in range(int(self.conf.validation.views) - 1):
                    item = val[(e, i)]
                    if e == 0:
                        views.append(item["image0"])
                        labels.append(i)
                        groups.append(item["group"])
                    views.append(item["image1"])
                    labels.append(i)
                    groups.append(item["group"])
            s = int(self.conf.data.crop)
            self._val = (
                torch.stack(views) if views else torch.zeros(0, 3, s, s),
                torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(groups, dtype=torch.long),
            )
        return self._val

    def validate(self) -> dict[str, float]:
        """Retrieval among the held-out photos' views: ``map``, ``top1`` (global descriptors at scale 1)."""
        if float(self.conf.data.val_fraction) <= 0 or int(self.conf.validation.photos) == 0:
            return {}
        views, labels, groups = self.validation_views()
        if len(views) < 2:
            return {}
        desc = torch.cat([
            self.model.forward_global(imagenet_normalize(chunk.to(self.device)), (1.0,)).float().cpu()
            for chunk in views.split(16)
        ])
        out = retrieval_map(desc, labels, groups)
        out["views"] = float(len(views))
        return out


def train_how(conf: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """Train HOW self-supervised from a training config (``hloc-hndesc train --config how``)."""
    conf = how_train_conf(conf)
    check_training_dirs(conf.data.image_dirs)
    seed_everything(int(conf.train.seed))  # the initial weights of a fresh run
    task = HOWTask(conf)
    logger.info(
        "HOW (%s, %d layers): %d tuples per epoch of %d px crops (1 + 1 + %d), batch %d tuples, SfM positives: %s",
        conf.model.backbone, conf.model.trunk_layers, len(task.dataset), conf.data.crop, conf.negatives,
        conf.train.batch_size, conf.sfm.model or "none",
    )
    return train(task, conf.train)
