"""Resumable pipeline steps: a step is skipped when its inputs, parameters and outputs are unchanged.

Each completed step leaves a stamp ``<outputs>/.steps/<name>.json`` with a fingerprint of its
parameters and input files (size and modification time). A re-run skips a step whose stamp
matches and whose outputs exist; anything else runs again, and the steps that resume inside
(feature extraction and matching skip the entries already written) only redo what is missing.
A step interrupted before its stamp is written is therefore redone. Wall times go to
``<outputs>/timings.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py

from .. import logger
from ..files import atomic_path


def _file_state(path: Path) -> list:
    if path.is_file():
        stat = path.stat()
        return [str(path), stat.st_size, stat.st_mtime_ns]
    if path.is_dir():
        return [str(path), "dir", sorted(_file_state(p) for p in path.iterdir() if not p.name.startswith("."))]
    return [str(path), "missing"]


def fingerprint(params: dict[str, Any], inputs: Iterable[Path]) -> str:
    """sha256 of the parameters (JSON) and the state of every input path."""
    state = {"params": params, "inputs": [_file_state(Path(p)) for p in inputs]}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it over ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))


class Steps:
    """Runs named steps under ``outputs``, skipping those already done, and records their times."""

    def __init__(self, outputs: Path):
        self.outputs = Path(outputs)
        self.state = self.outputs / ".steps"
        self.timings: dict[str, float | None] = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def run(
        self,
        name: str,
        function: Callable[[], Any],
        params: dict[str, Any] | None = None,
        inputs: Iterable[Path] = (),
        outputs: Iterable[Path] = (),
    ) -> bool:
        """Run ``function`` unless the step is done; return whether it ran.

        The fingerprint is taken before the run (inputs as they were read) and stored with the
        outputs' state after it, so touching an output also makes the step run again.
        """
        inputs, outputs = list(inputs), [Path(p) for p in outputs]
        key = fingerprint(params or {}, inputs)
        stamp = self.state / f"{name}.json"
        if stamp.is_file():
            saved = json.loads(stamp.read_text())
            current = [_file_state(p) for p in outputs]
            if saved.get("fingerprint") == key and saved.get("outputs") == json.loads(json.dumps(current)):
                logger.info("Step %s: already done, skipped.", name)
                self.skipped.append(name)
                self.timings[name] = None
                return False
            stamp.unlink()
        logger.info("Step %s: running.", name)
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise RuntimeError(f"step {name} did not write {', '.join(missing)}")
        write_json_atomic(stamp, {"fingerprint": key, "outputs": [_file_state(p) for p in outputs], "seconds": elapsed})
        logger.info("Step %s: done in %.1f s.", name, elapsed)
        self.ran.append(name)
        self.timings[name] = elapsed
        self._save_timings()
        return True

    def _save_timings(self) -> None:
        path = self.outputs / "timings.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        for name, seconds in self.timings.items():
            if seconds is not None:
                saved[name] = seconds
        write_json_atomic(path, saved)


def discard_incomplete_groups(path: Path, required: tuple[str, ...]) -> int:
    """Delete the groups of an hloc HDF5 file (features or matches) that lack a ``required`` dataset.

    hloc writes an entry's datasets one after the other; a run killed in between leaves a
    group that hloc would take as done. Returns how many were removed.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    broken: list[str] = []
    with h5py.File(path, "r") as handle:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group):
                datasets = [k for k, v in obj.items() if isinstance(v, h5py.Dataset)]
                children = [k for k, v in obj.items() if isinstance(v, h5py.Group)]
                if (datasets or not children) and not any(k in datasets for k in required):
                    broken.append(name)

        handle.visititems(visit)
    if broken:
        with h5py.File(path, "a") as handle:
            for name in broken:
                if name in handle:
                    del handle[name]
        logger.info("Removed %d incomplete entries from %s.", len(broken), path)
    return len(broken)
