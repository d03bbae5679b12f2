"""Registration of this package's extractors and confs with hloc.

hloc loads an extractor by importing ``hloc.extractors.<name>`` and keeping the
single :class:`hloc.utils.base_model.BaseModel` subclass whose ``__module__`` is that
exact string. :func:`register` builds such a module per extractor in memory, puts it
into ``sys.modules`` and onto ``hloc.extractors``, and adds our confs to
``hloc.extract_features.confs``. hloc's files are never edited.
"""

from __future__ import annotations

import copy
import sys
import types
from typing import Any

from . import logger
from .confs import CONFS, EXTRACTORS, build_extractor


def hloc_available() -> bool:
    """Whether hloc can be imported."""
    try:
        import hloc.extract_features  # noqa: F401
    except ImportError:
        return False
    return True


def _model_class(model_name: str, base: type) -> type:
    """An hloc BaseModel subclass that runs our extractor ``model_name``."""
    module_name = f"hloc.extractors.{model_name}"

    def _init(self: Any, conf: dict[str, Any]) -> None:
        self.extractor = build_extractor(dict(conf, name=model_name))

    def _forward(self: Any, data: dict[str, Any]) -> dict[str, Any]:
        out = self.extractor(data["image"])
        return {k: v[None] for k, v in out.items()}

    cls = type(
        "HNDescModel",
        (base,),
        {
            "default_conf": {"weights": None},
            "required_inputs": ["image"],
            "_init": _init,
            "_forward": _forward,
            "__module__": module_name,
            "__doc__": f"hloc wrapper of {EXTRACTORS[model_name]}.",
        },
    )
    return cls


def register() -> list[str]:
    """Register extractors and confs with hloc; return the conf names added.

    Idempotent. Raises ``ImportError`` if hloc is not installed.
    """
    import hloc.extract_features
    import hloc.extractors
    from hloc.utils.base_model import BaseModel

    for model_name in EXTRACTORS:
        module_name = f"hloc.extractors.{model_name}"
        if module_name in sys.modules and hasattr(sys.modules[module_name], "HNDescModel"):
            continue
        module = types.ModuleType(module_name, f"hloc-hndesc extractor {model_name}")
        module.HNDescModel = _model_class(model_name, BaseModel)
        sys.modules[module_name] = module
        setattr(hloc.extractors, model_name, module)
    for name, conf in CONFS.items():
        hloc.extract_features.confs[name] = copy.deepcopy(conf)
    logger.debug("Registered confs %s with hloc.", ", ".join(CONFS))
    return list(CONFS)


def register_if_available() -> bool:
    """Register with hloc when it is importable; return whether it was."""
    if not hloc_available():
        return False
    register()
    return True
