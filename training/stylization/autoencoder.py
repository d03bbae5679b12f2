"""Training of the stylization encoder/decoder on the unlabelled photos (reconstruction only).

The feature-space variant of the stylization whitens and colours the encoder's features and
decodes them with the content's pooling indices (:mod:`hloc_hndesc.models.stylizer`). No
pretrained VGG is available here, so the autoencoder is trained from scratch on the training
photos with an L1 pixel loss plus an L1 loss on Sobel gradients (edges stay sharp); there is
no perceptual loss. Random crops, flips and a strong random colour jitter (gains, brightness,
gamma, contrast, saturation, hue, including night-dark exposures) make the codes cover the
colour changes that the transform later applies to them.

Photos are downscaled once to ``data.max_size`` and kept in memory as uint8. A held-out slice
is chosen deterministically from the sha256 of each photo's path relative to its folder, so
the split does not depend on the order or number of the other photos.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from kornia.enhance import adjust_gamma, adjust_hue, adjust_saturation
from kornia.filters import spatial_gradient
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hloc_hndesc import logger
from hloc_hndesc.config import merge_conf
from hloc_hndesc.evaluation.splits import check_training_dirs
from hloc_hndesc.io import float_to_uint8, image_to_tensor, list_images, read_image, resize_max
from hloc_hndesc.provenance import git_commit
from hloc_hndesc.training.data.photos import split_value
from hloc_hndesc.models.stylizer import STYLIZER_DEFAULTS, StylizerAutoencoder
from hloc_hndesc.weights import apply_checkpoint, load_checkpoint, save_checkpoint, shipped_weights

#: registry name of the trained autoencoder.
WEIGHTS_NAME = "stylizer_ae"

AE_TRAIN_DEFAULTS: dict[str, Any] = {
    "task": "stylizer_ae",
    "model": dict(STYLIZER_DEFAULTS),
    "data": {
        # training photo folders (relative paths are resolved against the current directory).
        "image_dirs": [],
        # longer side of the in-memory copies of the photos.
        "max_size": 384,
        # side of the square random training crops.
        "crop": 128,
        # fraction of photos held out for validation (by sha256 of the relative path).
        "val_fraction": 0.05,
        # use only the first N photos of each folder (sorted names); None: all.
        "max_images": None,
    },
    "augment": {
        "hflip": True,
        "vflip": False,
        # probability that a crop is colour-jittered at all.
        "jitter_prob": 0.8,
        # per-channel gains exp(U(-g, g)): colour casts.
        "channel_gain": 0.25,
        # multiplicative exposure, log-uniform in [lo, hi] (low values are night-dark).
        "brightness": [0.25, 1.4],
        # gamma exp(U(-log g, log g)).
        "gamma": 1.8,
        # contrast factor U(1 - c, 1 + c) around the crop mean.
        "contrast": 0.35,
        # saturation factor U(lo, hi).
        "saturation": [0.2, 1.8],
        # hue shift U(-h, h), in turns (1 = full circle).
        "hue": 0.08,
    },
    "loss": {"l1": 1.0, "gradient": 1.0},
    "train": {
        "steps": 3000,
        "batch_size": 8,
        "lr": 1e-3,
        # linear warm-up steps, then a cosine decay to lr * lr_final_factor.
        "warmup": 100,
        "lr_final_factor": 0.05,
        "seed": 0,
    },
    # training-loss rows averaged per log line / curve point.
    "log_every": 50,
    # validation every N steps (0: only at the end).
    "val_every": 0,
    "output_dir": "outputs/stylizer_ae",
    "progress": True,
}


def split_names(names: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) names: a photo is held out when ``split_value(name) < val_fraction``.

    When that selects nothing although ``val_fraction > 0`` (tiny sets), the photo with the
    smallest value is held out so that validation is never empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    val = [n for n in names if split_value(n) < val_fraction]
    if not val and val_fraction > 0 and len(names) > 1:
        val = [min(names, key=split_value)]
    held = set(val)
    return [n for n in names if n not in held], val


def load_photos(conf: DictConfig) -> dict[str, Any]:
    """Read, downscale and split the photos of ``conf.data.image_dirs`` (uint8 arrays in memory)."""
    data = conf.data
    dirs = [str(d) for d in data.image_dirs]
    if not dirs:
        raise ValueError("data.image_dirs is empty: name at least one training photo folder")
    check_training_dirs(dirs)
    crop = int(data.crop)
    out: dict[str, Any] = {"train": [], "val": [], "train_names": [], "val_names": [], "counts": {}}
    for folder in dirs:
        names = list_images(folder)
        if data.max_images is not None:
            names = names[: int(data.max_images)]
        train, val = split_names(names, float(data.val_fraction))
        out["counts"][folder] = {"train": len(train), "val": len(val)}
        for split, subset in (("train", train), ("val", val)):
            for name in tqdm(subset, desc=f"reading {split} photos", disable=not conf.progress, leave=False):
                image = resize_max(read_image(Path(folder) / name), int(data.max_size))
                h, w = image.shape[:2]
                if split == "train" and min(h, w) < crop:
                    image = resize_max(image, int(math.ceil(max(h, w) * crop / min(h, w))), force=True)
                out[split].append(float_to_uint8(image))
                out[f"{split}_names"].append(f"{folder}::{name}")
    if not out["train"]:
        raise ValueError(f"no training photos left in {dirs} after holding out the validation slice")
    return out


def sample_crops(
    images: Sequence[np.ndarray], batch_size: int, crop: int, conf: DictConfig, gen: torch.Generator
) -> torch.Tensor:
    """A batch (B, 3, crop, crop) in [0, 1] of random crops with random flips."""
    picks = torch.randint(len(images), (batch_size,), generator=gen).tolist()
    crops = []
    for i in picks:
        image = images[i]
        h, w = image.shape[:2]
        y = int(torch.randint(h - crop + 1, (1,), generator=gen))
        x = int(torch.randint(w - crop + 1, (1,), generator=gen))
        crops.append(torch.from_numpy(image[y : y + crop, x : x + crop]))
    batch = torch.stack(crops).permute(0, 3, 1, 2).float() / 255.0
    for flag, dim in ((conf.hflip, 3), (conf.vflip, 2)):
        if flag:
            flip = torch.rand(batch_size, generator=gen) < 0.5
            batch[flip] = batch[flip].flip(dim)
    return batch.contiguous()


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def colour_jitter(x: torch.Tensor, conf: DictConfig, gen: torch.Generator) -> torch.Tensor:
    """Random per-image colour changes of (B, 3, H, W) images in [0, 1] (see ``augment``)."""
    b = x.shape[0]
    on = (torch.rand(b, generator=gen) < float(conf.jitter_prob)).float()

    def factor(values: torch.Tensor, identity: float) -> torch.Tensor:
        return on * values + (1 - on) * identity

    g = float(conf.channel_gain)
    gains = torch.exp(_uniform(3 * b, -g, g, gen).view(b, 3))
    gains = on[:, None] * gains + (1 - on[:, None])
    lo, hi = (float(v) for v in conf.brightness)
    exposure = factor(torch.exp(_uniform(b, math.log(lo), math.log(hi), gen)), 1.0)
    x = (x * gains[:, :, None, None] * exposure[:, None, None, None]).clamp(0, 1)
    lg = math.log(float(conf.gamma))
    x = adjust_gamma(x, factor(torch.exp(_uniform(b, -lg, lg, gen)), 1.0))
    c = float(conf.contrast)
    contrast = factor(_uniform(b, 1 - c, 1 + c, gen), 1.0)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    lo, hi = (float(v) for v in conf.saturation)
    x = adjust_saturation(x, factor(_uniform(b, lo, hi, gen), 1.0)).clamp(0, 1)
    h = float(conf.hue)
    x = adjust_hue(x, factor(_uniform(b, -h, h, gen), 0.0) * 2 * math.pi)
    return x.clamp(0, 1)


def reconstruction_loss(
    out: torch.Tensor, target: torch.Tensor, weights: Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted L1 on pixels plus L1 on normalised Sobel gradients; also the parts."""
    l1 = (out - target).abs().mean()
    grad = (spatial_gradient(out, "sobel") - spatial_gradient(target, "sobel")).abs().mean()
    loss = float(weights["l1"]) * l1 + float(weights["gradient"]) * grad
    return loss, {"l1": float(l1.detach()), "gradient": float(grad.detach())}


def _psnr_l1(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    mse = float(((pred - target) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12)), float((pred - target).abs().mean())


def _mean_scores(scores: list[tuple[float, float]]) -> dict[str, float]:
    if not scores:
        return {"psnr": float("nan"), "l1": float("nan")}
    return {"psnr": statistics.fmean(s[0] for s in scores), "l1": statistics.fmean(s[1] for s in scores)}


@torch.no_grad()
def evaluate(
    net: StylizerAutoencoder,
    images: Sequence[np.ndarray],
    jitter: DictConfig | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mean PSNR (dB) and L1 of the reconstructions of whole images (optionally jittered)."""
    was_training = net.training
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for image in images:
        x = image_to_tensor(image)
        if jitter is not None:
            x = colour_jitter(x, jitter, gen)
        scores.append(_psnr_l1(net(x), x))
    net.train(was_training)
    return _mean_scores(scores)


def bilinear_baseline(images: Sequence[np.ndarray], factor: int = 4) -> dict[str, float]:
    """PSNR and L1 of an antialiased bilinear downsampling by ``factor`` and upsampling back."""
    scores = []
    for image in images:
        x = image_to_tensor(image)
        h, w = x.shape[-2:]
        small = F.interpolate(
            x, size=(max(1, h // factor), max(1, w // factor)), mode="bilinear", antialias=True, align_corners=False
        )
        up = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        scores.append(_psnr_l1(up, x))
    return _mean_scores(scores)


def learning_rate(step: int, conf: DictConfig) -> float:
    """Linear warm-up then cosine decay from ``lr`` to ``lr * lr_final_factor``."""
    lr, steps, warm = float(conf.lr), int(conf.steps), int(conf.warmup)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    final = lr * float(conf.lr_final_factor)
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * min(1.0, t)))


def train_autoencoder(conf: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """Train the stylization autoencoder; write ``checkpoint.pth`` and ``log.csv``; return metrics.

    ``conf`` overrides :data:`AE_TRAIN_DEFAULTS` (unknown keys raise ConfigError). The torch
    thread count is left as set by the caller (``torch.set_num_threads``).
    """
    conf = merge_conf(AE_TRAIN_DEFAULTS, conf, "stylizer autoencoder training")
    start = time.perf_counter()
    tconf = conf.train
    steps, batch_size, crop = int(tconf.steps), int(tconf.batch_size), int(conf.data.crop)
    if steps < 1 or batch_size < 1 or crop < 8:
        raise ValueError(f"need train.steps >= 1, train.batch_size >= 1, data.crop >= 8; got {steps}, {batch_size}, {crop}")
    out_dir = Path(conf.output_dir)
    photos = load_photos(conf)
    load_time = time.perf_counter() - start
    logger.info(
        "stylizer AE: %d training and %d held-out photos from %s (%.1f s to load), %d torch threads",
        len(photos["train"]), len(photos["val"]), list(conf.data.image_dirs), load_time, torch.get_num_threads(),
    )

    torch.manual_seed(int(tconf.seed))
    gen = torch.Generator().manual_seed(int(tconf.seed))
    net = StylizerAutoencoder(conf.model)
    net.train()
    optim = torch.optim.Adam(net.parameters(), lr=float(tconf.lr))
    out_dir.mkdir(parents=True, exist_ok=True)

    log_every = max(1, int(conf.log_every))
    curve: list[list[float]] = []
    val_curve: list[list[float]] = []
    window: list[float] = []
    step_times: list[float] = []
    train_start = time.perf_counter()
    with open(out_dir / "log.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "l1", "gradient", "lr", "step_time_s"])
        bar = tqdm(range(steps), desc="stylizer AE", disable=not conf.progress)
        for step in bar:
            t0 = time.perf_counter()
            lr = learning_rate(step, tconf)
            for group in optim.param_groups:
                group["lr"] = lr
            batch = colour_jitter(sample_crops(photos["train"], batch_size, crop, conf.augment, gen), conf.augment, gen)
            loss, parts = reconstruction_loss(net(batch, clamp=False), batch, conf.loss)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            dt = time.perf_counter() - t0
            step_times.append(dt)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"stylizer AE: loss became {value} at step {step}")
            window.append(value)
            writer.writerow([step, f"{value:.6f}", f"{parts['l1']:.6f}", f"{parts['gradient']:.6f}", f"{lr:.3e}", f"{dt:.4f}"])
            if len(window) == log_every or step == steps - 1:
                curve.append([step + 1, statistics.fmean(window)])
                bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
                logger.debug("step %d: loss %.4f, lr %.2e", step + 1, curve[-1][1], lr)
                window = []
                fh.flush()
            if int(conf.val_every) > 0 and (step + 1) % int(conf.val_every) == 0 and step + 1 < steps:
                val_curve.append([step + 1, evaluate(net, photos["val"])["psnr"]])
    train_time = time.perf_counter() - train_start

    net.eval()
    val = evaluate(net, photos["val"])
    val_jitter = evaluate(net, photos["val"], conf.augment, seed=int(tconf.seed))
    val_curve.append([steps, val["psnr"]])
    metrics: dict[str, Any] = {
        "steps": steps,
        "images_seen": steps * batch_size,
        "crop": crop,
        "n_train": len(photos["train"]),
        "n_val": len(photos["val"]),
        "threads": torch.get_num_threads(),
        "load_time_s": load_time,
        "train_time_s": train_time,
        "median_step_time_s": statistics.median(step_times),
        "loss_start": curve[0][1],
        "loss_end": curve[-1][1],
        "loss_curve": curve,
        "val": val,
        "val_jittered": val_jitter,
        "val_psnr_curve": val_curve,
        "baseline_bilinear_x4": bilinear_baseline(photos["val"], 4),
    }
    metrics["wall_time_s"] = time.perf_counter() - start
    meta = {
        "model": WEIGHTS_NAME,
        "model_conf": OmegaConf.to_container(net.conf, resolve=True),
        "config": OmegaConf.to_container(conf, resolve=True),
        "metrics": metrics,
        "data_dirs": [str(d) for d in conf.data.image_dirs],
        "data_counts": photos["counts"],
        "val_names": photos["val_names"],
        "git_commit": git_commit(),
    }
    path = out_dir / "checkpoint.pth"
    metrics["sha256"] = save_checkpoint(net, path, meta)
    metrics["checkpoint"] = str(path)
    logger.info(
        "stylizer AE: %d steps in %.0f s, loss %.4f -> %.4f, held-out PSNR %.2f dB (bilinear x4: %.2f dB) -> %s",
        steps, metrics["wall_time_s"], metrics["loss_start"], metrics["loss_end"], val["psnr"],
        metrics["baseline_bilinear_x4"]["psnr"], path,
    )
    return metrics


def load_autoencoder(weights: str | Path | None = None) -> StylizerAutoencoder:
    """The trained autoencoder (eval mode) from ``weights`` or the shipped checkpoint.

    The architecture is rebuilt from the checkpoint's ``meta.model_conf`` when present.
    Raises NoWeightsError when no weights are given and none are shipped.
    """
    path = Path(weights) if weights is not None else shipped_weights(WEIGHTS_NAME)
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    net = StylizerAutoencoder(meta.get("model_conf"))
    apply_checkpoint(net, WEIGHTS_NAME, ckpt, path)
    return net.eval()
