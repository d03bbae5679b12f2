"""What the three pipeline scripts share: config + command line, logging to a file, error exits.

Defaults live in one place, ``configs/pipelines/<name>.yaml`` (package data); a user YAML
(``--config``) is merged strictly (an unknown key is an error), then every config key is also
a command-line option (``num_covis`` -> ``--num-covis``) that overrides both.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import logger
from ..config import ConfigError, merge_conf
from ..configs import load_config
from ..evaluation.datasets import DatasetError
from ..hloc_plugin import hloc_available
from ..weights import WeightsError
from .components import SpecError

LOG_NAME = "pipeline.log"


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    """``--dataset``, ``--outputs``, ``--config`` and one option per key of the bundled config."""
    defaults = load_config(f"pipelines/{name}")
    parser = argparse.ArgumentParser(prog=f"python -m hloc_hndesc.pipelines.{name}", description=description)
    parser.add_argument("--dataset", type=Path, required=True, help="dataset root")
    parser.add_argument("--outputs", type=Path, required=True, help="output folder (features, matches, models, results, logs)")
    parser.add_argument("--config", type=Path, help="YAML merged over configs/pipelines/%s.yaml" % name)
    for key, value in defaults.items():
        kwargs: dict[str, Any] = {"default": None, "help": f"default: {value}"}
        if isinstance(value, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(value, int):
            kwargs["type"] = int
        elif isinstance(value, float):
            kwargs["type"] = float
        parser.add_argument(_option(key), dest=key, **kwargs)
    return parser


def load_settings(name: str, args: argparse.Namespace) -> DictConfig:
    """Bundled defaults <- ``--config`` file <- command-line options (strict keys, checked types)."""
    defaults = OmegaConf.to_container(load_config(f"pipelines/{name}"))
    conf = merge_conf(defaults, OmegaConf.load(args.config) if args.config else None, f"pipelines/{name} config")
    given = {k: getattr(args, k) for k in defaults if getattr(args, k, None) is not None}
    return merge_conf(OmegaConf.to_container(conf), given, f"pipelines/{name} options")


def attach_log(outputs: Path) -> logging.Handler:
    """Copy our and hloc's log records to ``outputs/pipeline.log`` (appended)."""
    outputs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(outputs / LOG_NAME)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%Y/%m/%d %H:%M:%S"))
    for name in ("hloc_hndesc", "hloc"):
        logging.getLogger(name).addHandler(handler)
    return handler


def detach_log(handler: logging.Handler) -> None:
    """Stop copying records to the pipeline's log file."""
    for name in ("hloc_hndesc", "hloc"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def main_of(name: str, description: str, run: Callable[[Path, Path, DictConfig], Any]) -> Callable[[Sequence[str] | None], int]:
    """A ``main(argv) -> exit status`` for a pipeline: 2 on a dataset/config/spec error (nothing written)."""

    def main(argv: Sequence[str] | None = None) -> int:
        args = build_parser(name, description).parse_args(argv)
        if not hloc_available():
            logger.error("The pipelines run through hloc, which is not installed (see the README, 'Adding hloc').")
            return 2
        try:
            settings = load_settings(name, args)
            run(args.dataset, args.outputs, settings)
        except (DatasetError, SpecError, ConfigError, WeightsError) as error:
            logger.error("%s", error)
            return 2
        return 0

    return main


def exit_with(main: Callable[[Sequence[str] | None], int]) -> None:
    """``sys.exit(main())`` for ``python -m``."""
    sys.exit(main(None))
