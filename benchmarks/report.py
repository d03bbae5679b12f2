"""Writing benchmark rows into BENCHMARKS.md: one section per script, replaced on rerun."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from hloc_hndesc.files import atomic_path
from hloc_hndesc.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]
#: which weights a row of ours used, for sections that compare our confs across versions
WEIGHTS_NOTE = (
    "Rows of ours use the weights they name (the shipped file when none is named: see its model card); "
    "numbers of earlier weights stay in this file's git history."
)
T = TypeVar("T")


def machine() -> str:
    """CPU model, cores, torch threads, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


def commit() -> str:
    """Short commit of the checkout (with '+dirty' if it has uncommitted changes)."""
    return git_commit(short=True, root=ROOT) or "unknown"


def write_section(key: str, title: str, body: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace (or append) the section ``key`` of BENCHMARKS.md with ``body``."""
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    header = (
        f"## {title}\n\n"
        f"- command: `{shlex.join(['python', '-m', 'benchmarks.' + key, *sys.argv[1:]])}`\n"
        f"- machine: {machine()}\n"
        f"- date: {datetime.date.today().isoformat()}, commit {commit()}\n\n"
    )
    section = f"{begin}\n{header}{body.rstrip()}\n{end}\n"
    # benchmarks run side by side: the read-modify-write of the file is serialised by a lock
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery section is written by the script named in its command.\n\n"
        if begin in text and end in text:
            pre, rest = text.split(begin, 1)
            post = rest.split(end, 1)[1].lstrip("\n")
            text = pre + section + ("\n" + post if post else "")
        else:
            text = text.rstrip() + "\n\n" + section
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def publish(key: str, title: str, body: str, dry_run: bool = False, echo: bool = False) -> None:
    """Write the section ``key`` of BENCHMARKS.md, or only print it (``--no-write``); ``echo``
    prints it when written too."""
    if not dry_run:
        write_section(key, title, body)
    if dry_run or echo:
        print(body)


def timed_once(out: Path, run: Callable[[], T]) -> tuple[T, float]:
    """``run()`` and the wall seconds of the call that first completed it: a rerun of a resumable
    training run that finds it finished reuses the time recorded in ``out/ablation_wall.json``."""
    timing = out / "ablation_wall.json"
    start = time.perf_counter()
    result = run()
    if not timing.is_file():
        timing.write_text(json.dumps({"wall_s": time.perf_counter() - start}))
    return result, json.loads(timing.read_text())["wall_s"]


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± sd`` of ``values`` times ``scale``; sd 0 for a single value."""
    m = statistics.fmean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
