"""The methods a benchmark compares: a conf of ours (with any weights) or the SIFT baseline.

A method is given on the command line as ``CONF`` or ``CONF=WEIGHTS``: ``sift`` (pycolmap
DoG + RootSIFT, DESIGN.md §7's settings), ``sift-hynet-kpts`` (RootSIFT on ``hynet``'s DoG
keypoints), ``sift-caps-kpts`` (RootSIFT on ``hndesc-caps``'s upright DoG keypoints), or one
of :data:`hloc_hndesc.confs.CONFS` with shipped weights or a checkpoint file, e.g.
``hndesc-r2d2=r2d2_WASF_N16.pt`` to run official weights through our extractor (weights are
compared, not code). SIFT (all three) is matched with the ratio test (0.8, mutual), everything
else with mutual nearest neighbours, as in §7; a suffix ``@ratio`` or ``@mutual`` chooses the
matcher instead (e.g. ``sift-hynet-kpts@mutual`` compares RootSIFT with HyNet on the same
keypoints *and* the same matcher).

Features go through :func:`hloc_hndesc.extract.extract` into one hloc-layout HDF5 file
per method and image folder, so benchmarks share and resume them, and hloc can read them.
A sidecar ``<key>.h5.sources.json`` records the sha256 of each image an entry was computed
from: an image that changed under the same name is extracted again, never read stale.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..confs import get_conf, shipped_weights_name
from ..extract import extract
from ..files import write_bytes
from ..h5io import complete_names
from ..weights import read_registry
from .matching import match_descriptors


@dataclass
class Method:
    """A conf (hloc format), its weights, and its matcher."""

    label: str
    conf: dict[str, Any]
    weights: Path | None = None
    matcher: str = "mutual"
    ratio: float = 0.8

    @property
    def key(self) -> str:
        """File-name key: model, resolution, a hash of the conf and one of the weights file.

        Shipped weights count by their registry sha256, so features cached with an earlier
        shipped file are not read after the file changes.
        """
        pre = self.conf["preprocessing"]
        size = f"r{pre.get('resize_max')}" + ("f" if pre.get("resize_force") else "")
        conf_hash = hashlib.sha256(json.dumps(self.conf, sort_keys=True, default=str).encode()).hexdigest()[:6]
        if self.weights is not None:
            tag = f"-w{file_sha256(self.weights)[:10]}"
        else:
            shipped = read_registry().get(shipped_weights_name(self.conf["model"]))
            tag = f"-w{shipped.sha256[:10]}" if shipped is not None else ""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.conf['model']['name']}-{size}-c{conf_hash}{tag}")

    def with_resize(self, resize_max: int | None, force: bool = False) -> Method:
        """A copy at another input size (``resize_max`` of the longer side)."""
        conf = copy.deepcopy(self.conf)
        conf["preprocessing"].update(resize_max=resize_max, resize_force=force)
        return Method(self.label, conf, self.weights, self.matcher, self.ratio)

    def hloc_conf(self) -> dict[str, Any]:
        """The conf for ``hloc.extract_features.main`` (weights in ``model.weights``)."""
        conf = copy.deepcopy(self.conf)
        conf["output"] = f"feats-{self.key}"
        if self.weights is not None:
            conf["model"]["weights"] = str(self.weights)
        return conf

    def extract(self, image_dir: str | Path, names: list[str], out_dir: str | Path) -> Path:
        """Features of ``names`` (relative to ``image_dir``) in ``out_dir/<key>.h5`` (resumed)."""
        path = Path(out_dir) / f"{self.key}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        digests = {name: file_sha256(Path(image_dir) / name) for name in names}
        sources = _read_sources(path)
        stale = [n for n in names if sources.get(n) != digests[n]]
        _drop_entries(path, stale)
        report = extract(self.conf, image_dir, path, image_list=names, weights=self.weights)
        done = complete_names(path)
        sources.update({n: digests[n] for n in names if n in done})
        _write_sources(path, sources)
        if report.skipped:
            raise RuntimeError(f"{self.label}: could not describe {report.skipped}")
        return path

    def match(self, feats0: dict[str, np.ndarray], feats1: dict[str, np.ndarray]) -> np.ndarray:
        """(M, 2) matches between two feature dicts (from :func:`read_features`)."""
        return match_descriptors(feats0["descriptors"], feats1["descriptors"], self.matcher, self.ratio)


def _sources_path(path: Path) -> Path:
    return path.with_name(path.name + ".sources.json")


def _read_sources(path: Path) -> dict[str, str]:
    """sha256 of the image file each cached entry was computed from (empty if unknown)."""
    sidecar = _sources_path(path)
    if not sidecar.is_file() or not path.is_file():
        return {}
    try:
        return dict(json.loads(sidecar.read_text()))
    except (ValueError, TypeError):
        return {}


def _write_sources(path: Path, sources: dict[str, str]) -> None:
    write_bytes(_sources_path(path), json.dumps(sources, indent=0, sort_keys=True).encode())


def _drop_entries(path: Path, names: list[str]) -> None:
    """Delete cached entries whose image changed (or whose source is unrecorded)."""
    if not path.is_file() or not names:
        return
    with h5py.File(path, "a") as handle:
        for name in names:
            if name in handle:
                del handle[name]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MATCHERS = ("ratio", "mutual")


def parse_method(spec: str) -> Method:
    """``CONF[=WEIGHTS][@MATCHER]`` -> :class:`Method` (unknown confs raise ``KeyError``)."""
    matcher = None
    head, at, tail = spec.rpartition("@")
    if at and tail in MATCHERS:
        spec, matcher = head, tail
    elif at and "=" not in tail and "/" not in tail:
        raise ValueError(f"{spec}: unknown matcher {tail!r}, expected one of {MATCHERS}")
    name, _, weights = spec.partition("=")
    conf = get_conf(name)
    path = Path(weights) if weights else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"{spec}: weights file {path} not found")
    label = name if path is None else f"{name} ({path.stem})"
    default = "ratio" if conf["model"]["name"] == "hndesc_sift" else "mutual"
    if matcher is not None and matcher != default:
        label = f"{label} [{matcher}]"
    return Method(label, conf, path, matcher or default)


def read_features(path: str | Path, name: str) -> dict[str, np.ndarray]:
    """The arrays stored for image ``name`` in an hloc-layout features file."""
    return read_all_features(path, [name])[name]


def read_all_features(path: str | Path, names: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
    """:func:`read_features` of several images, opening the file once."""
    out = {}
    with h5py.File(path, "r") as handle:
        for name in names:
            if name not in handle:
                raise KeyError(f"{path}: no features for {name!r}")
            out[name] = {k: np.asarray(v) for k, v in handle[name].items()}
    return out


def feature_cache(cache_root: str | Path, image_dir: str | Path) -> Path:
    """The folder for features of ``image_dir`` under ``cache_root`` (shared by benchmarks)."""
    image_dir = Path(image_dir).resolve()
    digest = hashlib.sha1(str(image_dir).encode()).hexdigest()[:8]
    return Path(cache_root) / f"{image_dir.parent.name}-{image_dir.name}-{digest}"
