"""Hard-negative mining for descriptor training: HNDesc's in-pair, in-batch and global modes.

A training batch holds N correspondences ``(desc_a[i], desc_p[i])``; correspondence ``i``
comes from synthetic pair ``pair_ids[i]`` (one source crop and its warped target), made
from training photo ``image_ids[i]`` of group ``groups[i]`` (photos of one scene or one video
share a group). ``kpts_p[i]`` is the positive's position in its pair's target image.

Modes (``conf.mode``, defaults in :data:`MINING_DEFAULTS`):

* ``in_pair``: negatives of anchor ``i`` are the other correspondences of the same pair
  (both images: ``a_j`` and ``p_j``) whose target position is at least ``exclusion_radius``
  pixels from ``kpts_p[i]``;
* ``in_batch``: negatives come from the other pairs of the batch, never from a pair of the
  same group (another view of the same scene is not a negative);
* ``global`` (HNDesc's "selfgd" / "gd"): the in-batch negatives (``bank.with_in_batch``) plus
  explicit negatives mined by a :class:`GlobalNegativeBank`: a global descriptor per training
  image (pooled from the model's own local descriptors at each refresh, or read from an hloc
  global-features file such as HOW's) in a faiss inner-product index; for each batch image
  its ``num_neighbours`` nearest images outside its group, and among the local descriptors
  cached for those images the ``top_k`` most similar to each anchor (coarse to fine).

In every mode a mask keeps, per anchor, only the ``top_k`` most similar allowed batch
candidates (``top_k: 0`` keeps all), so that positives and negatives stay balanced for
list-wise losses such as AP. The similarity of candidate ``j`` to pair ``i`` is the largest
of ``a_i.a_j``, ``p_i.p_j``, ``a_i.p_j``, ``a_j.p_i``: exactly the candidates of
:func:`~hloc_hndesc.training.losses.hynet_loss`, whose hardest negative is therefore never
dropped by the top-k.

Feed a :class:`NegativeSet` to the loss with ``hynet_loss(..., **negatives.loss_kwargs())``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError, merge_conf

from .losses import negative_mask_from_groups

MODES = ("in_pair", "in_batch", "global")
SOURCES = ("self", "external")

#: The only place of the mining defaults (config key ``mining``).
MINING_DEFAULTS: dict[str, Any] = {
    "mode": "in_batch",  # in_pair | in_batch | global
    "top_k": 20,  # negatives kept per anchor (batch candidates, and bank negatives); 0: all
    "exclusion_radius": 8.0,  # px in the target image: same-pair keypoints closer are not negatives
    "bank": {  # global mode only
        "source": "self",  # self: pooled own local descriptors; external: global_path (hloc h5)
        "global_path": None,  # hloc global-features h5 (/<image name>/global_descriptor)
        "refresh_every": 2000,  # steps between two refreshes of the index and the cache
        "num_neighbours": 5,  # M nearest images outside the group, per batch image
        "locals_per_image": 256,  # local descriptors cached per image (float16)
        "with_in_batch": True,  # also use the in-batch negatives
        "seed": 0,  # subsampling of the cached local descriptors (offset by the step)
    },
}


def mining_conf(conf: Mapping[str, Any] | DictConfig | None = None) -> DictConfig:
    """``conf`` merged strictly into :data:`MINING_DEFAULTS`, with the mode and source checked.

    The result is read-only; passing it back (e.g. to :func:`select_negatives` at every
    step) returns it as is, without merging again.
    """
    if _is_checked(conf):
        assert isinstance(conf, DictConfig)
        return conf
    merged = merge_conf(MINING_DEFAULTS, conf, "mining")
    if merged.mode not in MODES:
        raise ConfigError(f"mining: unknown mode {merged.mode!r}, expected one of {list(MODES)}")
    if merged.bank.source not in SOURCES:
        raise ConfigError(f"mining.bank: unknown source {merged.bank.source!r}, expected one of {list(SOURCES)}")
    if merged.top_k < 0 or merged.bank.num_neighbours < 1 or merged.bank.locals_per_image < 1:
        raise ConfigError("mining: top_k must be >= 0, num_neighbours and locals_per_image >= 1")
    if merged.bank.refresh_every < 1:
        raise ConfigError("mining.bank: refresh_every must be >= 1")
    OmegaConf.set_readonly(merged, True)
    return merged


def _is_checked(conf: object) -> bool:
    return (
        isinstance(conf, DictConfig)
        and OmegaConf.is_readonly(conf) is True
        and set(conf.keys()) == set(MINING_DEFAULTS)
        and set(conf.bank.keys()) == set(MINING_DEFAULTS["bank"])
    )


@dataclass
class NegativeSet:
    """Negatives of each anchor: a (N, N) mask over the batch and/or explicit descriptors.

    ``mask[i, j]``: correspondence ``j`` (its ``a_j`` and ``p_j``) may be a negative of anchor
    ``i``. ``descriptors`` (N, K, D) and ``valid`` (N, K): explicit negatives (global mode).
    ``stats``: floats for the logs (negatives per anchor, bank mining costs).
    """

    mode: str
    mask: torch.Tensor | None
    descriptors: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def loss_kwargs(self) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of :func:`~hloc_hndesc.training.losses.hynet_loss`."""
        return {"neg_mask": self.mask, "extra_negatives": self.descriptors, "extra_valid": self.valid}


def candidate_similarity(desc_a: torch.Tensor, desc_p: torch.Tensor) -> torch.Tensor:
    """(N, N): the largest of ``a_i.a_j``, ``p_i.p_j``, ``a_i.p_j``, ``a_j.p_i`` (no gradient)."""
    with torch.no_grad():
        a, p = desc_a.float(), desc_p.float()
        ap = a @ p.t()
        return torch.maximum(torch.maximum(a @ a.t(), p @ p.t()), torch.maximum(ap, ap.t()))


def keep_top_k(mask: torch.Tensor, similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Restrict each row of ``mask`` to its ``k`` most similar allowed entries (``k <= 0``: all)."""
    if k <= 0 or k >= mask.shape[1]:
        return mask
    scores = torch.where(mask, similarity, torch.full_like(similarity, float("-inf")))
    values, index = scores.topk(k, dim=1)
    kept = torch.zeros_like(mask)
    kept.scatter_(1, index, torch.isfinite(values))
    return kept


def _as_long(name: str, value: torch.Tensor | Sequence[int] | None, n: int, device: torch.device) -> torch.Tensor:
    if value is None:
        raise ValueError(f"select_negatives: {name} is required")
    tensor = torch.as_tensor(value, device=device)
    if tensor.shape != (n,):
        raise ValueError(f"select_negatives: {name} must be (N={n},), got {tuple(tensor.shape)}")
    return tensor.long()


def select_negatives(
    conf: Mapping[str, Any] | DictConfig | None,
    desc_a: torch.Tensor,
    desc_p: torch.Tensor,
    pair_ids: torch.Tensor,
    groups: torch.Tensor,
    kpts_p: torch.Tensor | None = None,
    bank: GlobalNegativeBank | None = None,
    image_ids: torch.Tensor | None = None,
) -> NegativeSet:
    """The negatives of N correspondences for mining mode ``conf.mode`` (see the module doc).

    ``pair_ids``, ``groups`` (N,) per correspondence; ``kpts_p`` (N, 2) target positions
    (needed by ``in_pair`` when ``exclusion_radius > 0``); ``bank`` and ``image_ids`` (N,)
    (bank indices of the training photos) for ``global``.
    """
    conf = mining_conf(conf)
    if desc_a.ndim != 2 or desc_a.shape != desc_p.shape:
        raise ValueError(
            f"select_negatives: desc_a and desc_p must be (N, D) with the same shape, got "
            f"{tuple(desc_a.shape)} and {tuple(desc_p.shape)}"
        )
    n, device = desc_a.shape[0], desc_a.device
    pair_ids = _as_long("pair_ids", pair_ids, n, device)
    groups = _as_long("groups", groups, n, device)
    same_pair = pair_ids[:, None] == pair_ids[None, :]
    radius = float(conf.exclusion_radius)
    if conf.mode == "in_pair":
        if kpts_p is None and radius > 0:
            raise ValueError("select_negatives: in_pair with exclusion_radius > 0 needs kpts_p (N, 2)")
        if kpts_p is not None and kpts_p.shape != (n, 2):
            raise ValueError(f"select_negatives: kpts_p must be (N={n}, 2), got {tuple(kpts_p.shape)}")
        base = negative_mask_from_groups(groups, pair_ids, kpts_p if radius > 0 else None, radius)
        mask = base & same_pair
    else:
        mask = negative_mask_from_groups(groups, pair_ids) & ~same_pair
    similarity = candidate_similarity(desc_a, desc_p)
    mask = keep_top_k(mask, similarity, int(conf.top_k))
    stats: dict[str, float] = {}
    descriptors = valid = None
    if conf.mode == "global":
        if bank is None:
            raise ValueError("select_negatives: mode 'global' needs a GlobalNegativeBank (bank=...)")
        image_ids = _as_long("image_ids", image_ids, n, device)
        k = int(conf.top_k) if conf.top_k > 0 else int(bank.conf.locals_per_image) * int(bank.conf.num_neighbours)
        descriptors, valid = bank.hardest(desc_a, image_ids, k)
        stats.update({f"bank_{key}": value for key, value in bank.last_mining_stats.items()})
        stats["extra_negatives_per_anchor"] = float(valid.sum(dim=1).float().mean())
        if not conf.bank.with_in_batch:
            mask = torch.zeros_like(mask)
    stats["negatives_per_anchor"] = float(mask.sum(dim=1).float().mean())
    return NegativeSet(str(conf.mode), mask, descriptors, valid, stats)


def pooled_global_descriptors(local_desc: Sequence[torch.Tensor]) -> torch.Tensor:
    """(I, D): per image, the L2-normalised mean of its L2-normalised local descriptors."""
    rows = []
    for desc in local_desc:
        if desc.shape[0] == 0:
            rows.append(torch.zeros(desc.shape[1], dtype=torch.float32, device=desc.device))
        else:
            rows.append(F.normalize(desc.float(), dim=1).mean(dim=0))
    return F.normalize(torch.stack(rows), dim=1)


def read_global_descriptors(path: str | Path, names: Sequence[str]) -> torch.Tensor:
    """(I, G) float32 global descriptors of ``names`` from an hloc global-features h5 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"global descriptors file not found: {path}")
    rows: list[np.ndarray] = []
    missing: list[str] = []
    with h5py.File(path, "r") as fd:
        for name in names:
            key = f"{name}/global_descriptor"
            if key not in fd:
                missing.append(name)
                continue
            rows.append(np.asarray(fd[key][()], dtype=np.float32).reshape(-1))
    if missing:
        raise KeyError(
            f"{len(missing)} of {len(names)} images have no /<name>/global_descriptor in {path}: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    dims = {row.shape[0] for row in rows}
    if len(dims) != 1:
        raise ValueError(f"global descriptors of different sizes in {path}: {sorted(dims)}")
    return torch.from_numpy(np.stack(rows))


class GlobalNegativeBank:
    """Retrieval-guided negatives: a faiss index of global descriptors and a local-descriptor cache.

    ``groups`` (I,): the group of each training photo (bank index = position). With
    ``conf.bank.source == "external"``, ``names`` (I,) key the photos in the hloc global
    features file ``conf.bank.global_path`` (read once here). Call :meth:`refresh` when
    :meth:`needs_refresh` says so, with the current model's local descriptors of every photo;
    then :meth:`neighbours` and :meth:`hardest`. The cache lives on ``device`` (CPU by
    default) as float16: I x locals_per_image x D x 2 bytes.
    """

    def __init__(
        self,
        groups: torch.Tensor | Sequence[int],
        conf: Mapping[str, Any] | DictConfig | None = None,
        names: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        full = mining_conf(conf)
        self.conf = full.bank
        self.groups = torch.as_tensor(groups, dtype=torch.long).cpu()
        if self.groups.ndim != 1 or self.groups.numel() == 0:
            raise ValueError(
                f"GlobalNegativeBank: groups must be a non-empty (I,) vector, got {tuple(self.groups.shape)}"
            )
        self.num_images = int(self.groups.numel())
        self.max_group_size = int(torch.unique(self.groups, return_counts=True)[1].max())
        self.device = torch.device(device)
        self.external: torch.Tensor | None = None
        if self.conf.source == "external":
            if self.conf.global_path is None or names is None:
                raise ConfigError("mining.bank: source 'external' needs bank.global_path and the image names")
            if len(names) != self.num_images:
                raise ValueError(f"GlobalNegativeBank: {len(names)} names for {self.num_images} groups")
            self.external = F.normalize(read_global_descriptors(self.conf.global_path, names), dim=1)
        self.global_desc: torch.Tensor | None = None  # (I, G) float32, unit rows, CPU
        self.index: faiss.IndexFlatIP | None = None
        self.cache: torch.Tensor | None = None  # (I, L, D) float16 unit rows
        self.counts: torch.Tensor | None = None  # (I,) cached descriptors per image
        self.last_refresh: int | None = None
        self.last_refresh_stats: dict[str, float] = {}
        self.last_mining_stats: dict[str, float] = {}

    @property
    def ready(self) -> bool:
        """Whether the bank has been refreshed at least once."""
        return self.index is not None

    def needs_refresh(self, step: int) -> bool:
        """True before the first refresh and every ``refresh_every`` steps after the last one."""
        return self.last_refresh is None or step - self.last_refresh >= int(self.conf.refresh_every)

    def refresh(
        self, global_desc: torch.Tensor | None, local_desc: Sequence[torch.Tensor], step: int
    ) -> dict[str, float]:
        """Rebuild the index and the cache; returns (and logs) its costs.

        ``local_desc``: one (n_i, D) tensor per training photo (current model); at most
        ``locals_per_image`` of them are kept (a random subset drawn from ``seed + step``).
        ``global_desc`` (I, G): the photos' global descriptors for ``source == "self"``; None
        pools them from ``local_desc`` (:func:`pooled_global_descriptors`). Must be None for
        ``source == "external"`` (read from the h5 file at construction).
        """
        start = time.perf_counter()
        if len(local_desc) != self.num_images:
            raise ValueError(f"refresh: {len(local_desc)} local descriptor sets for {self.num_images} images")
        dims = {int(d.shape[1]) for d in local_desc if d.ndim == 2}
        if any(d.ndim != 2 for d in local_desc) or len(dims) != 1:
            raise ValueError(f"refresh: local_desc must be (n_i, D) tensors with one D, got D in {sorted(dims)}")
        if self.external is not None:
            if global_desc is not None:
                raise ValueError("refresh: source 'external' reads the global descriptors from bank.global_path")
            glob = self.external
        elif global_desc is None:
            glob = pooled_global_descriptors(local_desc).cpu()
        else:
            if global_desc.ndim != 2 or global_desc.shape[0] != self.num_images:
                raise ValueError(
                    f"refresh: global_desc must be (I={self.num_images}, G), got {tuple(global_desc.shape)}"
                )
            glob = F.normalize(global_desc.detach().float().cpu(), dim=1)
        glob = glob.contiguous()
        index = faiss.IndexFlatIP(glob.shape[1])
        index.add(glob.numpy())

        dim, limit = dims.pop(), int(self.conf.locals_per_image)
        generator = torch.Generator().manual_seed(int(self.conf.seed) + int(step))
        cache = torch.zeros(self.num_images, limit, dim, dtype=torch.float16, device=self.device)
        counts = torch.zeros(self.num_images, dtype=torch.long)
        for i, desc in enumerate(local_desc):
            desc = desc.detach()
            if desc.shape[0] > limit:
                keep = torch.randperm(desc.shape[0], generator=generator)[:limit]
                desc = desc[keep.to(desc.device)]
            counts[i] = desc.shape[0]
            if desc.shape[0]:
                cache[i, : desc.shape[0]] = F.normalize(desc.float(), dim=1).to(self.device, torch.float16)
        self.global_desc, self.index, self.cache, self.counts = glob, index, cache, counts.to(self.device)
        self.last_refresh = int(step)
        stats = {
            "refresh_seconds": time.perf_counter() - start,
            "index_bytes": float(glob.numel() * 4),
            "cache_bytes": float(cache.numel() * cache.element_size()),
            "cached_per_image": float(counts.float().mean()),
        }
        self.last_refresh_stats = stats
        logger.info(
            "global negative bank refreshed at step %d (%s): %d images, index %.1f MB, cache %.1f MB, %.2f s",
            step, self.conf.source, self.num_images, stats["index_bytes"] / 2**20, stats["cache_bytes"] / 2**20,
            stats["refresh_seconds"],
        )
        return stats

    def _require_ready(self) -> None:
        if not self.ready:
            raise RuntimeError("GlobalNegativeBank: call refresh(...) before mining")

    def _check_ids(self, image_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(image_ids).long().cpu()
        if ids.ndim != 1:
            raise ValueError(f"image_ids must be (B,), got {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_images):
            raise ValueError(f"image_ids must lie in [0, {self.num_images}), got [{int(ids.min())}, {int(ids.max())}]")
        return ids

    def neighbours(self, image_ids: torch.Tensor, num: int | None = None) -> torch.Tensor:
        """(B, M) bank indices of the M most similar images outside each image's group, best first.

        -1 pads rows when fewer than M images lie outside the group. CPU long tensor.
        """
        self._require_ready()
        assert self.index is not None and self.global_desc is not None
        ids = self._check_ids(image_ids)
        num = int(self.conf.num_neighbours if num is None else num)
        if ids.numel() == 0:
            return torch.zeros(0, num, dtype=torch.long)
        search = min(self.num_images, num + self.max_group_size)
        _, found = self.index.search(self.global_desc[ids].numpy(), search)
        found_t = torch.from_numpy(found).long()
        keep = (found_t >= 0) & (self.groups[found_t.clamp(min=0)] != self.groups[ids][:, None])
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :num]
        result = torch.gather(found_t, 1, order)
        result[~torch.gather(keep, 1, order)] = -1
        if result.shape[1] < num:
            result = F.pad(result, (0, num - result.shape[1]), value=-1)
        return result

    def hardest(
        self, anchors: torch.Tensor, anchor_image_ids: torch.Tensor, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, k, D) cached descriptors most similar to each anchor among its image's neighbours.

        The candidates of anchor ``i`` are the cached local descriptors of
        ``neighbours(anchor_image_ids[i])``; returns them (unit, anchors' dtype and device, no
        gradient) and ``valid`` (N, k), False where fewer than ``k`` candidates exist. Costs
        go to :attr:`last_mining_stats`.
        """
        self._require_ready()
        assert self.cache is not None and self.counts is not None
        start = time.perf_counter()
        if anchors.ndim != 2 or anchors.shape[1] != self.cache.shape[2]:
            raise ValueError(f"hardest: anchors must be (N, D={self.cache.shape[2]}), got {tuple(anchors.shape)}")
        ids = self._check_ids(anchor_image_ids)
        if ids.shape[0] != anchors.shape[0]:
            raise ValueError(f"hardest: {ids.shape[0]} image ids for {anchors.shape[0]} anchors")
        k = int(self.conf.locals_per_image if k is None else k)
        n, dim, device = anchors.shape[0], anchors.shape[1], anchors.device
        if n == 0 or k <= 0:
            self.last_mining_stats = {"mining_seconds": 0.0, "mining_bytes": 0.0}
            return anchors.new_zeros(n, max(k, 0), dim), torch.zeros(n, max(k, 0), dtype=torch.bool, device=device)
        limit = self.cache.shape[1]
        unique, inverse = torch.unique(ids, return_inverse=True)
        nbrs = self.neighbours(unique)  # (U, M)
        n_unique, n_nbrs = nbrs.shape
        nbrs_dev = nbrs.to(self.device)
        cand = self.cache[nbrs_dev.clamp(min=0)].to(device)  # (U, M, L, D) float16
        slot = torch.arange(limit, device=self.device)
        cand_valid = (nbrs_dev >= 0)[..., None] & (slot < self.counts[nbrs_dev.clamp(min=0)][..., None])
        cand = cand.reshape(n_unique, n_nbrs * limit, dim)
        cand_valid = cand_valid.reshape(n_unique, n_nbrs * limit).to(device)
        # Anchors grouped by image, padded: (U, P, D); one batched product per batch image.
        inverse = inverse.to(device)
        order = torch.argsort(inverse, stable=True)
        sorted_img = inverse[order]
        per_image = torch.bincount(inverse, minlength=n_unique)
        offsets = torch.cumsum(per_image, 0) - per_image
        rank = torch.arange(n, device=device) - offsets[sorted_img]
        width = int(per_image.max())
        with torch.no_grad():
            padded = anchors.new_zeros(n_unique, width, dim, dtype=torch.float32)
            padded[sorted_img, rank] = anchors.detach().float()[order]
            sims = torch.bmm(padded, cand.float().transpose(1, 2))  # (U, P, M*L)
            sims.masked_fill_(~cand_valid[:, None, :], float("-inf"))
            take = min(k, sims.shape[2])
            values, index = sims.topk(take, dim=2)
            values_a = values.new_empty(n, take)
            index_a = index.new_empty(n, take)
            values_a[order] = values[sorted_img, rank]
            index_a[order] = index[sorted_img, rank]
            img = inverse[:, None].expand(n, take)
            negatives = F.normalize(cand[img, index_a].float(), dim=2).to(anchors.dtype)
            valid = torch.isfinite(values_a)
            if take < k:
                negatives = F.pad(negatives, (0, 0, 0, k - take))
                valid = F.pad(valid, (0, k - take), value=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.last_mining_stats = {
            "mining_seconds": time.perf_counter() - start,
            "mining_bytes": float(sims.numel() * 4 + cand.numel() * cand.element_size()),
            "candidates_per_anchor": float(cand_valid.sum(dim=1).float()[inverse].mean()),
            "hardest_similarity": float(values_a[:, 0][valid[:, 0]].mean()) if bool(valid[:, 0].any()) else 0.0,
        }
        logger.debug("global negative mining: %s", self.last_mining_stats)
        return negatives, valid

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to mine exactly as before (tensors on CPU)."""
        self._require_ready()
        assert self.cache is not None and self.counts is not None and self.global_desc is not None
        return {
            "global_desc": self.global_desc.clone(),
            "cache": self.cache.cpu().clone(),
            "counts": self.counts.cpu().clone(),
            "groups": self.groups.clone(),
            "last_refresh": self.last_refresh,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (same photos and groups)."""
        if not torch.equal(torch.as_tensor(state["groups"]), self.groups):
            raise ValueError("GlobalNegativeBank.load_state_dict: the saved groups differ from this bank's")
        glob = torch.as_tensor(state["global_desc"]).float().contiguous()
        index = faiss.IndexFlatIP(glob.shape[1])
        index.add(glob.numpy())
        self.global_desc, self.index = glob, index
        self.cache = torch.as_tensor(state["cache"]).to(self.device, torch.float16)
        self.counts = torch.as_tensor(state["counts"]).long().to(self.device)
        self.last_refresh = state["last_refresh"]
