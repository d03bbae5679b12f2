"""Training tasks by name, and the loading of training configs (``configs/train/``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hloc_hndesc.config import ConfigError
from hloc_hndesc.configs import config_path

#: task name -> (module, function taking the merged config and returning metrics).
TASKS: dict[str, tuple[str, str]] = {
    "stylizer_ae": ("hloc_hndesc.training.stylization.autoencoder", "train_autoencoder"),
    "hynet": ("hloc_hndesc.training.hynet", "train_hynet"),
    "hndesc_r2d2": ("hloc_hndesc.training.r2d2", "train_hndesc_r2d2"),
    "hndesc_caps": ("hloc_hndesc.training.caps", "train_hndesc_caps"),
    "how": ("hloc_hndesc.training.how", "train_how"),
}


def load_train_config(config: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """A training config: a YAML path or a bundled name (``stylizer_ae``), with ``key=value`` overrides.

    Overrides are parsed by OmegaConf's dotlist parser (YAML values, nothing evaluated).
    """
    path = Path(config)
    if not path.is_file():
        path = config_path(f"train/{config}")
    conf = OmegaConf.load(path)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    return OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))


def run_task(conf: DictConfig) -> dict[str, Any]:
    """Run the training task named by ``conf.task``; returns its metrics."""
    task = conf.get("task")
    if task not in TASKS:
        raise ConfigError(f"training config: task={task!r}, expected one of {sorted(TASKS)}")
    module, function = TASKS[task]
    return getattr(importlib.import_module(module), function)(conf)
