"""Standalone extraction: an image folder to an hloc-layout features file.

Works with or without hloc. Resumable: complete entries are skipped, leftovers of
an interrupted run are discarded, and each entry is written atomically
(:mod:`hloc_hndesc.h5io`). Bad images are reported by name and skipped; the run
continues. Keypoints are stored in float32 (hloc's ``as_half`` would round them to
whole pixels above ~1024 px); descriptors may be stored as float16 with ``as_half``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import logger
from .confs import PREPROCESSING_KEYS, build_extractor, get_conf
from .features.base import Extractor, empty_local_features
from .config import ConfigError
from .h5io import complete_names, discard_incomplete, write_entry
from .io import ImageReadError, list_images, read_image, resize_max

#: smallest image side any extractor can describe (one 32x32 patch / network receptive field).
MIN_IMAGE_SIDE = 32
#: network input larger than this many pixels is refused before it exhausts memory.
MAX_INPUT_PIXELS = 4096 * 4096


@dataclass
class ExtractionReport:
    """What a run did: written, already complete, and skipped images with the reason."""

    path: Path
    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)


def _check_preprocessing(pre: dict[str, Any]) -> None:
    unknown = set(pre) - set(PREPROCESSING_KEYS)
    if unknown:
        raise ConfigError(
            f"preprocessing: unknown config key(s) {sorted(unknown)} (known keys: {', '.join(PREPROCESSING_KEYS)})"
        )




def describe_image(
    extractor: Extractor, image: np.ndarray, preprocessing: dict[str, Any], name: str
) -> dict[str, np.ndarray]:
    """Run ``extractor`` on one decoded image, returning arrays at the original resolution.

    Keypoints are rescaled as hloc does, ``(kp + 0.5) * s - 0.5``, and get the keypoint
    uncertainty (the resize factor) in ``"uncertainty"``.
    """
    original = np.array(image.shape[:2][::-1])
    resized = resize_max(image, preprocessing.get("resize_max"), preprocessing.get("resize_force", False))
    h, w = resized.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        if extractor.is_global:
            raise ImageReadError(f"{name}: image of {w}x{h} px is smaller than {MIN_IMAGE_SIDE} px")
        logger.warning("%s: %dx%d px is smaller than one patch: writing an empty entry.", name, w, h)
        pred = {k: v.numpy() for k, v in empty_local_features(extractor.descriptor_dim).items()}
    else:
        if h * w > MAX_INPUT_PIXELS:
            raise ImageReadError(
                f"{name}: {w}x{h} px at the chosen resolution exceeds {MAX_INPUT_PIXELS} px; "
                "set preprocessing.resize_max"
            )
        tensor = torch.from_numpy(resized)
        tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
        try:
            with torch.inference_mode():
                out = extractor(tensor)
        except torch.OutOfMemoryError:
            raise ImageReadError(f"{name}: out of memory at {w}x{h} px; lower resize_max") from None
        pred = {k: v.detach().float().cpu().numpy() for k, v in out.items()}
    if "keypoints" in pred:
        scale = (original / np.array([w, h])).astype(np.float32)
        pred["keypoints"] = ((pred["keypoints"] + 0.5) * scale[None] - 0.5).astype(np.float32)
        if "scales" in pred:
            pred["scales"] = pred["scales"] * scale.mean()
        pred["uncertainty"] = np.float32(scale.mean())
    pred["image_size"] = original
    return pred


def extract(
    conf: str | dict[str, Any],
    image_dir: str | Path,
    feature_path: str | Path,
    image_list: Sequence[str] | None = None,
    weights: str | Path | None = None,
    overwrite: bool = False,
    as_half: bool = False,
    device: str | None = None,
) -> ExtractionReport:
    """Extract features of every image of ``image_dir`` (or ``image_list``) into ``feature_path``."""
    conf = get_conf(conf) if isinstance(conf, str) else conf
    preprocessing = dict(conf.get("preprocessing", {}))
    _check_preprocessing(preprocessing)
    image_dir, feature_path = Path(image_dir), Path(feature_path)
    names = list(image_list) if image_list is not None else list_images(image_dir)
    report = ExtractionReport(feature_path)

    removed = discard_incomplete(feature_path)
    if removed:
        logger.info("Discarded %d incomplete entries of an interrupted run.", removed)
    done = set() if overwrite else complete_names(feature_path)
    report.existing = [n for n in names if n in done]
    todo = [n for n in names if n not in done]
    if not todo:
        logger.info("All %d images already in %s.", len(names), feature_path)
        return report

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = build_extractor(conf["model"], weights=None if weights is None else str(weights))
    extractor = extractor.eval().to(device)
    grayscale = bool(preprocessing.get("grayscale", False))

    for name in tqdm(todo, desc=f"extract {conf.get('output', '')}", unit="img"):
        try:
            image = read_image(image_dir / name, grayscale=grayscale)
            pred = describe_image(extractor, image, preprocessing, name)
        except ImageReadError as err:
            report.skipped[name] = str(err)
            logger.warning("Skipping %s", err)
            continue
        if as_half:
            for key in ("descriptors", "global_descriptor"):
                if key in pred:
                    pred[key] = pred[key].astype(np.float16)
        if "keypoints" in pred and len(pred["keypoints"]) == 0:
            report.empty.append(name)
        attrs = {"keypoints": {"uncertainty": pred.pop("uncertainty")}} if "keypoints" in pred else None
        write_entry(feature_path, name, pred, attrs)
        report.written.append(name)

    logger.info(
        "Wrote %d entries to %s (%d already there, %d without keypoints, %d skipped).",
        len(report.written), feature_path, len(report.existing), len(report.empty), len(report.skipped),
    )
    for name, reason in report.skipped.items():
        logger.warning("skipped: %s", reason)
    return report
