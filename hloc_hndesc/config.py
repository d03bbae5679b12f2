"""Configuration helpers: OmegaConf defaults merged with user overrides, strictly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError


class ConfigError(ValueError):
    """A configuration names an unknown key or has a value of the wrong type."""


def merge_conf(
    defaults: Mapping[str, Any], conf: Mapping[str, Any] | DictConfig | None, where: str
) -> DictConfig:
    """Merge ``conf`` into ``defaults``; unknown keys raise :class:`ConfigError`.

    ``where`` names the component in the error message (e.g. ``"HyNet extractor"``).
    """
    base = OmegaConf.create(dict(defaults))
    OmegaConf.set_struct(base, True)
    if conf is None:
        return base
    if not isinstance(conf, DictConfig):
        conf = OmegaConf.create(dict(conf))
    try:
        merged = OmegaConf.merge(base, conf)
    except ConfigKeyError as err:
        known = ", ".join(sorted(str(k) for k in base.keys()))
        raise ConfigError(
            f"{where}: unknown config key {err.full_key!r} (known keys: {known})"
        ) from None
    except Exception as err:  # omegaconf validation errors carry the key path
        raise ConfigError(f"{where}: invalid config: {err}") from None
    _check_types(defaults, merged, where, "")
    return merged


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def _check_types(defaults: Mapping[str, Any], merged: DictConfig, where: str, prefix: str) -> None:
    """Leaf values must keep the type of their default (ints and floats mix)."""
    for key, default in defaults.items():
        value = merged[key]
        if isinstance(default, Mapping) and isinstance(value, DictConfig):
            _check_types(default, value, where, f"{prefix}{key}.")
        elif not _compatible(default, value):
            raise ConfigError(
                f"{where}: invalid config: {prefix}{key}={value!r} should be a "
                f"{type(default).__name__} like its default {default!r}"
            )
