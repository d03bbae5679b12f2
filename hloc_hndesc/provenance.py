"""Where a result comes from: the commit of the source tree (for checkpoints, model cards, benchmarks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def git_commit(short: bool = False, root: Path = SOURCE_ROOT) -> str | None:
    """Commit of the checkout holding ``root`` (``+dirty`` with uncommitted changes to tracked
    files), or None when it is not a git checkout (e.g. an installed wheel)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")
