"""Training budget and throughput of trained models, read from their training runs.

python -m benchmarks.training_budgets --run hynet=outputs/train/hynet \
    --run hndesc-caps=outputs/train/hndesc_caps --run how=outputs/train/how

For each ``--run NAME=DIR`` (a trainer output folder with ``train.log``, ``log.csv``,
``val.csv`` and ``summary.json``): updates, global batch, training items seen (updates x
batch: synthetic pairs, or tuples for HOW), the device of each session, the wall time (the sum
over the log's sessions, each from its "Training ..." line to its last line: mining,
validation and checkpoints included, interruptions excluded), the median seconds per update
and items per second of the logged windows (``log.csv``), the share of time the loader kept
the update waiting, and the last validation. Nothing is re-run: the numbers are the
training's own, and the section says on which machine it was written.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report import publish, table

KEY = "training_budgets"
TITLE = "Training budget and throughput of the trained models (issues 6-8)"
SESSION = re.compile(
    r"Training (?P<task>\w+) on (?P<device>\S+ x\d+): updates (?P<start>\d+) -> (?P<end>\d+) of (?P<total>\d+), "
    r"global batch (?P<batch>\d+)"
)
#: seconds before a "Training ..." line within which stamped lines are its invocation's preamble
PREAMBLE_S = 60.0
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")


@dataclass
class Budget:
    """What one training run cost."""

    name: str
    task: str
    updates: int
    batch: int
    devices: list[str]
    wall_s: float
    step_s: float
    items_s: float
    wait: float | None
    validation: dict[str, float]


def _stamp(line: str) -> datetime.datetime | None:
    match = STAMP.match(line)
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S") if match else None


def sessions(log: Path) -> list[tuple[dict[str, str], float]]:
    """Each session of a ``train.log``: its "Training ..." fields and its wall seconds.

    A session runs from its "Training ..." line to its last line. The lines a resumed
    invocation writes before its "Training ..." line (resuming, checkpoint checks: the
    stamped lines within :data:`PREAMBLE_S` of it, back to the first older one) belong to the
    new invocation, not to the end of the previous session.
    """
    out: list[tuple[dict[str, str], float]] = []
    start = None
    fields: dict[str, str] = {}
    stamps: list[datetime.datetime] = []  # of the lines since the current session began
    for line in log.read_text().splitlines():
        stamp = _stamp(line)
        match = SESSION.search(line)
        if match:
            if start is not None:
                earlier = list(stamps)
                while earlier and stamp is not None and (stamp - earlier[-1]).total_seconds() <= PREAMBLE_S:
                    earlier.pop()
                out.append((fields, ((earlier or [start])[-1] - start).total_seconds()))
            fields, start, stamps = match.groupdict(), stamp, []
        elif stamp is not None and start is not None:
            stamps.append(stamp)
    if start is not None:
        out.append((fields, ((stamps or [start])[-1] - start).total_seconds()))
    return out


def read_budget(name: str, folder: Path) -> Budget:
    """The :class:`Budget` of the trainer output ``folder``; missing files raise naming them."""
    for file in ("train.log", "log.csv", "summary.json"):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder / file}: not found (is {folder} a finished training run?)")
    runs = sessions(folder / "train.log")
    if not runs:
        raise ValueError(f"{folder / 'train.log'}: no 'Training ...' line")
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    validation: dict[str, float] = {}
    if (folder / "val.csv").is_file():
        with open(folder / "val.csv", newline="") as handle:
            val_rows = list(csv.DictReader(handle))
        validation = {k: float(v) for k, v in val_rows[-1].items()} if val_rows else {}
    return Budget(
        name=name,
        task=runs[-1][0]["task"],
        updates=int(summary["step"]),
        batch=int(runs[-1][0]["batch"]),
        devices=sorted({fields["device"] for fields, _ in runs}),
        wall_s=sum(seconds for _, seconds in runs),
        step_s=statistics.median(float(r["step_time"]) for r in rows),
        items_s=statistics.median(float(r["step_items_s"]) for r in rows),
        wait=summary.get("throughput", {}).get("data_wait_fraction"),
        validation=validation,
    )


def _validation(values: dict[str, float]) -> str:
    if not values:
        return "-"
    step = int(values.get("step", 0))
    shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "step")
    return f"step {step}: {shown}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="NAME=DIR of a training run (repeatable)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budgets = []
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run {spec!r}: expected NAME=DIR")
        budgets.append(read_budget(name, Path(folder)))
    rows = [
        [
            b.name, b.task, b.updates, b.batch, b.updates * b.batch, ", ".join(b.devices),
            f"{b.wall_s / 60:.0f} min", f"{b.step_s:.2f}", f"{b.items_s:.2f}",
            "-" if b.wait is None else f"{100 * b.wait:.1f} %", _validation(b.validation),
        ]
        for b in budgets
    ]
    header = [
        "model", "task", "updates", "global batch", "items seen", "device", "wall time",
        "s / update (median)", "items / s (median)", "waiting for data (last session)", "last validation",
    ]
    body = (
        "Read from each run's own logs (train.log sessions, log.csv windows, summary.json, val.csv); "
        "nothing is re-run. Items are synthetic pairs (HyNet, HNDesc) or tuples of 1 anchor + 1 positive "
        "+ 5 negatives (HOW). Wall time sums the sessions of a resumed run (mining, validation and "
        "checkpoints included), each from its \"Training ...\" line to its last logged line: a session that "
        "was killed ends at its last line (a lower bound; the lines with which the next invocation resumes "
        "are not counted). There is no SIFT row: nothing is trained for SIFT; each model card names "
        "its command.\n\n" + table(header, rows)
    )
    publish(KEY, TITLE, body, dry_run=args.no_write)


if __name__ == "__main__":
    main()
