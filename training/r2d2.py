"""HNDesc-R2D2 trained self-supervised: dense descriptors with the AP loss, detector with R2D2's losses.

Each training item is one synthetic pair (:class:`~hloc_hndesc.training.data.pairs.PairDataset`,
square crops of ``data.crop`` px). Both images of every pair go through the R2D2-family
network (:class:`~hloc_hndesc.models.r2d2.R2D2Net`, ``model.variant`` full or slim) in one
batch; then

* anchors: a regular grid of image0 (``sampling.stride`` px, ``sampling.border`` px from the
  edges) kept where the homography carries them at least ``border`` px inside image1 (and in
  front of the camera); the anchor descriptor is read at the grid point, its positive by
  bilinear sampling of image1's raw descriptor map at the warped point (then L2-normalised,
  as the extractor does);
* negatives: the configured mining mode (:func:`~hloc_hndesc.training.mining.select_negatives`):
  ``in_pair`` the other anchors' positives of the same pair farther than
  ``mining.exclusion_radius`` px from the positive, ``in_batch`` positives of the other pairs of
  other groups, ``global`` those plus the bank's retrieval-mined descriptors
  (:class:`~hloc_hndesc.training.mining.GlobalNegativeBank`, refreshed with the model's own
  descriptors of the keypoints of every training photo: HNDesc's "selfgd"); ``mining.top_k``
  most similar per anchor;
* descriptor loss: ``1 - AP`` (:func:`~hloc_hndesc.training.losses.ap_loss`, ``loss.bins``
  bins on ``loss.ap_range``) of the anchor against its positive and its negatives (HNDesc);
* reliability loss (R2D2): ``1 - [AP * R + kappa * (1 - R)]`` with R the mean of image0's
  reliability at the anchor and image1's at the positive (the official sampler's choice); the
  AP is a constant there unless ``loss.detach_ap: false`` (then R2D2's coupling, which also
  down-weights the descriptor gradient of unreliable anchors);
* repeatability losses (R2D2): image1's repeatability map warped into image0 with kornia's
  ``warp_perspective`` (``H_1to0``, ``align_corners=True``: pixel centres at integers), cosine
  similarity of N x N patches (``loss.patch``) over image0's pixels seen in image1 (``valid0``),
  and the peakiness of both unwarped maps.

The total is ``sum(loss.weights[k] * term_k)``. Coordinates: x, y with pixel centres at integers,
``[x1, y1, 1] ~ H_0to1 [x0, y0, 1]``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_perspective
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.evaluation.splits import check_training_dirs
from hloc_hndesc.features.base import imagenet_normalize
from hloc_hndesc.features.r2d2 import local_maxima
from hloc_hndesc.io import resize_max
from hloc_hndesc.models.r2d2 import VARIANTS, R2D2Net

from .data.pairs import PAIR_DEFAULTS, PairDataset
from .losses import ap_candidates, ap_loss, quantized_ap, reliability_loss, repeatability_losses
from .mining import MINING_DEFAULTS, GlobalNegativeBank, mining_conf, select_negatives
from .trainer import TRAIN_DEFAULTS, train

HNDESC_R2D2_TRAIN_DEFAULTS: dict[str, Any] = {
    "task": "hndesc_r2d2",
    # in-plane rotation within ±45°: the dense descriptor has no orientation, and ±180° pairs
    # leave it no distinctiveness to learn (official slim R2D2 on ±180° pairs: AP 0.02, ±30°: 0.41)
    "data": {**PAIR_DEFAULTS, "crop": 192, "homography": {**PAIR_DEFAULTS["homography"], "rotation": 45.0}},
    "model": {"variant": "slim", "mchan": 4, "dim": 128},  # variant: slim (CPU) | full
    "sampling": {
        "stride": 8,  # px between anchors of the grid in image0
        "border": 8,  # px: anchors and their positives stay this far from the image edges
    },
    "loss": {
        "bins": 20,  # quantisation of the AP
        # similarity range of the bins; values below the range count in the lowest bin.
        # [0, 1] is R2D2's and HNDesc's code (finer bins where positives and hard negatives lie).
        "ap_range": [0.0, 1.0],
        "kappa": 0.5,  # reliability loss: AP expected of an unreliable anchor
        "detach_ap": True,  # reliability loss does not back-propagate into the AP (descriptors)
        "patch": 16,  # N of the cosim patches and of the peakiness windows
        "weights": {"ap": 1.0, "reliability": 1.0, "cosim": 1.0, "peaky": 1.0},
    },
    "mining": dict(MINING_DEFAULTS),
    # global mining: photos described at this longer side, bank descriptors at their keypoints
    "bank_image_size": 256,
    "validation": {
        "pairs": 16,  # held-out synthetic pairs (epoch 0 of the validation split)
        "keypoints": 256,  # per image, the highest reliability x repeatability local maxima
        "threshold": 3.0,  # px, MMA and keypoint repeatability
    },
    "train": {
        **TRAIN_DEFAULTS, "batch_size": 8, "lr": 1e-4, "weight_decay": 5e-4,
        "output_dir": "outputs/train/hndesc_r2d2",
    },
}

_LOSS_TERMS = ("ap", "reliability", "cosim", "peaky")


def hndesc_r2d2_train_conf(conf: Mapping[str, Any] | DictConfig | None) -> DictConfig:
    """:data:`HNDESC_R2D2_TRAIN_DEFAULTS` merged strictly with a training config, and checked."""
    merged = merge_conf(HNDESC_R2D2_TRAIN_DEFAULTS, conf, "hndesc_r2d2 training")
    crop, lc, sc = int(merged.data.crop), merged.loss, merged.sampling
    if merged.model.variant not in VARIANTS:
        raise ConfigError(f"hndesc_r2d2: model.variant={merged.model.variant!r}, expected one of {list(VARIANTS)}")
    if merged.model.variant == "slim" and crop % 2:
        raise ConfigError(f"hndesc_r2d2: the slim variant needs an even data.crop, got {crop}")
    if int(sc.stride) < 1 or int(sc.border) < 0 or crop <= 2 * int(sc.border):
        raise ConfigError(f"hndesc_r2d2: sampling needs stride >= 1 and 0 <= border < crop / 2, got {dict(sc)}")
    if int(lc.bins) < 2 or len(lc.ap_range) != 2 or not float(lc.ap_range[1]) > float(lc.ap_range[0]):
        raise ConfigError(f"hndesc_r2d2: loss needs bins >= 2 and ap_range [low, high], got {lc.bins}, {lc.ap_range}")
    if not 0.0 <= float(lc.kappa) < 1.0:
        raise ConfigError(f"hndesc_r2d2: loss.kappa must lie in [0, 1), got {lc.kappa}")
    if int(lc.patch) < 2 or int(lc.patch) % 2 or int(lc.patch) > crop:
        raise ConfigError(f"hndesc_r2d2: loss.patch must be even, >= 2 and <= the crop, got {lc.patch}")
    if any(float(lc.weights[k]) < 0 for k in _LOSS_TERMS):
        raise ConfigError(f"hndesc_r2d2: loss weights must be >= 0, got {dict(lc.weights)}")
    mining_conf(merged.mining)
    return merged


# --------------------------------------------------------------------------------------------
# Geometry and sampling helpers (batched, any device)
# --------------------------------------------------------------------------------------------


def grid_points(
    height: int, width: int, stride: int, border: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(G, 2) float x, y of a regular grid: ``border, border + stride, ...`` up to ``size - 1 - border``."""
    xs = torch.arange(border, width - border, stride, device=device, dtype=torch.float32)
    ys = torch.arange(border, height - border, stride, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def warp_points_batch(H: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (G, 2) or (B, G, 2) mapped by homographies (B, 3, 3) -> ((B, G, 2), in_front (B, G)).

    Computed in float64; ``in_front`` is False where the point goes behind the camera
    (non-positive homogeneous coordinate), whose coordinates are meaningless.
    """
    H = H.to(torch.float64)
    pts = points.to(H.device, torch.float64)
    if pts.ndim == 2:
        pts = pts.expand(H.shape[0], *pts.shape)
    homog = torch.cat([pts, torch.ones_like(pts[..., :1])], dim=-1) @ H.transpose(1, 2)
    z = homog[..., 2]
    in_front = z > 1e-8
    xy = homog[..., :2] / torch.where(in_front, z, torch.ones_like(z))[..., None]
    return xy.to(points.dtype), in_front


def sample_maps(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps (B, C, h, w) at points (B, G, 2) (pixel centres at integers) -> (B, G, C)."""
    h, w = maps.shape[-2:]
    scale = points.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (points * scale - 1.0)[:, :, None, :].to(maps.dtype)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[..., 0].transpose(1, 2)


def warp_to_image0(maps1: torch.Tensor, H_0to1: torch.Tensor, size0: tuple[int, int]) -> torch.Tensor:
    """Image1's maps (B, C, h1, w1) resampled in image0's frame (B, C, h0, w0): ``out(x0) = maps1(H x0)``.

    kornia's ``warp_perspective`` by ``H_1to0`` with ``align_corners=True`` (pixel centres at
    integers); pixels whose correspondence leaves image1 are 0.
    """
    H_1to0 = torch.linalg.inv(H_0to1.to(torch.float64)).to(maps1.dtype)
    return warp_perspective(maps1, H_1to0, (int(size0[0]), int(size0[1])), mode="bilinear", align_corners=True)


def top_keypoints(
    repeatability: torch.Tensor, reliability: torch.Tensor, num: int, radius: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``num`` best local maxima of one image's (1, 1, h, w) maps: ((K, 2) x, y, (K,) scores).

    As the extractor at one scale without thresholds: maxima of the repeatability over
    ``(2 radius + 1)`` windows, ranked by reliability x repeatability.
    """
    y, x = local_maxima(repeatability, reliability, radius, float("-inf"), float("-inf"))
    scores = repeatability[0, 0, y, x] * reliability[0, 0, y, x]
    order = torch.argsort(scores, descending=True)[: max(int(num), 0)]
    return torch.stack([x[order], y[order]], dim=-1).float(), scores[order]


def mutual_nearest_neighbours(desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
    """(M, 2) index pairs of mutual nearest neighbours of unit descriptors (N0, D) and (N1, D)."""
    if len(desc0) == 0 or len(desc1) == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=desc0.device)
    sim = desc0 @ desc1.t()
    nn01, nn10 = sim.argmax(dim=1), sim.argmax(dim=0)
    idx0 = torch.arange(len(desc0), device=desc0.device)
    keep = nn10[nn01] == idx0
    return torch.stack([idx0[keep], nn01[keep]], dim=-1)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class HNDescR2D2Task:
    """The HNDesc-R2D2 training task for :func:`~hloc_hndesc.training.trainer.train` (see the module doc)."""

    def __init__(self, conf: DictConfig) -> None:
        self.conf = conf
        mc = conf.model
        self.model = R2D2Net(str(mc.variant), int(mc.mchan), int(mc.dim))
        self.dataset = PairDataset(conf.data, "train")
        self.mining = mining_conf(conf.mining)
        self.bank: GlobalNegativeBank | None = None
        self._bank_images: list[torch.Tensor] | None = None
        if self.mining.mode == "global":
            pool = self.dataset.pool
            self.bank = GlobalNegativeBank(torch.as_tensor(pool.groups), self.mining, names=list(pool.names))
        self._val: list[dict[str, Any]] | None = None
        self.device = torch.device("cpu")

    def setup(self, context: Any) -> None:
        """Called by the trainer once the model is on its device."""
        self.device = context.device

    # -- correspondences ------------------------------------------------------------------

    def forward_pairs(self, image0: torch.Tensor, image1: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both images of B pairs through the network in one batch; outputs split per side."""
        out = self.model(imagenet_normalize(torch.cat([image0, image1])))
        b = image0.shape[0]
        maps = {}
        for key in ("raw_descriptors", "reliability", "repeatability"):
            maps[f"{key}0"], maps[f"{key}1"] = out[key][:b], out[key][b:]
        return maps

    def correspondences(self, maps: Mapping[str, torch.Tensor], H_0to1: torch.Tensor) -> dict[str, torch.Tensor]:
        """Grid anchors of image0 and their positives in image1 (see the module doc).

        Returns ``valid`` (B, G) and, for the N valid anchors, ``desc_a``/``desc_p`` (N, D) unit,
        ``kpts0``/``kpts1`` (N, 2), ``pair`` (N,) batch index, ``reliability`` (N,) (mean of both
        sides).
        """
        raw0, raw1 = maps["raw_descriptors0"], maps["raw_descriptors1"]
        b, _, h, w = raw0.shape
        stride, border = int(self.conf.sampling.stride), int(self.conf.sampling.border)
        anchors = grid_points(h, w, stride, border, raw0.device)
        kp1, in_front = warp_points_batch(H_0to1, anchors)
        valid = (
            in_front & (kp1[..., 0] >= border) & (kp1[..., 0] <= w - 1 - border)
            & (kp1[..., 1] >= border) & (kp1[..., 1] <= h - 1 - border)
        )
        kp0 = anchors.expand(b, *anchors.shape)
        desc_a = F.normalize(sample_maps(raw0.float(), kp0)[valid], dim=-1)
        desc_p = F.normalize(sample_maps(raw1.float(), kp1)[valid], dim=-1)
        rel0 = sample_maps(maps["reliability0"].float(), kp0)[valid][:, 0]
        rel1 = sample_maps(maps["reliability1"].float(), kp1)[valid][:, 0]
        pair = torch.arange(b, device=raw0.device)[:, None].expand_as(valid)[valid]
        return {
            "valid": valid, "desc_a": desc_a, "desc_p": desc_p, "kpts0": kp0[valid], "kpts1": kp1[valid],
            "pair": pair, "reliability": 0.5 * (rel0 + rel1),
        }

    # -- the loss ---------------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted AP + reliability + cosim + peakiness losses of a batch of pairs.

        The global bank is first built here (not in ``setup``) so that a resumed run uses the
        restored bank instead of rebuilding it.
        """
        if self.bank is not None and self.bank.last_refresh is None:
            self.refresh_bank(step)
        maps = self.forward_pairs(batch["image0"], batch["image1"])
        # the losses run in float32 even under the trainer's autocast (similarities near 1)
        with torch.autocast(maps["raw_descriptors0"].device.type, enabled=False):
            return self._losses({k: v.float() for k, v in maps.items()}, batch)

    def _losses(self, maps: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The four loss terms from the (float32) maps of :meth:`forward_pairs`."""
        lc = self.conf.loss
        H = batch["H_0to1"]
        corr = self.correspondences(maps, H)
        n = corr["desc_a"].shape[0]
        zero = maps["raw_descriptors0"].sum() * 0.0  # keeps every term attached to the graph
        metrics: dict[str, float] = {"anchors": float(n)}
        if n >= 2:
            groups = torch.as_tensor(batch["group"], device=corr["pair"].device)[corr["pair"]]
            photos = torch.as_tensor(batch["index"], device=corr["pair"].device)[corr["pair"]] % len(self.dataset.pool)
            negatives = select_negatives(
                self.mining, corr["desc_a"], corr["desc_p"], corr["pair"], groups, corr["kpts1"],
                bank=self.bank, image_ids=photos,
            )
            sim, pos, usable = ap_candidates(corr["desc_a"], corr["desc_p"], **negatives.loss_kwargs())
            ap_term, ap = ap_loss(sim, pos, usable, int(lc.bins), float(lc.ap_range[0]), float(lc.ap_range[1]))
            ap_for_rel = ap.detach() if bool(lc.detach_ap) else ap
            rel_term = reliability_loss(ap_for_rel, corr["reliability"], float(lc.kappa)).mean()
            metrics.update(negatives.stats)
            with torch.no_grad():
                metrics["ap"] = float(ap.mean())
                metrics["pos_similarity"] = float(sim[:, 0].mean())
                if sim.shape[1] > 1:
                    negs = torch.where(usable[:, 1:], sim[:, 1:], torch.full_like(sim[:, 1:], -2.0))
                    metrics["hardest_neg_similarity"] = float(negs.amax(dim=1).mean())
                metrics["reliability_at_anchors"] = float(corr["reliability"].mean())
        else:
            ap_term = rel_term = zero
        size0 = batch["image0"].shape[-2:]
        heat0, heat1 = maps["repeatability0"], maps["repeatability1"]
        if heat0.shape[-2:] != size0:
            raise ValueError(f"network maps {tuple(heat0.shape[-2:])} differ from the crop {tuple(size0)}")
        heat1_warped = warp_to_image0(heat1, H, (int(size0[0]), int(size0[1])))
        cosim, peaky = repeatability_losses(heat0, heat1_warped, batch["valid0"], int(lc.patch), heat1=heat1)
        terms = {"ap": ap_term, "reliability": rel_term, "cosim": cosim, "peaky": peaky}
        loss = zero + sum(float(lc.weights[k]) * terms[k] for k in _LOSS_TERMS)
        metrics.update({f"{k}_loss": float(v.detach()) for k, v in terms.items()})
        metrics["repeatability_mean"] = float(heat0.detach().mean())
        metrics["stylized_pairs"] = float(torch.as_tensor(batch["stylized"]).float().mean())
        return loss, metrics

    # -- global bank --------------------------------------------------------------------------

    def on_step_end(self, step: int) -> None:
        """Refresh the global bank when it is due."""
        if self.bank is not None and self.bank.needs_refresh(step):
            self.refresh_bank(step)

    @torch.no_grad()
    def describe_photo(self, image: torch.Tensor, num: int) -> torch.Tensor:
        """(K, D) unit descriptors at the ``num`` best keypoints of one RGB (1, 3, h, w) image in [0, 1]."""
        was_training = self.model.training
        self.model.eval()
        try:
            pred = self.model.detection_maps(imagenet_normalize(image.to(self.device, torch.float32)))
        finally:
            self.model.train(was_training)
        xy, _ = top_keypoints(pred["repeatability"], pred["reliability"], num)
        x, y = xy[:, 0].long(), xy[:, 1].long()
        return F.normalize(pred["raw_descriptors"][0][:, y, x].t().float(), dim=1)

    @torch.no_grad()
    def refresh_bank(self, step: int) -> dict[str, float]:
        """Describe every training photo with the current model and refresh the global bank."""
        assert self.bank is not None
        start = time.perf_counter()
        if self._bank_images is None:
            pool, size = self.dataset.pool, int(self.conf.bank_image_size)
            self._bank_images = [
                torch.from_numpy(resize_max(pool.load(i), size)).permute(2, 0, 1).contiguous()
                for i in tqdm(range(len(pool)), desc="bank photos", leave=False)
            ]
        num = int(self.mining.bank.locals_per_image)
        local = [
            self.describe_photo(image[None].float() / 255.0, num)
            for image in tqdm(self._bank_images, desc="bank refresh", leave=False)
        ]
        stats = self.bank.refresh(None, local, step)
        stats["describe_seconds"] = time.perf_counter() - start
        logger.info("global bank refreshed at step %d in %.1f s", step, stats["describe_seconds"])
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Task state to checkpoint: the global bank."""
        return {"bank": self.bank.state_dict()} if self.bank is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if self.bank is not None and "bank" in state:
            self.bank.load_state_dict(state["bank"])

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the final ``model.pt`` records besides the weights: the architecture (``arch: r2d2``,
        ``variant``, ``mchan``, ``dim``, read by the ``hndesc-r2d2`` extractor) and the training set-up."""
        return {
            **self.model.arch.as_meta(),
            "model": "hndesc-r2d2",
            "config": OmegaConf.to_container(self.conf, resolve=True),
            "data_dirs": [str(d) for d in self.conf.data.image_dirs],
            "train_photos": len(self.dataset.pool),
        }

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Held-out synthetic pairs (validation split, epoch 0; none if the split is empty).

        ``ap``: mean quantised AP of the grid anchors against every other anchor of the pair
        farther than ``mining.exclusion_radius`` (in-pair, no top-k: independent of the mining
        mode); ``mma``: share of mutual nearest neighbours of the ``validation.keypoints`` best
        keypoints per image within ``validation.threshold`` px (mean over pairs);
        ``repeatability``: share of image0's keypoints seen in image1 with an image1 keypoint
        that close; ``cosim``/``peaky``: the repeatability losses.
        """
        if float(self.conf.data.val_fraction) <= 0:
            return {}
        if self._val is None:
            val = PairDataset(self.conf.data, "val")
            self._val = [val[(0, i)] for i in range(min(int(self.conf.validation.pairs), len(val)))]
        if not self._val:
            return {}
        lc, vc = self.conf.loss, self.conf.validation
        thr, radius = float(vc.threshold), float(self.mining.exclusion_radius)
        rows: dict[str, list[float]] = {k: [] for k in ("ap", "mma", "matches", "repeatability", "cosim", "peaky")}
        for item in self._val:
            img0, img1 = item["image0"][None].to(self.device), item["image1"][None].to(self.device)
            H = item["H_0to1"][None].to(self.device)
            maps = self.forward_pairs(img0, img1)
            corr = self.correspondences(maps, H)
            if corr["desc_a"].shape[0] >= 2:
                kp = corr["kpts1"].double()
                far = torch.cdist(kp, kp) >= radius
                far.fill_diagonal_(False)
                sim, pos, valid = ap_candidates(corr["desc_a"], corr["desc_p"], neg_mask=far)
                rows["ap"].append(float(quantized_ap(sim, pos, valid, int(lc.bins), *map(float, lc.ap_range)).mean()))
            kps, descs = [], []
            for side in (0, 1):
                xy, _ = top_keypoints(maps[f"repeatability{side}"], maps[f"reliability{side}"], int(vc.keypoints))
                raw = maps[f"raw_descriptors{side}"][0][:, xy[:, 1].long(), xy[:, 0].long()]
                kps.append(xy)
                descs.append(F.normalize(raw.t().float(), dim=1))
            warped0, in_front = warp_points_batch(H, kps[0])
            warped0, in_front = warped0[0], in_front[0]
            matches = mutual_nearest_neighbours(descs[0], descs[1])
            if len(matches):
                err = (warped0[matches[:, 0]] - kps[1][matches[:, 1]]).norm(dim=1)
                rows["mma"].append(float(((err <= thr) & in_front[matches[:, 0]]).float().mean()))
            rows["matches"].append(float(len(matches)))
            h, w = img1.shape[-2:]
            seen = in_front & (warped0 >= 0).all(dim=1) & (warped0[:, 0] <= w - 1) & (warped0[:, 1] <= h - 1)
            if bool(seen.any()) and len(kps[1]):
                nearest = torch.cdist(warped0[seen].double(), kps[1].double()).min(dim=1).values
                rows["repeatability"].append(float((nearest <= thr).float().mean()))
            heat1_w = warp_to_image0(maps["repeatability1"].float(), H, tuple(img0.shape[-2:]))
            cosim, peaky = repeatability_losses(
                maps["repeatability0"].float(), heat1_w, item["valid0"][None].to(self.device), int(lc.patch),
                heat1=maps["repeatability1"].float(),
            )
            rows["cosim"].append(float(cosim))
            rows["peaky"].append(float(peaky))
        out = {k: sum(v) / len(v) for k, v in rows.items() if v}
        out["pairs"] = float(len(self._val))
        return out


def train_hndesc_r2d2(conf: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """Train HNDesc-R2D2 from a training config (``hloc-hndesc train --config hndesc_r2d2``)."""
    conf = hndesc_r2d2_train_conf(conf)
    check_training_dirs(conf.data.image_dirs)
    task = HNDescR2D2Task(conf)
    logger.info(
        "HNDesc-R2D2 (%s): %d training pairs per epoch of %d px crops, mining %s, batch %d pairs",
        conf.model.variant, len(task.dataset), conf.data.crop, task.mining.mode, conf.train.batch_size,
    )
    return train(task, conf.train)
