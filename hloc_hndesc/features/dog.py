"""DoG keypoints (and the RootSIFT baseline) through pycolmap's SIFT.

Conventions of what is returned:

- ``keypoints`` (N, 2) float32, x, y with pixel centres at integer coordinates (hloc's
  convention). pycolmap reports COLMAP coordinates (pixel centres at +0.5): 0.5 is subtracted.
- ``scales`` (N,) the DoG sigma in input pixels, ``oris`` (N,) the SIFT orientation in
  degrees as pycolmap gives it (angle of the dominant gradient in image axes, y down, so a
  positive angle turns clockwise on screen; 0 everywhere with ``upright``).
- ``scores`` (N,) the magnitude of the DoG response at the keypoint (x, y, sigma),
  trilinearly interpolated in a Gaussian scale space built like VLFeat's (sigma0 1.6,
  ``octave_resolution`` levels per octave, from ``first_octave``). This is the quantity
  SIFT thresholds with ``peak_threshold``; pycolmap does not return it.

Keypoint cap: ``max_keypoints`` keeps the keypoints of largest score (ties keep detection
order, so the result is deterministic). pycolmap's own ``max_num_features`` is a coarse cap:
it drops whole DoG levels from the finest up and keeps the level that crosses the limit,
so it keeps only the largest scales and may still exceed the limit. It is therefore
set very high here by default and ``max_keypoints`` is the cap to use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import cv2
import numpy as np
import pycolmap
import torch
from omegaconf import OmegaConf

from .base import Extractor

#: DoG options for ~1000 px photos (first_octave -1 and peak threshold 0.02/3 registered all
#: sacre_coeur images; upstream hloc's sparser first_octave 0 / 0.01 did not).
DEFAULT_DOG_OPTIONS: dict[str, Any] = {
    "first_octave": -1,
    "num_octaves": 4,
    "octave_resolution": 3,
    "peak_threshold": 0.02 / 3,
    "edge_threshold": 10.0,
    "max_num_orientations": 2,
    "darkness_adaptivity": False,
    "max_num_features": 1 << 20,
}
#: options the functions below set themselves.
_RESERVED = ("upright", "estimate_affine_shape", "normalization")
SIGMA0 = 1.6
EPS = 1e-6


def dog_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``DEFAULT_DOG_OPTIONS`` updated with ``options``; unknown or reserved keys raise ValueError."""
    merged = dict(DEFAULT_DOG_OPTIONS)
    known = pycolmap.SiftExtractionOptions()
    for key, value in dict(options or {}).items():
        if key in _RESERVED:
            raise ValueError(f"DoG option {key!r} is set by the extractor (use upright=...), not in options")
        if not hasattr(known, key):
            raise ValueError(
                f"unknown DoG option {key!r}; pycolmap.SiftExtractionOptions has "
                f"{sorted(k for k in dir(known) if not k.startswith('_'))}"
            )
        merged[key] = value
    return merged


def _make_sift(items: tuple[tuple[str, Any], ...], upright: bool, cuda: bool) -> pycolmap.Sift:
    options = dict(items)
    options.update(upright=upright, estimate_affine_shape=False, normalization=pycolmap.Normalization.L1_ROOT)
    sift_options = pycolmap.SiftExtractionOptions(options)
    device = pycolmap.Device.cuda if cuda else pycolmap.Device.cpu
    with warnings.catch_warnings():
        # pycolmap 4.1 deprecates Sift for FeatureExtractor, whose outputs need conversion.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pycolmap.Sift(options=pycolmap.FeatureExtractionOptions(sift=sift_options), device=device)


_cached_cuda_sift = lru_cache(maxsize=8)(_make_sift)


def _sift(items: tuple[tuple[str, Any], ...], upright: bool, cuda: bool) -> pycolmap.Sift:
    """A pycolmap Sift for these options: cached on CUDA, fresh on CPU.

    pycolmap 4.1.1's CPU extractor keeps VLFeat's filter between images of the same size
    and its output then depends on the previous image (a synthetic blob found by a fresh
    extractor is missed after another image; tests/test_dog.py checks history
    independence). A CPU extractor costs ~30 us to create, so one is made per call.
    """
    return _cached_cuda_sift(items, upright, True) if cuda else _make_sift(items, upright, False)


def _to_numpy(image: torch.Tensor) -> np.ndarray:
    """(1, 1, H, W) float tensor in [0, 1] -> C-contiguous float32 (H, W) array in [0, 1]."""
    if image.ndim != 4 or image.shape[:2] != (1, 1):
        raise ValueError(f"expected a grey image tensor of shape (1, 1, H, W), got {tuple(image.shape)}")
    if not torch.is_floating_point(image):
        raise ValueError(f"expected a float image in [0, 1], got dtype {image.dtype}")
    array = image[0, 0].detach().to("cpu", torch.float32).clamp(0.0, 1.0).numpy()
    return np.ascontiguousarray(array)


def _gaussian_octaves(
    image: np.ndarray, first_octave: int, levels: int, num_octaves: int
) -> list[np.ndarray]:
    """DoG stacks (levels + 1, H_o, W_o) per octave, VLFeat style (input blur 0.5 px)."""
    factor = 2.0 ** (-first_octave)
    h, w = image.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    base = image if factor == 1 else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    nominal = 0.5 * factor
    if SIGMA0 > nominal:
        base = cv2.GaussianBlur(base, (0, 0), math.sqrt(SIGMA0**2 - nominal**2))
    k = 2.0 ** (1.0 / levels)
    octaves = []
    for _ in range(num_octaves):
        gauss = [base]
        for s in range(1, levels + 2):
            delta = SIGMA0 * k ** (s - 1) * math.sqrt(k * k - 1.0)
            gauss.append(cv2.GaussianBlur(gauss[-1], (0, 0), delta))
        stack = np.stack(gauss)
        octaves.append(stack[1:] - stack[:-1])
        base = gauss[levels][::2, ::2]
        if min(base.shape) < 2:
            break
    return octaves


def dog_responses(
    image: np.ndarray,
    keypoints: np.ndarray,
    scales: np.ndarray,
    first_octave: int = -1,
    octave_resolution: int = 3,
) -> np.ndarray:
    """|DoG| at keypoints (hloc convention, sigma in input pixels) of a (H, W) float image.

    Octave and level come from sigma = 1.6 * 2^(first_octave + o + s / octave_resolution);
    values are interpolated bilinearly in x, y and linearly in the level.
    """
    scores = np.zeros(len(keypoints), np.float32)
    if len(keypoints) == 0:
        return scores
    levels = octave_resolution
    t = np.log2(np.maximum(scales, EPS) / SIGMA0) - first_octave
    octave = np.floor(t).astype(np.int64).clip(0, None)
    stacks = _gaussian_octaves(image, first_octave, levels, int(octave.max()) + 1)
    octave = octave.clip(0, len(stacks) - 1)
    level = np.clip(levels * (t - octave), 0.0, float(levels))
    # input pixel x -> base pixel (x + 0.5) * 2^-f - 0.5, then halved per octave (decimation).
    base_xy = (keypoints + 0.5) * 2.0 ** (-first_octave) - 0.5
    for o, dog in enumerate(stacks):
        sel = np.nonzero(octave == o)[0]
        if len(sel) == 0:
            continue
        n_lev, h, w = dog.shape
        xy = base_xy[sel] / 2.0**o
        x = xy[:, 0].clip(0, w - 1)
        y = xy[:, 1].clip(0, h - 1)
        s = level[sel].clip(0, n_lev - 1)
        x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
        y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
        s0 = np.minimum(np.floor(s).astype(np.int64), max(n_lev - 2, 0))
        fx, fy, fs = x - x0, y - y0, s - s0
        x1, y1, s1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1), np.minimum(s0 + 1, n_lev - 1)

        def plane(li: np.ndarray) -> np.ndarray:
            top = dog[li, y0, x0] * (1 - fx) + dog[li, y0, x1] * fx
            bottom = dog[li, y1, x0] * (1 - fx) + dog[li, y1, x1] * fx
            return top * (1 - fy) + bottom * fy

        scores[sel] = np.abs(plane(s0) * (1 - fs) + plane(s1) * fs)
    return scores


def _extract(
    image: torch.Tensor,
    options: Mapping[str, Any] | None,
    max_keypoints: int,
    upright: bool,
    with_descriptors: bool,
) -> dict[str, torch.Tensor]:
    opts = dog_options(options)
    array = _to_numpy(image)
    cuda = image.is_cuda and bool(pycolmap.has_cuda)
    sift = _sift(tuple(sorted(opts.items())), bool(upright), cuda)
    if min(array.shape) >= 8:
        kpts, descs = sift.extract(array)
    else:
        kpts, descs = np.zeros((0, 4), np.float32), np.zeros((0, 128), np.float32)
    kpts = kpts.astype(np.float32, copy=False).reshape(-1, 4)
    xy = kpts[:, :2] - 0.5
    scales = kpts[:, 2]
    oris = np.zeros_like(scales) if upright else np.rad2deg(kpts[:, 3])
    scores = dog_responses(array, xy, scales, opts["first_octave"], opts["octave_resolution"])
    if max_keypoints is not None and max_keypoints >= 0 and len(scores) > max_keypoints:
        keep = np.sort(np.argsort(-scores, kind="stable")[:max_keypoints])
        xy, scales, oris, scores, descs = xy[keep], scales[keep], oris[keep], scores[keep], descs[keep]
    device = image.device
    out = {
        "keypoints": torch.from_numpy(np.ascontiguousarray(xy, np.float32)).to(device),
        "scales": torch.from_numpy(np.ascontiguousarray(scales, np.float32)).to(device),
        "oris": torch.from_numpy(np.ascontiguousarray(oris, np.float32)).to(device),
        "scores": torch.from_numpy(np.ascontiguousarray(scores, np.float32)).to(device),
    }
    if with_descriptors:
        # pycolmap already applied L1_ROOT (then uint8 quantisation): only re-normalise.
        descs = np.maximum(descs.reshape(-1, 128), 0.0)
        descs = descs / (np.linalg.norm(descs, axis=1, keepdims=True) + EPS)
        out["descriptors"] = torch.from_numpy(np.ascontiguousarray(descs.T, np.float32)).to(device)
    return out


def detect_dog(
    image: torch.Tensor,
    options: Mapping[str, Any] | None = None,
    max_keypoints: int = -1,
    upright: bool = False,
) -> dict[str, torch.Tensor]:
    """DoG keypoints of a (1, 1, H, W) float image in [0, 1] through pycolmap.

    Returns ``keypoints`` (N, 2) in hloc's convention, ``scales`` (N,), ``oris`` (N,,
    degrees), ``scores`` (N,, |DoG|), float32 on the image's device. ``options`` update
    :data:`DEFAULT_DOG_OPTIONS`; ``max_keypoints`` (-1: all) keeps the highest scores;
    ``upright`` gives orientation 0 (one keypoint per location).
    """
    return _extract(image, options, max_keypoints, upright, with_descriptors=False)


def extract_sift(
    image: torch.Tensor,
    options: Mapping[str, Any] | None = None,
    max_keypoints: int = -1,
    upright: bool = False,
) -> dict[str, torch.Tensor]:
    """The SIFT baseline: :func:`detect_dog` plus RootSIFT ``descriptors`` (128, N), unit norm.

    pycolmap computes RootSIFT itself (L1 normalisation, square root, uint8 quantisation);
    it is only L2-renormalised here. (Upstream hloc's ``dog`` applies the root a second
    time, giving the fourth root of SIFT.)
    """
    return _extract(image, options, max_keypoints, upright, with_descriptors=True)


def sift_to_rootsift(descriptors: np.ndarray) -> np.ndarray:
    """(N, 128) SIFT (any normalisation) -> RootSIFT: L1-normalise, square root, L2-normalise."""
    x = np.maximum(np.asarray(descriptors, np.float32), 0.0)
    x = x / (x.sum(axis=-1, keepdims=True) + EPS)
    x = np.sqrt(x)
    return (x / (np.linalg.norm(x, axis=-1, keepdims=True) + EPS)).astype(np.float32)


class SIFTExtractor(Extractor):
    """The SIFT baseline as an extractor: pycolmap DoG + RootSIFT, no network, no weights.

    Settings are DESIGN.md §7's (``first_octave`` -1, peak threshold 0.02/3); ``options``
    update :data:`DEFAULT_DOG_OPTIONS`, ``max_keypoints`` -1 keeps all.
    """

    default_conf: ClassVar[dict[str, Any]] = {"max_keypoints": -1, "upright": False, "options": {}}
    in_channels: ClassVar[int] = 1
    descriptor_dim = 128

    def __init__(self, conf: Mapping[str, Any] | None = None, weights: str | None = None) -> None:
        super().__init__(conf)
        if weights is not None:
            raise ValueError(f"SIFT has no weights, got {weights!r}")
        self.options = dog_options(OmegaConf.to_container(self.conf.options))

    def _forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return extract_sift(image, self.options, int(self.conf.max_keypoints), bool(self.conf.upright))
