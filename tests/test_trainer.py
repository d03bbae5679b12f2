"""The generic trainer: exact resume, atomic checkpoints, logs and curves, schedules, DDP (gloo)."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError
from hloc_hndesc.training import checkpoints as ckpt
from hloc_hndesc.training.curves import FRAME_COLOUR, CsvLog, nice_ticks, panel_grid, read_csv_log
from hloc_hndesc.training.sampler import ResumableBatchSampler, item_rng
from hloc_hndesc.training.trainer import (
    TRAIN_DEFAULTS,
    build_scheduler,
    check_train_conf,
    lr_factor,
    train,
)

TESTS_DIR = Path(__file__).resolve().parent
DIM = 6


class ToyDataset(Dataset):
    """Regression items fixed per index, with random noise drawn from ``(epoch, index)``."""

    def __init__(self, n: int = 20, augment: float = 0.1, delay: float = 0.0) -> None:
        self.n, self.augment, self.delay = n, augment, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        if self.delay:
            time.sleep(self.delay)
        x = np.random.default_rng([5, index]).normal(size=DIM)
        y = np.array([x.sum(), np.sin(x).prod()])
        x = x + self.augment * item_rng(11, epoch, index).normal(size=DIM)
        return {"x": torch.tensor(x, dtype=torch.float32), "y": torch.tensor(y, dtype=torch.float32)}


class ToyTask:
    """A small MLP with dropout; an EMA "bank" as extra task state; a validation that uses RNGs."""

    def __init__(self, dropout: float = 0.2, init_seed: int = 0, delay: float = 0.0) -> None:
        torch.manual_seed(init_seed)
        self.model = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))
        self.dataset = ToyDataset(delay=delay)
        self.bank = torch.zeros(2)
        self._last = torch.zeros(2)

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        err = self.model(batch["x"]) - batch["y"]
        self._last = err.detach().abs().mean(0)
        return (err**2).mean(), {"mae": float(err.detach().abs().mean())}

    def on_step_end(self, step: int) -> None:
        self.bank = 0.9 * self.bank + 0.1 * self._last

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.bank = state["bank"].clone()

    def validate(self) -> dict[str, float]:
        # draws from every global RNG on purpose: the trainer must keep them out of training.
        torch.rand(5)
        np.random.rand(3)
        random.random()
        x = torch.linspace(-1, 1, 4 * DIM).view(4, DIM)
        return {"mse": float((self.model(x) ** 2).mean())}


def toy_conf(out: Path, **overrides: object) -> dict:
    conf = {
        "steps": 12, "batch_size": 8, "optimizer": "adamw", "lr": 0.02, "weight_decay": 0.01,
        "scheduler": {"name": "cosine", "warmup": 3, "min_factor": 0.1},
        "grad_clip": 1.0, "checkpoint_every": 4, "keep_last": 2, "log_every": 1,
        "validate_every": 5, "output_dir": str(out), "progress": False, "tensorboard": False,
        "device": "cpu",
    }
    conf.update(overrides)
    return conf


def params(task: ToyTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


@pytest.fixture
def log_records():
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


# -- sampler -------------------------------------------------------------------------------------


def test_sampler_epochs_shards_and_start():
    full = ResumableBatchSampler(10, 4, seed=3, end_step=10)
    batches = list(full)
    stream = [item for batch in batches for item in batch]
    for epoch in range(4):  # every epoch is a permutation of the 10 items
        assert sorted(i for e, i in stream if e == epoch) == list(range(10))
    assert {e for e, _ in batches[2]} == {0, 1}  # step 2 straddles epochs 0 and 1
    assert [i for e, i in stream if e == 0] != list(range(10))
    assert list(ResumableBatchSampler(10, 4, seed=3, start_step=7, end_step=10)) == batches[7:]
    ranks = [list(ResumableBatchSampler(10, 4, seed=3, end_step=10, rank=r, world_size=2)) for r in range(2)]
    assert all(ranks[0][s] + ranks[1][s] == batches[s] for s in range(10))
    assert list(ResumableBatchSampler(10, 4, seed=4, end_step=10)) != batches
    with pytest.raises(ValueError, match="divisible"):
        ResumableBatchSampler(10, 5, world_size=2)


# -- exact resume --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(tmp_path: Path, workers: int):
    straight = ToyTask()
    out_a = tmp_path / "straight"
    summary_a = train(straight, toy_conf(out_a, num_workers=workers))
    assert summary_a["completed"] and summary_a["step"] == 12

    # validation and checkpoint cadence differ on purpose: they must not touch the training stream
    first = ToyTask()
    out_b = tmp_path / "split"
    summary_b1 = train(first, toy_conf(out_b, num_workers=workers, until_step=6, validate_every=2,
                                       checkpoint_every=5))
    assert summary_b1["step"] == 6 and not summary_b1["completed"]
    assert not any(torch.equal(v, params(straight)[k]) for k, v in params(first).items() if v.dim() == 2)

    resumed = ToyTask(init_seed=99)  # different initial weights: the checkpoint must replace them
    summary_b2 = train(resumed, toy_conf(out_b, num_workers=workers, validate_every=4))
    assert summary_b2["start_step"] == 6 and summary_b2["completed"]

    for key, value in params(straight).items():
        assert torch.equal(value, params(resumed)[key]), key
    assert torch.equal(straight.bank, resumed.bank) and straight.bank.abs().sum() > 0
    rows_a, rows_b = read_csv_log(out_a / "log.csv"), read_csv_log(out_b / "log.csv")
    assert [r["step"] for r in rows_b] == list(range(1, 13))
    for ra, rb in zip(rows_a, rows_b):
        assert (ra["loss"], ra["mae"], ra["lr"], ra["grad_norm"]) == (rb["loss"], rb["mae"], rb["lr"], rb["grad_norm"])
    assert [r["step"] for r in read_csv_log(out_b / "val.csv")] == [2, 4, 6, 8, 12]
    assert summary_a["val"] == summary_b2["val"]

    other_seed = ToyTask()
    train(other_seed, toy_conf(tmp_path / "seed1", num_workers=workers, seed=1))
    assert not torch.equal(params(other_seed)["0.weight"], params(straight)["0.weight"])


# -- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_keep_last_and_contents(tmp_path: Path):
    train(ToyTask(), toy_conf(tmp_path, steps=10, checkpoint_every=2, keep_last=2))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000008.pt", "step_00000008.pt.sha256", "step_00000010.pt", "step_00000010.pt.sha256"]
    state = torch.load(tmp_path / "checkpoints" / "step_00000010.pt", weights_only=True)
    assert state["step"] == 10 and state["format"] == ckpt.CHECKPOINT_FORMAT
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "task", "rng", "config"}
    assert state["config"]["steps"] == 10 and len(state["rng"]) == 1
    assert isinstance(state["rng"][0]["numpy"]["keys"], list)
    assert (tmp_path / "model.pt").is_file() and json.loads((tmp_path / "summary.json").read_text())["step"] == 10


def test_corrupt_checkpoints_are_skipped_or_refused(tmp_path: Path, log_records, monkeypatch):
    conf = toy_conf(tmp_path, steps=8, checkpoint_every=2, keep_last=0, validate_every=0)
    train(ToyTask(), conf)
    d = tmp_path / "checkpoints"
    p2, p4, p6, p8 = (ckpt.checkpoint_path(d, s) for s in (2, 4, 6, 8))
    p8.write_bytes(p8.read_bytes()[: p8.stat().st_size // 2])  # truncated
    data = bytearray(p6.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    p6.write_bytes(bytes(data))
    ckpt.sidecar_path(p4).unlink()  # crashed before the sidecar was committed
    assert ckpt.find_latest_checkpoint(d) == p2
    for path, message in ((p8, "truncated or corrupt"), (p6, "truncated or corrupt"), (p4, "no sha256 sidecar")):
        with pytest.raises(ckpt.CheckpointError, match=message):
            train(ToyTask(), {**conf, "resume": str(path)})
    summary = train(ToyTask(), {**conf, "keep_last": 2})  # resume=auto: continues from step 2
    assert summary["start_step"] == 2 and summary["step"] == 8
    assert sum("Ignoring checkpoint" in r.getMessage() for r in log_records) >= 3
    assert sorted(p.name for p in d.iterdir()) == [  # the broken 6 and 8 did not crowd out new ones
        "step_00000006.pt", "step_00000006.pt.sha256", "step_00000008.pt", "step_00000008.pt.sha256"]
    assert ckpt.find_latest_checkpoint(d) == p8
    with pytest.raises(ckpt.CheckpointError, match="resume=auto"):
        train(ToyTask(), {**conf, "resume": None})

    # a crash while writing (data file or sidecar) never leaves a valid newer checkpoint
    state = {"model": {"w": torch.ones(3)}}

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        ckpt.save_training_checkpoint(state, d, 10)
    monkeypatch.undo()
    assert not ckpt.checkpoint_path(d, 10).exists() and not list(d.glob("*.tmp*"))
    real_write = ckpt.write_bytes

    def crash_on_sidecar(path: Path, data: bytes, durable: bool = False) -> Path:
        if path.name.endswith(".sha256"):
            raise KeyboardInterrupt
        return real_write(path, data, durable)

    monkeypatch.setattr(ckpt, "write_bytes", crash_on_sidecar)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_training_checkpoint(state, d, 12)
    monkeypatch.undo()
    assert ckpt.checkpoint_path(d, 12).exists() and ckpt.find_latest_checkpoint(d) == p8


def test_rewind_sets_newer_checkpoints_aside(tmp_path: Path):
    conf = toy_conf(tmp_path, steps=8, checkpoint_every=2, keep_last=0, validate_every=0)
    train(ToyTask(), conf)
    d = tmp_path / "checkpoints"
    summary = train(ToyTask(), {**conf, "resume": str(ckpt.checkpoint_path(d, 4)), "until_step": 5})
    assert (summary["start_step"], summary["step"]) == (4, 5)
    assert [s for s, _ in ckpt.list_checkpoints(d)] == [2, 4, 5]
    assert sorted(p.name for p in d.glob("*.superseded")) == [
        "step_00000006.pt.sha256.superseded", "step_00000006.pt.superseded",
        "step_00000008.pt.sha256.superseded", "step_00000008.pt.superseded"]
    assert train(ToyTask(), conf)["start_step"] == 5


def test_init_weights_starts_a_fresh_run_from_given_weights(tmp_path: Path, log_records):
    base = tmp_path / "base"
    train(ToyTask(), toy_conf(base, steps=6, validate_every=0))
    trained = torch.load(base / "model.pt", weights_only=True)["state_dict"]
    fresh = params(ToyTask(init_seed=1))
    assert any(not torch.equal(fresh[k], trained[k]) for k in trained)
    # lr 0: the one update changes nothing, so the model is exactly what was loaded.
    for source in (base / "model.pt", ckpt.checkpoint_path(base / "checkpoints", 4)):
        out = tmp_path / f"tune_{source.stem}"
        task = ToyTask(init_seed=1)
        train(task, toy_conf(out, steps=1, lr=0.0, validate_every=0, init_weights=str(source)))
        expected = trained if source.name == "model.pt" else ckpt.load_training_checkpoint(source)["model"]
        assert all(torch.equal(v, expected[k]) for k, v in params(task).items())
    tuned = torch.load(out / "model.pt", weights_only=True)["meta"]["trainer"]
    assert tuned["init_weights"] == str(source)
    assert any("Starting from the weights of" in r.getMessage() for r in log_records)
    # a resumed run takes the checkpoint's weights and never reads init_weights.
    summary = train(ToyTask(), toy_conf(base, steps=6, validate_every=0, init_weights=str(tmp_path / "nope.pt")))
    assert summary["start_step"] == 6
    other = nn.Sequential(nn.Linear(DIM, 3))
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"init_weights: Checkpoint .*other\.pt does not fit"):
        train(ToyTask(), toy_conf(tmp_path / "bad", init_weights=str(tmp_path / "other.pt")))
    with pytest.raises(ckpt.CheckpointError, match=r"init_weights: Checkpoint file not found: .*missing\.pt"):
        train(ToyTask(), toy_conf(tmp_path / "bad2", init_weights=str(tmp_path / "missing.pt")))


def test_time_limit_stops_with_a_checkpoint_and_resumes(tmp_path: Path):
    conf = toy_conf(tmp_path, steps=6, validate_every=0, checkpoint_every=100)
    first = train(ToyTask(), {**conf, "time_limit": 1e-6})
    assert first["stopped_early"] and first["step"] == 1 and not first["completed"]
    assert ckpt.find_latest_checkpoint(tmp_path / "checkpoints") == ckpt.checkpoint_path(tmp_path / "checkpoints", 1)
    assert not (tmp_path / "model.pt").exists()
    second = train(ToyTask(), conf)
    assert (second["start_step"], second["step"], second["completed"]) == (1, 6, True)
    again = train(ToyTask(), conf)  # nothing left to do: the saved results come back
    assert (again["start_step"], again["step"]) == (6, 6) and again["train"]["loss"] == second["train"]["loss"]
    assert [r["step"] for r in read_csv_log(tmp_path / "log.csv")] == list(range(1, 7))


# -- schedules, config, AMP ----------------------------------------------------------------------


def test_scheduler_values():
    cos = {"name": "cosine", "warmup": 4, "min_factor": 0.1, "step_size": 1, "gamma": 1.0}
    assert [lr_factor(s, 104, cos) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 104, cos) == pytest.approx(1.0)
    assert lr_factor(54, 104, cos) == pytest.approx(0.55)
    assert lr_factor(104, 104, cos) == pytest.approx(0.1)
    step = {"name": "step", "warmup": 0, "min_factor": 0.0, "step_size": 10, "gamma": 0.5}
    assert [lr_factor(s, 100, step) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    const = {"name": "constant", "warmup": 2, "min_factor": 0.0, "step_size": 1, "gamma": 1.0}
    assert [lr_factor(s, 100, const) for s in (0, 1, 50)] == [0.5, 1.0, 1.0]
    conf = check_train_conf({"steps": 20, "lr": 0.1, "scheduler": {"name": "cosine", "warmup": 2}})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, conf)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * lr_factor(s, 20, conf.scheduler) for s in range(20)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="stepz"):
        train(ToyTask(), {"stepz": 3, "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="optimizer"):
        check_train_conf({"optimizer": "adamx"})
    with pytest.raises(ConfigError, match="warmpu"):
        check_train_conf({"scheduler": {"warmpu": 3}})
    with pytest.raises(ConfigError, match="amp"):
        check_train_conf({"amp": "fp8"})
    assert set(TRAIN_DEFAULTS) >= {"steps", "batch_size", "optimizer", "lr", "weight_decay", "scheduler",
                                   "grad_clip", "amp", "seed", "num_workers", "checkpoint_every",
                                   "keep_last", "log_every", "validate_every", "output_dir", "resume", "device"}


def test_amp_is_ignored_on_cpu(tmp_path: Path, log_records):
    plain, mixed = ToyTask(), ToyTask()
    train(plain, toy_conf(tmp_path / "fp32", steps=4))
    train(mixed, toy_conf(tmp_path / "bf16", steps=4, amp="bf16"))
    assert any("CUDA-only" in r.getMessage() for r in log_records)
    for key, value in params(plain).items():
        assert torch.equal(value, params(mixed)[key])


# -- logs and curves -----------------------------------------------------------------------------


def test_csv_png_and_throughput(tmp_path: Path):
    summary = train(ToyTask(), toy_conf(tmp_path, steps=10, log_every=2, validate_every=5))
    rows = read_csv_log(tmp_path / "log.csv")
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "loss", "grad_norm", "mae", "lr", "step_time", "data_time", "load_time",
                      "step_items_s", "loader_items_s"]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    for r in rows:  # lr of the last update of each window
        assert r["lr"] == pytest.approx(0.02 * lr_factor(int(r["step"]) - 1, 10, check_train_conf(toy_conf(tmp_path)).scheduler))
        assert r["step_time"] > 0 and r["loader_items_s"] > 0 and r["step_items_s"] > 0
    assert [r["step"] for r in read_csv_log(tmp_path / "val.csv")] == [5, 10]
    assert summary["throughput"]["step_items_s"] > 0 and 0 <= summary["throughput"]["data_wait_fraction"] < 1

    image = cv2.imread(str(tmp_path / "curves.png"))
    assert image is not None and image.dtype == np.uint8
    panels = len(header) - 1 + 1  # every column but step, plus val/mse
    nrows, ncols = panel_grid(panels)
    assert image.shape[:2] == (26 + nrows * 210, ncols * 330)
    mask = np.all(image == np.array(FRAME_COLOUR, np.uint8), axis=2).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    frames = [s for s in stats[1:] if s[cv2.CC_STAT_WIDTH] > 165 and s[cv2.CC_STAT_HEIGHT] > 105]
    assert len(frames) == panels
    # curves are drawn: each frame's inside is not blank
    x, y, w, h = frames[0][:4]
    inside = image[y + 2 : y + h - 2, x + 2 : x + w - 2]
    assert (np.abs(inside.astype(int) - 255).sum(axis=2) > 60).sum() > 20


def test_csv_log_resume_and_ticks(tmp_path: Path):
    log = CsvLog(tmp_path / "log.csv")
    for step in range(1, 6):
        log.append({"step": step, "loss": 1.0 / step, **({"extra": 2.0} if step > 3 else {})})
    assert read_csv_log(tmp_path / "log.csv")[4] == {"step": 5.0, "loss": 0.2, "extra": 2.0}
    kept = CsvLog(tmp_path / "log.csv", keep_until=3)
    assert [r["step"] for r in kept.rows] == [1, 2, 3]
    assert [r["step"] for r in read_csv_log(tmp_path / "log.csv")] == [1, 2, 3]
    assert nice_ticks(0.03, 0.97) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert nice_ticks(-3, 12, 4) == [0, 5, 10]


@pytest.mark.parametrize("workers, message", [(0, "num_workers=0"), (2, "workers produce")])
def test_data_bottleneck_is_reported(tmp_path: Path, log_records, workers: int, message: str):
    summary = train(ToyTask(delay=0.004), toy_conf(tmp_path, steps=4, validate_every=0, num_workers=workers))
    assert summary["throughput"]["data_wait_fraction"] > 0.5
    assert summary["throughput"]["loader_items_s"] < summary["throughput"]["step_items_s"]
    assert any(message in r.getMessage() and r.levelno == logging.WARNING for r in log_records)


# -- several processes ---------------------------------------------------------------------------

DDP_SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_trainer import ToyTask, toy_conf
from hloc_hndesc.training.trainer import train

out, params_dir = sys.argv[1], sys.argv[2]
task = ToyTask(dropout=0.0)
summary = train(task, toy_conf(out, steps=8, checkpoint_every=4, validate_every=4, num_workers=0))
rank = int(os.environ["RANK"])
torch.save(task.model.state_dict(), os.path.join(params_dir, f"rank{{rank}}.pt"))
with open(os.path.join(params_dir, f"summary{{rank}}.json"), "w") as fh:
    json.dump(summary, fh)
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path):
    script = tmp_path / "ddp_toy.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(TESTS_DIR))))
    out, params_dir = tmp_path / "ddp", tmp_path / "params"
    params_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(script), str(out), str(params_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0 = torch.load(params_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(params_dir / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "curves.png", "log.csv", "model.pt",
                                                     "summary.json", "train.log", "val.csv"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000004.pt", "step_00000004.pt.sha256", "step_00000008.pt", "step_00000008.pt.sha256"]
    saved = torch.load(out / "checkpoints" / "step_00000008.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    summaries = [json.loads((params_dir / f"summary{r}.json").read_text()) for r in range(2)]
    assert summaries[0]["train"]["loss"] == summaries[1]["train"]["loss"]

    single = ToyTask(dropout=0.0)
    train(single, toy_conf(tmp_path / "single", steps=8, checkpoint_every=4, validate_every=4))
    for key, value in params(single).items():
        assert torch.allclose(value, rank0[key], atol=1e-6, rtol=0), (key, (value - rank0[key]).abs().max())
    ddp_rows = read_csv_log(out / "log.csv")
    single_rows = read_csv_log(tmp_path / "single" / "log.csv")
    assert len(ddp_rows) == len(single_rows) == 8
    for a, b in zip(ddp_rows, single_rows):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5) and a["step_items_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_and_resume(tmp_path: Path, amp: str):
    task = ToyTask()
    summary = train(task, toy_conf(tmp_path, device="cuda", amp=amp, until_step=6, num_workers=2))
    assert next(task.model.parameters()).is_cuda and math.isfinite(summary["train"]["loss"])
    saved = torch.load(ckpt.checkpoint_path(tmp_path / "checkpoints", 6), weights_only=True)
    assert ("scale" in saved["scaler"]) == (amp == "fp16") and "cuda" in saved["rng"][0]
    resumed = train(ToyTask(), toy_conf(tmp_path, device="cuda", amp=amp, num_workers=2))
    assert resumed["start_step"] == 6 and resumed["completed"]
