"""The extractor confs this package adds to hloc, in hloc's own format.

Each conf is ``{output, model: {name, ...}, preprocessing: {...}}`` exactly like
``hloc.extract_features.confs``; ``model.name`` is the hloc extractor module the
plugin registers (prefixed ``hndesc_`` so it never collides with hloc's own
``r2d2``, ``dog``, ...). ``output`` names encode the settings, as hloc's do.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

#: hloc extractor module name -> "module:Class" of our extractor.
EXTRACTORS: dict[str, str] = {
    "hndesc_hynet": "hloc_hndesc.features.hynet:HyNetExtractor",
    "hndesc_r2d2": "hloc_hndesc.features.r2d2:R2D2Extractor",
    "hndesc_caps": "hloc_hndesc.features.caps:CAPSExtractor",
    "hndesc_how": "hloc_hndesc.features.how:HOWExtractor",
    "hndesc_sift": "hloc_hndesc.features.dog:SIFTExtractor",
}

CONFS: dict[str, dict[str, Any]] = {
    "hynet": {
        "output": "feats-hynet-dog-n8000-r1600",
        "model": {"name": "hndesc_hynet", "max_keypoints": 8000},
        "preprocessing": {"grayscale": True, "resize_max": 1600},
    },
    "hndesc-r2d2": {
        "output": "feats-hndesc-r2d2-n5000-r1024",
        "model": {"name": "hndesc_r2d2", "max_keypoints": 5000},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # for photos of unknown orientation: the network fine-tuned with rotations within ±45°
    # (hndesc-r2d2-rot45), run on the image and its rotations by 90, 180 and 270 degrees, every
    # view's keypoints in the input's frame, up to 5000 per view (features.rotation).
    "hndesc-r2d2-rot4": {
        "output": "feats-hndesc-r2d2-rot4-n5000-r1024",
        "model": {
            "name": "hndesc_r2d2", "max_keypoints": 5000, "rotations": [0, 90, 180, 270],
            "shipped": "hndesc-r2d2-rot45",
        },
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # the same network on eight views, every 45 degrees (those between right angles are resampled,
    # features.rotation), up to 2500 keypoints per view: at most 20000 per image, as rot4, but no
    # relative rotation is more than 22.5 degrees from a view pair (rot4: 45); ~2.6x rot4's extraction
    "hndesc-r2d2-rot8": {
        "output": "feats-hndesc-r2d2-rot8-n2500-r1024",
        "model": {
            "name": "hndesc_r2d2", "max_keypoints": 2500, "rotations": [0, 45, 90, 135, 180, 225, 270, 315],
            "shipped": "hndesc-r2d2-rot45",
        },
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    "hndesc-caps": {
        "output": "feats-hndesc-caps-dog-n8000-r1024",
        "model": {"name": "hndesc_caps", "max_keypoints": 8000},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # HOW's pyramid (scales 2.0 .. 0.25 of the image) capped at 1024 px on the longer side: the
    # shipped weights saw photos of at most 512 px in training, and 2048 px inputs cost ~4x more
    # (official checkpoints: set max_scaled_side to None for the paper's full pyramid)
    "how": {
        "output": "global-feats-how-r18-r1024",
        "model": {"name": "hndesc_how", "mode": "global", "max_scaled_side": 1024},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    "how-asmk": {
        "output": "feats-how-r18-n1000-r1024",
        "model": {"name": "hndesc_how", "mode": "local", "features_num": 1000, "max_scaled_side": 1024},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
}

#: baselines for the benchmarks: runnable by name here, not added to hloc's confs
#: (hloc has its own ``sift``; ours is DESIGN.md §7's setting with RootSIFT applied once).
BASELINE_CONFS: dict[str, dict[str, Any]] = {
    "sift": {
        "output": "feats-sift-r1024",
        "model": {"name": "hndesc_sift"},
        "preprocessing": {"grayscale": True, "resize_max": 1024},
    },
    # RootSIFT on exactly the DoG keypoints of ``hynet`` (same size, options and cap), so that
    # DoG+HyNet against it compares descriptors only.
    "sift-hynet-kpts": {
        "output": "feats-sift-n8000-r1600",
        "model": {"name": "hndesc_sift", "max_keypoints": 8000},
        "preprocessing": {"grayscale": True, "resize_max": 1600},
    },
    # RootSIFT on the upright DoG keypoints of ``hndesc-caps`` (same size, options and cap; the
    # grey image is hloc's, so a few keypoints near the threshold may differ), so that
    # DoG+HNDesc-CAPS against it compares descriptors.
    "sift-caps-kpts": {
        "output": "feats-sift-upright-n8000-r1024",
        "model": {"name": "hndesc_sift", "max_keypoints": 8000, "upright": True},
        "preprocessing": {"grayscale": True, "resize_max": 1024},
    },
}

PREPROCESSING_KEYS = ("grayscale", "resize_max", "resize_force", "interpolation", "globs")


def get_conf(name: str) -> dict[str, Any]:
    """A deep copy of conf ``name`` (or a baseline of :data:`BASELINE_CONFS`); unknown names raise ``KeyError``."""
    known = {**CONFS, **BASELINE_CONFS}
    if name not in known:
        raise KeyError(f"Unknown conf {name!r}; available: {', '.join(sorted(known))}")
    return copy.deepcopy(known[name])


def extractor_class(model_name: str) -> type:
    """The extractor class behind an hloc model name such as ``hndesc_r2d2``."""
    if model_name not in EXTRACTORS:
        raise KeyError(f"Unknown model {model_name!r}; available: {', '.join(sorted(EXTRACTORS))}")
    module, cls = EXTRACTORS[model_name].split(":")
    return getattr(importlib.import_module(module), cls)


def shipped_weights_name(model_conf: dict[str, Any]) -> str:
    """Registry name of the weights an hloc ``model`` conf runs when it names none."""
    return extractor_class(model_conf["name"]).shipped_name(model_conf)


def build_extractor(model_conf: dict[str, Any], weights: str | None = None):
    """Build the extractor of an hloc ``model`` conf (``name`` plus extractor options)."""
    conf = dict(model_conf)
    name = conf.pop("name")
    conf_weights = conf.pop("weights", None)
    return extractor_class(name)(conf, weights=weights if weights is not None else conf_weights)
