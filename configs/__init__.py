"""Bundled OmegaConf YAML configs, addressable by name (``models/hndesc-r2d2``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def config_path(name: str) -> Path:
    """Path of the bundled config ``name`` (``"models/x"`` or ``"models/x.yaml"``)."""
    rel = name if name.endswith(".yaml") else f"{name}.yaml"
    path = Path(str(resources.files(__name__).joinpath(rel)))
    if not path.is_file():
        raise FileNotFoundError(
            f"No bundled config {name!r}; available: {', '.join(list_configs())}"
        )
    return path


def list_configs() -> list[str]:
    """Names of all bundled configs, without the ``.yaml`` suffix."""
    root = Path(str(resources.files(__name__)))
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def load_config(name: str) -> DictConfig:
    """Load the bundled config ``name`` as an OmegaConf ``DictConfig``."""
    return OmegaConf.load(config_path(name))
