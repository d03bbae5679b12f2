"""What a pipeline is run with: local features, matcher and retrieval, from their command-line specs.

- ``--features``: a conf of ours (``hynet``, ``hndesc-r2d2``, ``hndesc-caps``) or our SIFT baseline
  (``sift``, ``sift-hynet-kpts``), as ``CONF`` or ``CONF=WEIGHTS`` (like the benchmarks'
  ``--method``); or any conf of hloc's ``extract_features.confs`` by name (``disk``,
  ``superpoint_max``, ...), with ``hloc:NAME`` for hloc's own where we have the same name
  (``hloc:sift``). Ours run through :meth:`Method.extract` (keypoints in float32, each entry
  written atomically), hloc's through ``extract_features.main`` with ``as_half=False``.
- ``--matcher``: a conf of hloc's ``match_features.confs`` (``NN-ratio``, ``NN-mutual``,
  ``superglue``, ...) or ``ratio`` / ``mutual``; by default NN-ratio for SIFT, NN-mutual otherwise.
- ``--retrieval``: ``how-asmk`` (``how-asmk=WEIGHTS``; ASMK over HOW local descriptors,
  :mod:`hloc_hndesc.retrieval.pairs_from_asmk`), a global-descriptor conf (our ``how``,
  ``how=WEIGHTS``, or hloc's ``netvlad``, ``openibl``, ...; ranked by hloc's
  ``pairs_from_retrieval``), or ``exhaustive`` (every query with every database image).

:func:`resolve` checks everything that can be checked without touching the images (conf
names, weights files, missing weights, optional dependencies) so that a pipeline fails before
its first heavy step.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import logger
from ..confs import BASELINE_CONFS, CONFS, build_extractor
from ..evaluation.matching import HLOC_MATCHERS
from ..evaluation.methods import Method, parse_method
from ..files import atomic_path
from .steps import discard_incomplete_groups

#: hloc extractors (and ours) whose matcher default is the ratio test.
RATIO_MODELS = ("hndesc_sift", "dog", "sift")


class SpecError(ValueError):
    """A features, matcher or retrieval spec cannot be used (the message says why and what to do)."""


@dataclass
class Features:
    """A local or global feature extractor: ours (a :class:`Method`) or one of hloc's confs."""

    spec: str
    label: str
    method: Method | None = None
    hloc_conf: dict[str, Any] | None = None

    @property
    def model_name(self) -> str:
        """The hloc model name (``hndesc_hynet``, ``disk``, ...)."""
        return (self.method.conf if self.method else self.hloc_conf)["model"]["name"]

    @property
    def key(self) -> str:
        """File-name key of the features (conf, resolution, weights)."""
        return self.method.key if self.method else self.hloc_conf["output"]

    def default_matcher(self) -> str:
        """hloc matcher conf used when ``--matcher`` is not given."""
        return "NN-ratio" if self.model_name in RATIO_MODELS else "NN-mutual"

    def path(self, out_dir: Path) -> Path:
        """The HDF5 file these features are written to under ``out_dir``."""
        return Path(out_dir) / f"{self.key}.h5"

    def extract(self, image_dir: Path, names: Sequence[str], out_dir: Path) -> Path:
        """Features of ``names`` (relative to ``image_dir``); existing complete entries are kept."""
        path = self.path(out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.method is not None:
            return self.method.extract(image_dir, list(names), path.parent)
        from hloc import extract_features

        discard_incomplete_groups(path, ("descriptors", "global_descriptor"))
        extract_features.main(self.hloc_conf, Path(image_dir), feature_path=path, image_list=list(names), as_half=False)
        return path


def _with_resize(conf: dict[str, Any], resize_max: int | None) -> dict[str, Any]:
    conf = copy.deepcopy(conf)
    if resize_max:
        conf["preprocessing"]["resize_max"] = int(resize_max)
    return conf


def _check_weights(method: Method) -> None:
    """Build the extractor once: a missing or unreadable weights file fails here, not mid-run."""
    try:
        build_extractor(method.conf["model"], None if method.weights is None else str(method.weights))
    except Exception as error:  # NoWeightsError, WeightsError, ConfigError: the message is the point
        raise SpecError(f"{method.label}: {error}") from None


def _hloc_extract_conf(name: str) -> dict[str, Any]:
    from hloc import extract_features, extractors
    from hloc.utils.base_model import dynamic_load

    if name not in extract_features.confs:
        raise SpecError(f"unknown features {name!r}")
    conf = copy.deepcopy(extract_features.confs[name])
    try:
        dynamic_load(extractors, conf["model"]["name"])
    except ImportError as error:
        raise SpecError(
            f"hloc's {name!r} cannot be loaded here ({error}); "
            + ("it needs torchvision, which this project does not install" if "torchvision" in str(error) else "")
        ) from None
    return conf


def resolve_features(spec: str, resize_max: int | None = None, check_weights: bool = True) -> Features:
    """``--features`` -> :class:`Features` (ours first; ``hloc:NAME`` or an unknown-to-us name is hloc's)."""
    name, _, weights = spec.partition("=")
    if name.startswith("hloc:") or name not in {**CONFS, **BASELINE_CONFS}:
        if weights:
            raise SpecError(f"{spec}: weights can only be given to our confs ({', '.join(sorted(CONFS))})")
        hloc_name = name.removeprefix("hloc:")
        try:
            conf = _hloc_extract_conf(hloc_name)
        except ModuleNotFoundError:
            raise SpecError(f"{spec}: not one of our confs ({', '.join(sorted({**CONFS, **BASELINE_CONFS}))}) and hloc is not installed") from None
        except SpecError as error:
            known = sorted({**CONFS, **BASELINE_CONFS})
            raise SpecError(f"{spec}: {error}; ours: {', '.join(known)}; hloc's: see hloc.extract_features.confs") from None
        return Features(spec, f"hloc:{hloc_name}", hloc_conf=_with_resize(conf, resize_max))
    try:
        method = parse_method(spec)
    except FileNotFoundError as error:
        raise SpecError(str(error)) from None
    if resize_max:
        method = method.with_resize(int(resize_max))
    if check_weights:
        _check_weights(method)
    return Features(spec, method.label, method=method)


def resolve_matcher(name: str | None, features: Features) -> dict[str, Any]:
    """``--matcher`` (or the features' default) -> hloc ``match_features`` conf."""
    from hloc import match_features, matchers
    from hloc.utils.base_model import dynamic_load

    name = name or features.default_matcher()
    name = HLOC_MATCHERS.get(name, name)
    if name not in match_features.confs:
        raise SpecError(f"unknown matcher {name!r}; known: ratio, mutual, {', '.join(match_features.confs)}")
    conf = copy.deepcopy(match_features.confs[name])
    try:
        dynamic_load(matchers, conf["model"]["name"])
    except ImportError as error:
        raise SpecError(f"matcher {name!r} cannot be loaded here ({error})") from None
    return conf


def match(conf: dict[str, Any], pairs: Path, features: Path, matches: Path, features_ref: Path | None = None) -> Path:
    """hloc ``match_features.main``; pairs already in ``matches`` are kept, half-written ones redone."""
    from hloc import match_features

    discard_incomplete_groups(matches, ("matches0",))
    return match_features.main(conf, pairs, features, matches=matches, features_ref=features_ref)


# --------------------------------------------------------------------------- retrieval


@dataclass
class Retrieval:
    """How database images are chosen for each query: ``exhaustive``, ``global`` or ``asmk``."""

    spec: str
    kind: str
    features: Features | None = None

    def pairs(
        self, image_dir: Path, queries: Sequence[str], database: Sequence[str], num: int, output: Path, out_dir: Path
    ) -> Path:
        """Write the ``query database`` pairs file (at most ``num`` per query; all for exhaustive)."""
        with atomic_path(output) as tmp:
            if self.kind == "exhaustive":
                if set(queries) <= set(database):  # one image set (SfM): each unordered pair once
                    lines = [f"{a} {b}" for i, a in enumerate(database) for b in database[i + 1 :]]
                else:
                    lines = [f"{q} {d}" for q in queries for d in database if q != d]
                tmp.write_text("\n".join(lines) + "\n")
            else:
                names = sorted(set(queries) | set(database))
                descriptors = self.features.extract(image_dir, names, out_dir)
                if self.kind == "asmk":
                    from ..retrieval import pairs_from_asmk

                    pairs_from_asmk.main(
                        descriptors, tmp, num, query_list=list(queries), db_list=list(database),
                        codebook=out_dir / f"asmk-codebook_{self.features.key}.npz", index=out_dir / f"asmk-index_{self.features.key}.npz",
                    )
                else:
                    from hloc import pairs_from_retrieval

                    pairs_from_retrieval.main(descriptors, tmp, num, query_list=list(queries), db_list=list(database))
        return output


def _asmk_available() -> None:
    try:
        module = importlib.import_module("hloc_hndesc.retrieval.pairs_from_asmk")
    except ImportError as error:
        raise SpecError(f"how-asmk retrieval is not available in this installation ({error}); use --retrieval how or exhaustive") from None
    if not hasattr(module, "main"):
        raise SpecError("hloc_hndesc.retrieval.pairs_from_asmk has no main(); use --retrieval how or exhaustive")


def resolve_retrieval(spec: str, resize_max: int | None = None) -> Retrieval:
    """``--retrieval`` -> :class:`Retrieval` (checked: conf, weights, optional modules)."""
    name, _, _ = spec.partition("=")
    if name == "exhaustive":
        return Retrieval(spec, "exhaustive")
    if name == "how-asmk":
        _asmk_available()
        return Retrieval(spec, "asmk", resolve_features(spec, resize_max))
    features = resolve_features(spec, resize_max)
    conf = features.method.conf if features.method else features.hloc_conf
    is_global = conf["model"].get("mode") == "global" or conf["output"].startswith("global-feats")
    if not is_global:
        raise SpecError(f"--retrieval {spec}: not a global descriptor; use how-asmk, how, a global conf of hloc, or exhaustive")
    return Retrieval(spec, "global", features)


def spec_tag(spec: str) -> str:
    """A file-name tag of a spec: its conf name (``how=/x/w.pth`` -> ``how``, ``hloc:sift`` -> ``hloc-sift``)."""
    return spec.split("=")[0].replace(":", "-")


def log_components(features: Features, matcher: dict[str, Any], retrieval: Retrieval | None) -> None:
    """One log line with what the run uses."""
    logger.info(
        "Features %s (%s), matcher %s, retrieval %s.",
        features.label, features.key, matcher["output"], "none" if retrieval is None else retrieval.spec,
    )
