"""Registry of shipped checkpoints and safe loading of checkpoint files.

Checkpoints are untrusted input: every file is read with
``torch.load(..., weights_only=True)`` and shipped files are checked against the
sha256 recorded in ``hloc_hndesc/checkpoints/registry.json``. Each registry entry
names its file, its sha256 and a model card (training data and licences, config,
commit, metrics) that lives beside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .files import atomic_path

CHECKPOINT_DIR = Path(str(resources.files("hloc_hndesc.checkpoints")))


class WeightsError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupt or of an unknown layout."""


class NoWeightsError(WeightsError):
    """No weights were given and none are shipped for this model yet."""


@dataclass(frozen=True)
class WeightsEntry:
    """One shipped checkpoint: file name, sha256 and model card, relative to the registry."""

    name: str
    file: str
    sha256: str
    card: str
    root: Path

    @property
    def path(self) -> Path:
        return self.root / self.file

    @property
    def card_path(self) -> Path:
        return self.root / self.card


def read_registry(root: Path = CHECKPOINT_DIR) -> dict[str, WeightsEntry]:
    """Entries of ``root/registry.json`` keyed by model name."""
    path = root / "registry.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err})") from None
    entries = {}
    for name, item in raw.items():
        missing = {"file", "sha256", "card"} - set(item)
        if missing:
            raise WeightsError(f"{path}: entry {name!r} lacks {sorted(missing)}")
        entries[name] = WeightsEntry(name, item["file"], item["sha256"], item["card"], root)
    return entries


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_weights(name: str, root: Path = CHECKPOINT_DIR) -> Path:
    """Path of the shipped checkpoint of model ``name`` after checking its sha256."""
    entry = read_registry(root).get(name)
    if entry is None:
        raise NoWeightsError(
            f"No trained weights are shipped for {name!r} yet; pass weights=PATH "
            "(a checkpoint in this project's layout or an official one). "
            "Running random weights is refused on purpose."
        )
    if not entry.path.is_file():
        raise WeightsError(f"Shipped checkpoint for {name!r} is missing: {entry.path}")
    found = sha256sum(entry.path)
    if found != entry.sha256:
        raise WeightsError(
            f"Checksum mismatch for {entry.path}: expected sha256 {entry.sha256}, "
            f"found {found}. The file is corrupt or was replaced."
        )
    return entry.path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"Cannot read checkpoint {path}: {err}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"Checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def extract_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor dict of a checkpoint: ``state_dict``/``model`` entry or the dict itself."""
    for key in ("state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    state = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError("checkpoint holds no tensors")
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that has it (e.g. DataParallel's ``module.``)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_weights(
    net: torch.nn.Module,
    name: str,
    weights: str | Path | None,
    convert: Any = None,
    root: Path = CHECKPOINT_DIR,
) -> Path:
    """Load ``weights`` (or the shipped checkpoint of ``name``) into ``net`` strictly.

    ``convert`` maps a raw state dict (of our layout or an official one) to ``net``'s
    keys. Returns the path that was loaded. Errors name the file and the problem.
    """
    path = Path(weights) if weights is not None else shipped_weights(name, root)
    apply_checkpoint(net, name, load_checkpoint(path), path, convert)
    return path


def apply_checkpoint(
    net: torch.nn.Module, name: str, ckpt: dict[str, Any], path: Path, convert: Any = None
) -> None:
    """Load an already read checkpoint dict into ``net`` strictly (see :func:`load_weights`)."""
    state = strip_prefix(extract_state_dict(ckpt), "module.")
    if convert is not None:
        state = convert(state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"Checkpoint {path} does not fit {name!r}: {err}") from None


def save_checkpoint(
    net: torch.nn.Module, path: str | Path, meta: dict[str, Any] | None = None
) -> str:
    """Write ``{'state_dict', 'meta'}`` atomically; return its sha256."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": dict(meta or {})}, tmp)
    return sha256sum(path)
