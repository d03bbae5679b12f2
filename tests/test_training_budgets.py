"""The training-budget benchmark reads a resumed run's logs: sessions summed, gaps excluded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.training_budgets import read_budget, sessions

LOG = """\
[2026-11-30 10:00:00,001 INFO] Training HOWTask on cpu x1: updates 0 -> 100 of 200, global batch 5, 0 workers, output o
[2026-11-30 10:10:00,500 INFO] step 100 validation (4.0 s): map=0.5
[2026-11-30 11:59:58,000 WARNING] Resuming with a changed config (steps: 100 -> 200)
[2026-11-30 11:59:59,000 INFO] Resuming from o/checkpoints/step_00000100.pt (step 100)
[2026-11-30 12:00:00,000 INFO] Training HOWTask on cuda x2: updates 100 -> 200 of 200, global batch 5, 0 workers, output o
[2026-11-30 12:05:30,000 INFO] step 200 validation (4.0 s): map=0.6
"""


def write_run(folder: Path) -> Path:
    folder.mkdir()
    (folder / "train.log").write_text(LOG)
    (folder / "log.csv").write_text("step,loss,step_time,step_items_s\n20,1,2.0,2.5\n40,1,4.0,1.25\n60,1,3.0,1.7\n")
    (folder / "val.csv").write_text("step,map\n100.0,0.5\n200.0,0.6\n")
    (folder / "summary.json").write_text(json.dumps({"step": 200, "throughput": {"data_wait_fraction": 0.02}}))
    return folder


def test_sessions_and_budget_of_a_resumed_run(tmp_path: Path):
    folder = write_run(tmp_path / "run")
    assert [(f["start"], f["device"], s) for f, s in sessions(folder / "train.log")] == [
        ("0", "cpu x1", 600.0), ("100", "cuda x2", 330.0),
    ]
    budget = read_budget("how", folder)
    # the 1 h 50 min gap is not counted, nor is it bridged by the resumed invocation's first lines
    assert budget.wall_s == 930.0
    assert (budget.updates, budget.batch, budget.devices) == (200, 5, ["cpu x1", "cuda x2"])
    assert (budget.step_s, budget.items_s, budget.wait) == (3.0, 1.7, 0.02)
    assert budget.validation == {"step": 200.0, "map": 0.6}


def test_budget_names_the_missing_file(tmp_path: Path):
    folder = write_run(tmp_path / "run")
    (folder / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"summary\.json"):
        read_budget("how", folder)
