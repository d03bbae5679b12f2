"""Training checkpoints: atomic writes, sha256 sidecars, verified loads, pruning, RNG states.

A checkpoint of step ``s`` is ``<dir>/step_<s:08d>.pt`` plus ``step_<s:08d>.pt.sha256`` (the
``sha256sum`` format). The payload is serialised in memory, written to a temporary file in the
same folder, flushed to disk and renamed; only then is the sidecar written the same way. The
sidecar is the commit mark: a crash at any point leaves either no checkpoint file, or one
without a sidecar, and a checkpoint without a sidecar, with a different sha256 (truncated or
damaged) or that ``torch.load(weights_only=True)`` refuses never reads as valid.

Payloads hold only tensors and plain containers (dicts, lists, str, int, float, bool, None), so
that they load with ``weights_only=True``: the numpy and Python RNG states are stored as lists.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hloc_hndesc import logger
from hloc_hndesc.files import write_bytes

#: value of the ``format`` entry of every trainer checkpoint.
CHECKPOINT_FORMAT = "hloc_hndesc.trainer/1"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


class CheckpointError(RuntimeError):
    """A training checkpoint is missing, incomplete, corrupt or not a trainer checkpoint."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """Path of the checkpoint of ``step`` in ``directory``."""
    return Path(directory) / f"step_{int(step):08d}.pt"


def sidecar_path(path: str | Path) -> Path:
    """Path of the sha256 sidecar of checkpoint ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_training_checkpoint(state: Mapping[str, Any], directory: str | Path, step: int) -> Path:
    """Write ``state`` (plus ``format`` and ``step``) as the checkpoint of ``step``, atomically."""
    path = checkpoint_path(directory, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({**state, "format": CHECKPOINT_FORMAT, "step": int(step)}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = sidecar_path(path)
    if sidecar.exists():
        sidecar.unlink()
    write_bytes(path, data, durable=True)
    write_bytes(sidecar, f"{digest}  {path.name}\n".encode(), durable=True)
    return path


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` matches the sha256 of its sidecar."""
    _verified_bytes(Path(path))


def _verified_bytes(path: Path) -> bytes:
    """The bytes of checkpoint ``path`` (read once) after checking them against its sidecar."""
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise CheckpointError(
            f"training checkpoint {path} has no sha256 sidecar ({sidecar.name}): it is incomplete "
            "(the writer stopped before committing it) or not a checkpoint of this trainer"
        )
    fields = sidecar.read_text().split()
    if not fields or not re.fullmatch(r"[0-9a-f]{64}", fields[0]):
        raise CheckpointError(f"sha256 sidecar {sidecar} is malformed")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != fields[0]:
        raise CheckpointError(
            f"training checkpoint {path} is truncated or corrupt: sha256 {found} does not match "
            f"the {fields[0]} recorded in {sidecar.name}"
        )
    return data


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Verify and read a trainer checkpoint onto the CPU (``weights_only=True``)."""
    path = Path(path)
    data = _verified_bytes(path)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read training checkpoint {path}: {err}") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer ({CHECKPOINT_FORMAT})")
    return obj


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in ``directory`` (unverified), by step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint of ``directory`` that verifies; broken ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            logger.warning("Ignoring checkpoint of step %d: %s", step, err)
            continue
        return path
    return None


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (and stray temporary files).

    ``keep_last <= 0`` keeps every checkpoint. Returns the deleted paths.
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    # temporary files of interrupted writes (hloc_hndesc.files; the older naming too)
    for pattern in (".step_*.tmp*", "step_*.tmp*"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    checkpoints = list_checkpoints(directory)
    if keep_last > 0:
        for _, path in checkpoints[:-keep_last]:
            for victim in (sidecar_path(path), path):
                if victim.exists():
                    victim.unlink()
                    removed.append(victim)
    kept = {path.name for _, path in list_checkpoints(directory)}
    for sidecar in directory.glob("step_*.pt.sha256"):
        if sidecar.name[: -len(".sha256")] not in kept:
            sidecar.unlink()
            removed.append(sidecar)
    return removed


def retire_checkpoints_after(directory: str | Path, step: int) -> list[Path]:
    """Set aside the checkpoints newer than ``step`` when a run (re)starts from ``step``.

    They belong to a history that is being replaced, so resume=auto and pruning must not see
    them: those that verify are renamed ``*.superseded`` (kept, with their sidecar), broken
    ones are deleted. Returns the affected checkpoint paths.
    """
    affected = []
    for found, path in list_checkpoints(directory):
        if found <= step:
            continue
        sidecar = sidecar_path(path)
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            logger.warning("Deleting the broken checkpoint of step %d: %s", found, err)
            path.unlink()
            sidecar.unlink(missing_ok=True)
        else:
            logger.warning("Setting aside the checkpoint of step %d (newer than the start, step %d)", found, step)
            os.replace(sidecar, sidecar.with_name(sidecar.name + ".superseded"))
            os.replace(path, path.with_name(path.name + ".superseded"))
        affected.append(path)
    return affected


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python global RNG states as plain containers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore global RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
