"""Multi-scale R2D2-family keypoints and descriptors (HNDesc's R2D2 backbone).

The pyramid, non-maximum suppression and thresholds reproduce the official R2D2
``extract_multiscale``, so official weights give the official keypoints:

- scales ``s = scale_factor**-k`` are kept while ``s >= max(min_scale, min_size / max(H, W))``
  and used when ``s <= min(max_scale, max_size / max(H, W))`` (0.001 tolerance);
- each level is resized from the *previous* level (a cascade, bilinear, no antialias) to
  ``(round(H * s), round(W * s))``;
- a keypoint is a pixel whose repeatability equals the maximum of its
  ``(2 * nms_radius + 1)`` window and whose repeatability and reliability reach their
  thresholds; its score is reliability x repeatability and its scale ``32 / s``.

Coordinates: pixel ``i`` of a level of width ``nw`` is the output of a bilinear
(``align_corners=False``) resize, whose centre lies at ``(i + 0.5) * W / nw - 0.5`` in
the input image with pixel centres at integers (hloc's convention). That is what we
return. The official code returns ``i * W / nw``, which puts pixel *corners* at
integers and is ``0.5 * (W / nw - 1)`` px off at downscaled levels (exact at s = 1).

Weights: ``weights`` may be a checkpoint of this project (``save_checkpoint(net, path,
meta=net.arch.as_meta())``: ``meta`` records ``arch: r2d2``, ``variant``, ``mchan``,
``dim``) or an official R2D2 file (``{'net': 'Quad_L2Net_ConfCFS()', 'state_dict':
{'module.ops.0.weight': ...}}``); the network is built from what the file records
(``net`` is matched against an allow-list, never evaluated). ``variant: auto`` follows
the file; ``full`` or ``slim`` additionally require the file to be of that variant and,
when no ``weights`` are given, select the shipped checkpoint ``hndesc-r2d2`` or
``hndesc-r2d2-slim`` (``shipped`` names another registry entry, e.g. ``hndesc-r2d2-rot45``).

Rotations: ``rotations`` lists views (degrees clockwise) to extract from, each with the pyramid
above and up to ``max_keypoints``; their keypoints are mapped back to the input and pooled, with
``oris`` = the view's angle (:mod:`hloc_hndesc.features.rotation`). Multiples of 90 are exact
pixel permutations; other angles are resampled onto a canvas filled with the ImageNet mean (zero
after normalisation, like the convolutions' padding) and keep only keypoints that map at least
``VIEW_MARGIN`` px inside the input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..models.r2d2 import R2D2ArchError, R2D2Net, arch_from_checkpoint
from ..weights import WeightsError, apply_checkpoint, load_checkpoint, shipped_weights
from .base import IMAGENET_MEAN, Extractor, empty_local_features, imagenet_normalize
from .rotation import check_rotations, inside, is_right_angle, keypoints_to_input, rotate_image

SCALE_TOL = 1e-3
#: receptive field the official code assigns to a keypoint at scale 1
BASE_SCALE = 32.0
#: keypoints of a resampled (not right-angle) view must map this many px inside the input
VIEW_MARGIN = 2.0


def _defaultdict_as_dict(*_: Any) -> dict:
    """Stand-in for ``collections.defaultdict`` while unpickling: a plain dict."""
    return {}


@contextmanager
def official_pickle_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read the official ``faster2d2`` files.

    They store training losses in a ``defaultdict(list)``, which the safe unpickler
    refuses; here it is rebuilt as a plain dict (no code of the file runs).
    """
    with torch.serialization.safe_globals([(_defaultdict_as_dict, "collections.defaultdict"), list]):
        yield


def pyramid_scales(
    height: int,
    width: int,
    scale_factor: float = 2**0.25,
    min_scale: float = 0.0,
    max_scale: float = 1.0,
    min_size: int = 256,
    max_size: int = 1024,
) -> list[tuple[float, int, int, bool]]:
    """The official schedule: ``(s, nh, nw, used)`` for every level of the resize cascade."""
    if scale_factor <= 1:
        raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
    if max_scale > 1:
        raise ValueError(f"max_scale must be <= 1 (no upsampling), got {max_scale}")
    longest = max(height, width)
    lowest = max(min_scale, min_size / longest)
    highest = min(max_scale, max_size / longest)
    levels = []
    s, nh, nw = 1.0, height, width
    while s + SCALE_TOL >= lowest:
        levels.append((s, nh, nw, s - SCALE_TOL <= highest))
        s /= scale_factor
        nh, nw = round(height * s), round(width * s)
    return levels


def local_maxima(repeatability: torch.Tensor, reliability: torch.Tensor, radius: int,
                 rep_thr: float, rel_thr: float) -> torch.Tensor:
    """(y, x) indices (2, N) of thresholded local maxima of (1, 1, h, w) maps."""
    if radius > 0:
        pooled = F.max_pool2d(repeatability, kernel_size=2 * radius + 1, stride=1, padding=radius)
        keep = repeatability == pooled
    else:
        keep = torch.ones_like(repeatability, dtype=torch.bool)
    keep &= repeatability >= rep_thr
    keep &= reliability >= rel_thr
    return keep[0, 0].nonzero().t()


class R2D2Extractor(Extractor):
    """R2D2-family multi-scale extractor: keypoints, scores, 128-D descriptors, scales."""

    default_conf: ClassVar[dict[str, Any]] = {
        "variant": "auto",  # auto | full | slim
        "max_keypoints": 5000,  # <= 0 or None: keep all
        "reliability_threshold": 0.7,
        "repeatability_threshold": 0.7,
        "scale_factor": 2**0.25,
        "min_size": 256,
        "max_size": 1024,
        "min_scale": 0.0,
        "max_scale": 1.0,
        "nms_radius": 1,
        "channels_last": True,  # NHWC convolutions: 1.3-1.5x faster on CPU, same results to ~1e-7
        # views to extract from: degrees clockwise in [0, 360) (features.rotation; multiples of 90
        # are exact); each view keeps up to max_keypoints, all in the input's frame, oris = angle.
        "rotations": [0],
        # registry name of the shipped weights used when none are given (None: hndesc-r2d2, or
        # hndesc-r2d2-slim for variant: slim); e.g. hndesc-r2d2-rot45, fine-tuned for rotations.
        "shipped": None,
    }
    in_channels: ClassVar[int] = 3
    weights_name: ClassVar[str] = "hndesc-r2d2"

    def __init__(
        self, conf: Mapping[str, Any] | DictConfig | None = None, weights: str | Path | None = None
    ) -> None:
        super().__init__(conf, weights)
        self.rotations = check_rotations(self.conf.rotations)
        variant = self.conf.variant
        if variant not in ("auto", "full", "slim"):
            raise ValueError(f"R2D2Extractor: variant must be auto, full or slim, got {variant!r}")
        name = self.shipped_name(self.conf)
        path = Path(weights) if weights is not None else shipped_weights(name)
        with official_pickle_globals():
            ckpt = load_checkpoint(path)
        try:
            arch = arch_from_checkpoint(ckpt)
        except R2D2ArchError as err:
            raise WeightsError(f"Checkpoint {path}: {err}") from None
        if variant != "auto" and arch.variant != variant:
            raise WeightsError(
                f"Checkpoint {path} holds the {arch.variant!r} R2D2 variant but the conf asks for "
                f"{variant!r}; set variant: {arch.variant} or auto"
            )
        self.net = R2D2Net(**asdict(arch))
        apply_checkpoint(self.net, name, ckpt, path)
        self.weights_path = path
        self.descriptor_dim = arch.dim
        self.net.eval()
        if self.conf.channels_last:
            self.net.to(memory_format=torch.channels_last)

    @classmethod
    def shipped_name(cls, conf: Mapping[str, Any]) -> str:
        """``conf.shipped``, else ``hndesc-r2d2`` (``hndesc-r2d2-slim`` for ``variant: slim``)."""
        return conf.get("shipped") or cls.weights_name + ("-slim" if conf.get("variant") == "slim" else "")

    @property
    def arch(self) -> dict[str, Any]:
        """Architecture of the loaded network, as recorded in checkpoints."""
        return self.net.arch.as_meta()

    @torch.no_grad()
    def _forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.rotations == (0,):
            return self._forward_upright(image, self.conf.max_keypoints)
        size = (image.shape[-1], image.shape[-2])
        views = []
        for angle in self.rotations:
            exact = is_right_angle(angle)
            view = rotate_image(image, angle, None if exact else IMAGENET_MEAN)
            pred = self._forward_upright(view, self.conf.max_keypoints if exact else None)
            pred["keypoints"] = keypoints_to_input(pred["keypoints"], angle, size)
            if not exact:
                pred = self._keep_inside(pred, size)
            pred["oris"] = torch.full_like(pred["scores"], float(angle))
            views.append(pred)
        merged = {k: torch.cat([v[k] for v in views], -1 if k == "descriptors" else 0) for k in views[0]}
        order = torch.sort(merged["scores"], descending=True, stable=True).indices
        return {k: v[:, order] if k == "descriptors" else v[order] for k, v in merged.items()}

    def _keep_inside(self, pred: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The best ``max_keypoints`` of a resampled view's score-sorted keypoints that map
        ``VIEW_MARGIN`` px or more inside the input (the canvas around it is not the image)."""
        keep = inside(pred["keypoints"], size, VIEW_MARGIN).nonzero()[:, 0]
        if self.conf.max_keypoints is not None and self.conf.max_keypoints > 0:
            keep = keep[: self.conf.max_keypoints]
        return {k: v[:, keep] if k == "descriptors" else v[keep] for k, v in pred.items()}

    def _forward_upright(self, image: torch.Tensor, max_keypoints: int | None) -> dict[str, torch.Tensor]:
        """Keypoints of one view, sorted by score, the first ``max_keypoints`` (all if None or <= 0)."""
        conf = self.conf
        _, _, height, width = image.shape
        levels = pyramid_scales(
            height, width, conf.scale_factor, conf.min_scale, conf.max_scale, conf.min_size, conf.max_size
        )
        current = imagenet_normalize(image)
        if conf.channels_last:
            current = current.contiguous(memory_format=torch.channels_last)
        keypoints, scores, descriptors, scales = [], [], [], []
        for i, (s, nh, nw, used) in enumerate(levels):
            if i > 0:
                current = F.interpolate(current, (nh, nw), mode="bilinear", align_corners=False)
            if not used:
                continue
            pred = self.net.detection_maps(current)
            y, x = local_maxima(
                pred["repeatability"], pred["reliability"], conf.nms_radius,
                conf.repeatability_threshold, conf.reliability_threshold,
            )
            rel = pred["reliability"][0, 0, y, x]
            rep = pred["repeatability"][0, 0, y, x]
            xy = torch.stack([x, y], -1).float() + 0.5
            xy = xy * xy.new_tensor([width / nw, height / nh]) - 0.5
            keypoints.append(xy)
            scores.append(rel * rep)
            descriptors.append(F.normalize(pred["raw_descriptors"][0][:, y, x], p=2, dim=0))
            scales.append(torch.full_like(rel, BASE_SCALE / s))
        if not keypoints or sum(len(k) for k in keypoints) == 0:
            return self._empty()
        scores_all = torch.cat(scores)
        order = torch.sort(scores_all, descending=True, stable=True).indices
        if max_keypoints is not None and max_keypoints > 0:
            order = order[:max_keypoints]
        return {
            "keypoints": torch.cat(keypoints)[order],
            "scores": scores_all[order],
            "descriptors": torch.cat(descriptors, 1)[:, order],
            "scales": torch.cat(scales)[order],
        }

    def _empty(self) -> dict[str, torch.Tensor]:
        out = empty_local_features(self.net.arch.dim, self.device)
        out["scales"] = torch.zeros(0, device=self.device)
        return out
