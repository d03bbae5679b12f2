"""Photometric change of a target image, deterministic given a seed or a torch.Generator.

Each operation of :data:`PHOTOMETRIC_DEFAULTS` is applied with its probability ``p``, its
strength drawn uniformly in ``range``, in the fixed order of :data:`OPERATIONS`. Drawing
(:func:`sample_photometric`) is separate from applying (:func:`apply_photometric`), so the
drawn parameters can be logged and tested. Colour operations and blurs are kornia's;
JPEG uses OpenCV's real encoder (kornia's differentiable codec costs ~140 ms per 256² image
on CPU, OpenCV's about 1 ms).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
from kornia.enhance import (
    adjust_brightness,
    adjust_contrast_with_mean_subtraction,
    adjust_gamma,
    adjust_hue,
    adjust_saturation,
)
from kornia.filters import gaussian_blur2d, motion_blur
from omegaconf import DictConfig, OmegaConf

from hloc_hndesc.config import ConfigError, merge_conf

PHOTOMETRIC_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "brightness": {"p": 0.5, "range": [-0.15, 0.15]},  # added to every channel
    "contrast": {"p": 0.5, "range": [0.6, 1.5]},  # factor about the grey mean
    "gamma": {"p": 0.3, "range": [0.6, 1.6]},  # x -> x ** gamma
    "saturation": {"p": 0.3, "range": [0.5, 1.5]},  # factor (0 = grey)
    "hue": {"p": 0.2, "range": [-0.2, 0.2]},  # hue shift, radians
    "gaussian_blur": {"p": 0.15, "range": [0.4, 1.5]},  # sigma, pixels
    "motion_blur": {"p": 0.1, "range": [3, 9]},  # kernel length, pixels (odd); random angle
    "noise": {"p": 0.3, "range": [0.0, 0.03]},  # std of additive Gaussian noise
    "jpeg": {"p": 0.1, "range": [40, 95]},  # JPEG quality
}
#: the operations, in the order they are applied.
OPERATIONS = ("brightness", "contrast", "gamma", "saturation", "hue", "gaussian_blur", "motion_blur", "noise", "jpeg")
#: allowed bounds of each operation's range.
_LIMITS = {
    "brightness": (-1.0, 1.0),
    "contrast": (0.0, math.inf),
    "gamma": (1e-3, math.inf),
    "saturation": (0.0, math.inf),
    "hue": (-math.pi, math.pi),
    "gaussian_blur": (1e-3, math.inf),
    "motion_blur": (3, 101),
    "noise": (0.0, 1.0),
    "jpeg": (1, 100),
}


def photometric_conf(conf: Mapping[str, Any] | DictConfig | None = None) -> dict[str, Any]:
    """:data:`PHOTOMETRIC_DEFAULTS` merged strictly with ``conf``, checked, as a plain dict."""
    merged = OmegaConf.to_container(merge_conf(PHOTOMETRIC_DEFAULTS, conf, "photometric"), resolve=True)
    for name in OPERATIONS:
        op = merged[name]
        lo_hi = op["range"]
        if not 0.0 <= float(op["p"]) <= 1.0:
            raise ConfigError(f"photometric: {name}.p={op['p']} must be in [0, 1]")
        if len(lo_hi) != 2 or not float(lo_hi[0]) <= float(lo_hi[1]):
            raise ConfigError(f"photometric: {name}.range={lo_hi} must be [low, high] with low <= high")
        lo, hi = _LIMITS[name]
        if not (lo <= float(lo_hi[0]) and float(lo_hi[1]) <= hi):
            raise ConfigError(f"photometric: {name}.range={lo_hi} must lie within [{lo}, {hi}]")
    return merged


def _generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(int(generator))


def sample_photometric(conf: Mapping[str, Any], generator: torch.Generator | int) -> dict[str, Any]:
    """Draw the operations to apply and their strengths: ``{name: value}`` for the chosen ones.

    ``conf`` is the output of :func:`photometric_conf`. Every operation consumes the same
    random numbers whether chosen or not, so changing one probability leaves the others'
    draws unchanged. ``motion_blur`` gives ``(length, angle_degrees, direction)``.
    """
    g = _generator(generator)
    draws = torch.rand(len(OPERATIONS), 4, generator=g, dtype=torch.float64).tolist()
    params: dict[str, Any] = {}
    if not conf["enabled"]:
        return params
    for name, (u_p, u_v, u_a, u_d) in zip(OPERATIONS, draws):
        op = conf[name]
        if u_p >= float(op["p"]):
            continue
        lo, hi = float(op["range"][0]), float(op["range"][1])
        if name == "motion_blur":
            lengths = [k for k in range(int(math.ceil(lo)), int(math.floor(hi)) + 1) if k % 2 == 1]
            if not lengths:
                raise ConfigError(f"photometric: motion_blur.range={op['range']} holds no odd length")
            length = lengths[min(int(u_v * len(lengths)), len(lengths) - 1)]
            params[name] = (length, 360.0 * u_a - 180.0, 2.0 * u_d - 1.0)
        elif name == "jpeg":
            params[name] = int(round(lo + u_v * (hi - lo)))
        else:
            params[name] = lo + u_v * (hi - lo)
    if "noise" in params:
        params["noise_seed"] = int(torch.randint(0, 2**62, (1,), generator=g))
    return params


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for img in image.reshape(-1, *image.shape[-3:]):
        arr = (img.permute(1, 2, 0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()[..., ::-1]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(arr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("photometric: OpenCV failed to encode a JPEG")
        dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        out.append(torch.from_numpy(np.ascontiguousarray(dec)).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out).reshape(image.shape).to(image.device, image.dtype)


def apply_photometric(image: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    """Apply drawn ``params`` (from :func:`sample_photometric`) to ``image`` (..., 3, H, W) in [0, 1]."""
    x = image
    if "brightness" in params:
        x = adjust_brightness(x, float(params["brightness"]))
    if "contrast" in params:
        x = adjust_contrast_with_mean_subtraction(x, float(params["contrast"]))
    if "gamma" in params:
        x = adjust_gamma(x, float(params["gamma"]))
    if "saturation" in params:
        x = adjust_saturation(x, float(params["saturation"]))
    if "hue" in params:
        x = adjust_hue(x, float(params["hue"]))
    x = x.clamp(0.0, 1.0)
    if "gaussian_blur" in params or "motion_blur" in params:
        shape = x.shape
        x = x.reshape(-1, *shape[-3:])
        if "gaussian_blur" in params:
            sigma = float(params["gaussian_blur"])
            k = 2 * int(math.ceil(3.0 * sigma)) + 1
            x = gaussian_blur2d(x, (k, k), torch.tensor([[sigma, sigma]], dtype=x.dtype).expand(x.shape[0], 2))
        if "motion_blur" in params:
            length, angle, direction = params["motion_blur"]
            x = motion_blur(x, int(length), float(angle), float(direction))
        x = x.reshape(shape)
    if "noise" in params:
        g = torch.Generator().manual_seed(int(params["noise_seed"]))
        x = x + float(params["noise"]) * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
        x = x.clamp(0.0, 1.0)
    if "jpeg" in params:
        x = _jpeg(x, int(params["jpeg"]))
    return x.clamp(0.0, 1.0)


def photometric(
    image: torch.Tensor, conf: Mapping[str, Any], generator: torch.Generator | int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw and apply a photometric change; returns the new image and the drawn parameters."""
    params = sample_photometric(conf, generator)
    return apply_photometric(image, params), params
