"""Generic, task-agnostic trainer: ``train(task, conf) -> metrics``.

The task
--------
A task (see :class:`Task`) is any object with

- ``model``: the ``nn.Module`` to train; every trainable parameter must live in it (it is what
  the optimiser, DDP and the checkpoints see);
- ``dataset``: a map-style dataset whose ``__getitem__`` takes an ``(epoch, index)`` tuple and
  is a *deterministic function of it* (draw augmentation randomness from
  :func:`~hloc_hndesc.training.sampler.item_rng`, never from the global RNGs). This is how data
  order and augmentation resume exactly without saving worker RNG states;
- ``loss(batch, step) -> (loss, metrics)``: ``batch`` is the collated batch already on the
  device, ``step`` the number of updates done before this one (0-based index of the update);
  ``loss`` a scalar tensor, ``metrics`` a dict of floats (logged and averaged across ranks);

and optionally ``collate(items) -> batch`` (default: torch's ``default_collate``),
``setup(context: TrainContext)`` (called once, after the model is on its device and before the
task state is restored), ``state_dict()``/``load_state_dict(state)`` for extra state to
checkpoint (e.g. a mining bank; tensors and plain containers only), ``on_step_end(step)``
(called on every rank after update ``step`` (1-based count of updates done); e.g. to refresh a
bank), ``validate() -> dict`` (rank 0 only, model in eval mode, under ``no_grad``, inside a
fork of every global RNG so that validating never changes the training stream) and
``checkpoint_meta() -> dict`` (plain data recorded in the final ``model.pt`` beside the trainer
config and the git commit, e.g. the task's config and training data for the model card).

The run
-------
- Config: :data:`TRAIN_DEFAULTS`, merged strictly (a typo raises ``ConfigError``).
  ``batch_size`` is the *global* batch (split evenly across processes). ``steps`` fixes the
  schedule; ``until_step`` and ``time_limit`` stop one invocation early (with a checkpoint)
  without changing it, so a long run can be cut into commands of a few minutes.
- Data: :class:`~hloc_hndesc.training.sampler.ResumableBatchSampler` (order from ``(seed,
  step)``), a ``DataLoader`` with ``num_workers`` processes and its own seeded generator (so
  that creating it draws nothing from the global torch RNG). Each batch comes with the time a
  worker took to produce it, so the loader's capacity can be compared to the step's rate.
- Update: optional autocast (``amp`` = ``bf16`` or ``fp16``, CUDA only: on the CPU it is off,
  with a log line) and a ``GradScaler`` for fp16, optional gradient-norm clipping, optimiser
  (adam, adamw, sgd) and a per-step ``LambdaLR`` schedule (:func:`lr_factor`).
- Checkpoints (:mod:`~hloc_hndesc.training.checkpoints`) every ``checkpoint_every`` updates and
  when an invocation stops: model, optimiser, scheduler, scaler, task state, step, the
  torch/numpy/Python RNG states of every rank, config. ``resume="auto"`` continues from the
  newest checkpoint that verifies; on the CPU a resumed run is bitwise identical to an
  uninterrupted one (GPU kernels may be non-deterministic). Checkpoints newer than the step a
  run starts from (broken ones, or a deliberate rewind with ``resume=PATH``) are set aside.
  ``init_weights`` starts a fresh run from given weights (fine-tuning; read with
  ``weights_only=True`` and loaded strictly); what a task initialises from data at step 0 (HOW's
  whitening) is still initialised, with the loaded network.
- Several processes: under ``torchrun`` (``WORLD_SIZE`` in the environment) the process group
  is initialised from ``env://`` (nccl on CUDA, gloo on the CPU), the loss computation
  (``task.loss`` with the model inside) is wrapped in ``DistributedDataParallel`` so that any
  method of the model may be called, logged metrics are averaged over ranks and only rank 0
  writes logs and checkpoints. Dropout masks differ per rank (seeded ``seed + rank``).
  Validation runs on rank 0 while the others wait in the next collective, so it must stay
  shorter than the process group's timeout.
- Logs (rank 0) in ``output_dir``: ``log.csv`` (step, loss, metrics, lr, step and data times,
  items/s of the step and of the loader), ``val.csv``, ``curves.png`` (redrawn at each
  checkpoint), ``train.log`` (the package logger), TensorBoard under ``tb/`` when installed,
  ``summary.json`` at the end of each invocation and ``model.pt`` (weights in the project's
  checkpoint layout) when ``steps`` is reached.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hloc_hndesc import logger
from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.files import atomic_path
from hloc_hndesc.provenance import git_commit
from hloc_hndesc.weights import WeightsError, apply_checkpoint, load_checkpoint, save_checkpoint, sha256sum

from .checkpoints import (
    CheckpointError,
    find_latest_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    prune_checkpoints,
    retire_checkpoints_after,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
)
from .curves import CsvLog, TensorBoardLog, plot_curves
from .sampler import ResumableBatchSampler

TRAIN_DEFAULTS: dict[str, Any] = {
    # total number of optimiser updates (fixes the learning-rate schedule).
    "steps": 1000,
    # stop this invocation after this update (with a checkpoint); None: run to `steps`.
    "until_step": None,
    # stop this invocation at the first update past this many seconds (with a checkpoint).
    "time_limit": None,
    # global batch size (all processes together); must be divisible by the process count.
    "batch_size": 32,
    "optimizer": "adam",  # adam | adamw | sgd
    "lr": 1e-3,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],  # adam, adamw
    "momentum": 0.9,  # sgd
    "scheduler": {
        "name": "constant",  # constant | cosine | step
        # linear warm-up over the first `warmup` updates (any schedule).
        "warmup": 0,
        # cosine: final lr = lr * min_factor.
        "min_factor": 0.0,
        # step: lr * gamma ** (update // step_size).
        "step_size": 1000,
        "gamma": 0.1,
    },
    # max global gradient norm (0: no clipping).
    "grad_clip": 0.0,
    # mixed precision on CUDA: none | bf16 | fp16 (off on the CPU, with a log line).
    "amp": "none",
    "seed": 0,
    "num_workers": 0,
    # batches each worker prepares ahead (num_workers > 0).
    "prefetch_factor": 2,
    "checkpoint_every": 1000,
    # checkpoints kept in output_dir/checkpoints (<= 0: all).
    "keep_last": 3,
    "log_every": 50,
    # validation every N updates and when `steps` is reached (0: only then); needs task.validate.
    "validate_every": 0,
    "output_dir": "outputs/train",
    # "auto": continue from the newest valid checkpoint of output_dir (fresh start if none);
    # None: fresh start (refused when output_dir holds checkpoints); or a checkpoint path.
    "resume": "auto",
    # weights to start a fresh run from (fine-tuning): a model file of this project (``model.pt``,
    # a shipped checkpoint) or a trainer checkpoint; loaded strictly into ``task.model``.
    # Ignored when the run resumes (the checkpoint's weights win). None: the task's initialisation.
    "init_weights": None,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "progress": True,
    "tensorboard": True,
    # DDP's find_unused_parameters (needed when some parameters get no gradient).
    "find_unused_parameters": False,
}

_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULERS = ("constant", "cosine", "step")
_AMP = ("none", "bf16", "fp16")


@runtime_checkable
class Task(Protocol):
    """What :func:`train` needs from a task (optional members: see the module docstring)."""

    model: nn.Module
    dataset: Dataset

    def loss(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of ``batch`` and metrics (floats) for update number ``step`` (0-based)."""
        ...


@dataclass(frozen=True)
class TrainContext:
    """What a task's ``setup`` hook learns about the run."""

    device: torch.device
    rank: int
    world_size: int
    is_main: bool
    output_dir: Path
    start_step: int
    conf: DictConfig


def seed_everything(seed: int) -> None:
    """Seed the torch (CPU and CUDA), numpy and Python global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, steps: int, scheduler: Mapping[str, Any]) -> float:
    """Learning-rate multiplier of update ``step`` (0-based) of ``steps`` (see ``scheduler``)."""
    name = scheduler["name"]
    warmup = int(scheduler["warmup"])
    factor = (step + 1) / warmup if step < warmup else 1.0
    if name == "constant":
        return factor
    if name == "cosine":
        progress = min(max((step - warmup) / max(steps - warmup, 1), 0.0), 1.0)
        low = float(scheduler["min_factor"])
        return factor * (low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    if name == "step":
        return factor * float(scheduler["gamma"]) ** (step // int(scheduler["step_size"]))
    raise ConfigError(f"trainer: scheduler.name={name!r}, expected one of {_SCHEDULERS}")


def build_optimizer(params: Any, conf: DictConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``conf.optimizer`` over ``params``."""
    lr, wd = float(conf.lr), float(conf.weight_decay)
    if conf.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(conf.betas), weight_decay=wd)
    if conf.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(conf.betas), weight_decay=wd)
    if conf.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(conf.momentum), weight_decay=wd)
    raise ConfigError(f"trainer: optimizer={conf.optimizer!r}, expected one of {_OPTIMIZERS}")


def build_scheduler(optimizer: torch.optim.Optimizer, conf: DictConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-update ``LambdaLR`` following :func:`lr_factor`."""
    steps = int(conf.steps)
    scheduler = OmegaConf.to_container(conf.scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, scheduler))


def check_train_conf(conf: Mapping[str, Any] | DictConfig | None) -> DictConfig:
    """:data:`TRAIN_DEFAULTS` merged with ``conf``; unknown keys or bad values raise ConfigError."""
    if isinstance(conf, Mapping) and not isinstance(conf, DictConfig):
        conf = {k: str(v) if isinstance(v, PurePath) else v for k, v in conf.items()}
    conf = merge_conf(TRAIN_DEFAULTS, conf, "trainer")
    problems = []
    if conf.optimizer not in _OPTIMIZERS:
        problems.append(f"optimizer={conf.optimizer!r} (expected one of {_OPTIMIZERS})")
    if conf.scheduler.name not in _SCHEDULERS:
        problems.append(f"scheduler.name={conf.scheduler.name!r} (expected one of {_SCHEDULERS})")
    if conf.amp not in _AMP:
        problems.append(f"amp={conf.amp!r} (expected one of {_AMP})")
    for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if int(conf[key]) < 1 or int(conf[key]) != conf[key]:
            problems.append(f"{key}={conf[key]!r} (expected a positive integer)")
    for key in ("num_workers", "validate_every"):
        if int(conf[key]) < 0:
            problems.append(f"{key}={conf[key]!r} (expected >= 0)")
    if conf.scheduler.name == "step" and int(conf.scheduler.step_size) < 1:
        problems.append("scheduler.step_size must be positive")
    if len(conf.betas) != 2:
        problems.append(f"betas={list(conf.betas)} (expected two numbers)")
    if conf.until_step is not None and int(conf.until_step) < 0:
        problems.append(f"until_step={conf.until_step!r} (expected >= 0)")
    if conf.time_limit is not None and float(conf.time_limit) <= 0:
        problems.append(f"time_limit={conf.time_limit!r} (expected seconds > 0)")
    if problems:
        raise ConfigError("trainer: invalid config: " + "; ".join(problems))
    return conf


def move_to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (in nested dicts, lists and tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


class _TimedDataset(Dataset):
    """Wraps the task's dataset: items come with the seconds spent producing them."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, float]:
        start = time.perf_counter()
        item = self.dataset[key]
        return item, time.perf_counter() - start


class _TimedCollate:
    """Collates timed items into ``(batch, seconds to produce the batch, item count)``."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[Any, float]]) -> tuple[Any, float, int]:
        start = time.perf_counter()
        batch = self.collate([item for item, _ in items])
        return batch, sum(t for _, t in items) + time.perf_counter() - start, len(items)


class _LossModule(nn.Module):
    """``task.loss`` as a module around ``task.model``, so that DDP sees the whole forward."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.model = task.model
        self.loss_fn = task.loss

    def forward(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(batch, step)


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer: device={name!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def _setup_distributed(conf: DictConfig) -> tuple[_Dist, torch.device]:
    info = _Dist()
    if dist.is_available() and dist.is_initialized():
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
        info.local_rank = int(os.environ.get("LOCAL_RANK", info.rank))
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        info.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = _resolve_device(str(conf.device), info.local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
        info.rank, info.world_size, info.created = dist.get_rank(), dist.get_world_size(), True
        return info, device
    return info, _resolve_device(str(conf.device), info.local_rank)


def _flatten(conf: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(conf, Mapping):
        out: dict[str, Any] = {}
        for key, value in conf.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: conf}


class _Window:
    """Sums over the updates since the last log row (and over the whole invocation)."""

    def __init__(self) -> None:
        self.reset()
        self.total_items = 0
        self.total_step = self.total_data = self.total_load = 0.0

    def reset(self) -> None:
        self.count = 0
        self.items = 0
        self.sums: dict[str, float] = {}
        self.step_time = self.data_time = self.load_time = 0.0

    def add(self, values: Mapping[str, float], items: int, step_s: float, data_s: float, load_s: float) -> None:
        self.count += 1
        self.items += items
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.step_time += step_s
        self.data_time += data_s
        self.load_time += load_s
        self.total_items += items
        self.total_step += step_s
        self.total_data += data_s
        self.total_load += load_s


class _Trainer:
    def __init__(self, task: Task, conf: DictConfig, info: _Dist, device: torch.device) -> None:
        self.task, self.conf, self.info, self.device = task, conf, info, device
        self.main = info.rank == 0
        self.out = Path(conf.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.workers = int(conf.num_workers)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.amp_dtype = None
        if conf.amp != "none":
            if device.type == "cuda":
                self.amp_dtype = torch.bfloat16 if conf.amp == "bf16" else torch.float16
            else:
                logger.info("amp=%s is CUDA-only: training in float32 on %s", conf.amp, device)
        seed_everything(int(conf.seed) + info.rank)
        checkpoint = self._resume_checkpoint()
        self.model = task.model.to(device)
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
        elif conf.init_weights:
            self._initialise(Path(str(conf.init_weights)))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("task.model has no trainable parameters")
        self.params = params
        self.optimizer = build_optimizer(params, conf)
        self.scheduler = build_scheduler(self.optimizer, conf)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.start_step = 0
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.scaler.load_state_dict(checkpoint["scaler"])
            self.start_step = int(checkpoint["step"])
        if self.main:
            retire_checkpoints_after(self.ckpt_dir, self.start_step)
        self.context = TrainContext(device, info.rank, info.world_size, self.main, self.out, self.start_step, conf)
        if hasattr(task, "setup"):
            task.setup(self.context)
        if checkpoint is not None and hasattr(task, "load_state_dict"):
            task.load_state_dict(checkpoint.get("task", {}))
        self.forward: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]] = task.loss
        if info.active:
            self.forward = DistributedDataParallel(
                _LossModule(task),
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(conf.find_unused_parameters),
            )
        self.last_val: dict[str, float] = {}
        self.last_row: dict[str, float] = {}
        if checkpoint is not None:
            self.last_row = dict(checkpoint.get("metrics", {}))
            self.last_val = dict(checkpoint.get("val", {}))
            self._restore_rng(checkpoint)

    # -- resume -------------------------------------------------------------------------

    def _resume_checkpoint(self) -> dict[str, Any] | None:
        resume = self.conf.resume
        if resume in (None, "", "none"):
            existing = list_checkpoints(self.ckpt_dir)
            if existing:
                raise CheckpointError(
                    f"{self.ckpt_dir} already holds checkpoints (newest: step {existing[-1][0]}); "
                    "pass resume=auto to continue that run or choose another output_dir"
                )
            return None
        if resume == "auto":
            path = find_latest_checkpoint(self.ckpt_dir)
            if path is None:
                return None
        else:
            path = Path(str(resume))
        checkpoint = load_training_checkpoint(path)
        self._check_resumed_conf(checkpoint.get("config", {}))
        logger.info("Resuming from %s (step %d)", path, int(checkpoint["step"]))
        return checkpoint

    def _initialise(self, path: Path) -> None:
        """Load the weights of ``path`` into the model at the start of a fresh run."""
        try:
            apply_checkpoint(self.model, "the task's model", load_checkpoint(path), path)
        except WeightsError as err:
            raise CheckpointError(f"init_weights: {err}") from None
        logger.info("Starting from the weights of %s (sha256 %s)", path, sha256sum(path))

    def _check_resumed_conf(self, saved: Mapping[str, Any]) -> None:
        now = _flatten(OmegaConf.to_container(self.conf))
        before = _flatten(saved)
        ignored = {"until_step", "time_limit", "resume", "output_dir", "progress", "tensorboard",
                   "num_workers", "prefetch_factor", "log_every", "checkpoint_every", "keep_last",
                   "validate_every", "device", "init_weights"}
        changed = sorted(k for k in now if k not in ignored and k in before and before[k] != now[k])
        if changed:
            logger.warning(
                "Resuming with a changed config (%s): the run will differ from an uninterrupted one",
                ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed),
            )

    def _restore_rng(self, checkpoint: Mapping[str, Any]) -> None:
        states = checkpoint.get("rng", [])
        if len(states) == self.info.world_size:
            set_rng_state(states[self.info.rank])
        else:
            logger.warning(
                "The checkpoint holds RNG states for %d processes, this run has %d: reseeding "
                "(data order is unchanged, dropout masks are not reproduced)",
                len(states), self.info.world_size,
            )
            seed_everything(int(self.conf.seed) + self.info.rank + 7919 * self.start_step)

    # -- distributed helpers --------------------------------------------------------------

    def _reduce_mean(self, values: list[float]) -> list[float]:
        if not self.info.active:
            return values
        reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=reduce_device)
        dist.all_reduce(tensor)
        return (tensor / self.info.world_size).tolist()

    def _any(self, flag: bool) -> bool:
        if not self.info.active:
            return flag
        return self._reduce_mean([float(flag)])[0] > 0

    # -- data -------------------------------------------------------------------------------

    def _loader(self, end_step: int) -> Iterator[tuple[Any, float, int]]:
        dataset = self.task.dataset
        sampler = ResumableBatchSampler(
            len(dataset), int(self.conf.batch_size), int(self.conf.seed), self.start_step, end_step,
            self.info.rank, self.info.world_size,
        )
        collate = getattr(self.task, "collate", None) or default_collate
        generator = torch.Generator().manual_seed(int(self.conf.seed) * 1000 + self.info.rank)
        kwargs: dict[str, Any] = {}
        if self.workers > 0:
            kwargs["prefetch_factor"] = int(self.conf.prefetch_factor)
        loader = DataLoader(
            _TimedDataset(dataset), batch_sampler=sampler, num_workers=self.workers,
            collate_fn=_TimedCollate(collate), pin_memory=self.device.type == "cuda",
            generator=generator, **kwargs,
        )
        return iter(loader)

    # -- one update -----------------------------------------------------------------------

    def _update(self, batch: Any, step: int) -> tuple[float, dict[str, float], float]:
        self.model.train()
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            loss, metrics = self.forward(batch, step)
        if loss.dim() != 0:
            raise ValueError(f"task.loss must return a scalar tensor, got shape {tuple(loss.shape)}")
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss ({loss_value}) at update {step}")
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        metrics = {k: float(v) for k, v in metrics.items()}
        if float(self.conf.grad_clip) > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, float(self.conf.grad_clip))
            metrics["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss_value, metrics, lr

    # -- validation, checkpoints, logs ----------------------------------------------------

    def _validate(self, step: int, logs: dict[str, Any]) -> None:
        if not self.main or not hasattr(self.task, "validate"):
            return
        start = time.perf_counter()
        np_state, py_state = np.random.get_state(), random.getstate()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.model.eval()
            with torch.no_grad():
                results = {k: float(v) for k, v in self.task.validate().items()}
            self.model.train()
        np.random.set_state(np_state)
        random.setstate(py_state)
        self.last_val = results
        logs["val"].append({"step": step, **results})
        logs["tb"].add(step, results, "val/")
        logger.info(
            "step %d validation (%.1f s): %s", step, time.perf_counter() - start,
            ", ".join(f"{k}={v:.4g}" for k, v in results.items()),
        )

    def _checkpoint(self, step: int, logs: dict[str, Any] | None) -> None:
        states = [rng_state()]
        if self.info.active:
            states = [None] * self.info.world_size
            dist.all_gather_object(states, rng_state())
        if not self.main:
            return
        task_state = self.task.state_dict() if hasattr(self.task, "state_dict") else {}
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "task": task_state,
            "rng": states,
            "config": OmegaConf.to_container(self.conf),
            "world_size": self.info.world_size,
            "metrics": dict(self.last_row),
            "val": dict(self.last_val),
        }
        path = save_training_checkpoint(state, self.ckpt_dir, step)
        prune_checkpoints(self.ckpt_dir, int(self.conf.keep_last))
        if logs is not None:
            self._draw(logs)
        logger.debug("wrote %s", path)

    def _draw(self, logs: dict[str, Any]) -> None:
        series = logs["train"].series()
        series.update(logs["val"].series(prefix="val/"))
        if any(steps for steps, _ in series.values()):
            plot_curves(series, self.out / "curves.png", title=f"training curves: {self.out.name}")

    def _log_row(self, step: int, window: _Window, lr: float, logs: dict[str, Any] | None) -> None:
        keys = sorted(window.sums)
        local = [window.sums[k] / window.count for k in keys]
        local += [window.step_time / window.count, window.data_time / window.count, window.load_time / window.count]
        local += [window.items / max(window.step_time, 1e-12), window.items * max(1, self.workers) / max(window.load_time, 1e-12)]
        reduced = self._reduce_mean(local)
        ws = self.info.world_size
        row = {"step": float(step), "loss": reduced[keys.index("loss")]}
        row.update({k: v for k, v in zip(keys, reduced) if k != "loss"})
        n = len(keys)
        row.update({
            "lr": lr,
            "step_time": reduced[n],
            "data_time": reduced[n + 1],
            "load_time": reduced[n + 2],
            "step_items_s": reduced[n + 3] * ws,
            "loader_items_s": reduced[n + 4] * ws,
        })
        self.last_row = row
        if logs is not None:
            logs["train"].append(row)
            logs["tb"].add(step, {k: v for k, v in row.items() if k != "step"}, "train/")
        window.reset()

    def _throughput(self, window: _Window) -> dict[str, float]:
        local = [
            window.total_items / max(window.total_step, 1e-12),
            window.total_items * max(1, self.workers) / max(window.total_load, 1e-12),
            window.total_data / max(window.total_data + window.total_step, 1e-12),
        ]
        step_rate, loader_rate, wait = self._reduce_mean(local)
        ws = self.info.world_size
        return {"step_items_s": step_rate * ws, "loader_items_s": loader_rate * ws, "data_wait_fraction": wait}

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        conf, steps = self.conf, int(self.conf.steps)
        end = steps if conf.until_step is None else min(steps, int(conf.until_step))
        end = max(end, self.start_step)
        logs: dict[str, Any] | None = None
        if self.main:
            logs = {
                "train": CsvLog(self.out / "log.csv", keep_until=self.start_step),
                "val": CsvLog(self.out / "val.csv", keep_until=self.start_step),
                "tb": TensorBoardLog(self.out / "tb", bool(conf.tensorboard)),
            }
        progress = self.main and bool(conf.progress)
        try:
            with logging_redirect_tqdm([logger]) if progress else contextlib.nullcontext():
                return self._loop(end, steps, logs, progress)
        finally:
            if logs is not None:
                logs["tb"].close()

    def _loop(self, end: int, steps: int, logs: dict[str, Any] | None, progress: bool) -> dict[str, Any]:
        conf, step = self.conf, self.start_step
        logger.info(
            "Training %s on %s x%d: updates %d -> %d of %d, global batch %d, %d workers, output %s",
            type(self.task).__name__, self.device, self.info.world_size, step, end, steps,
            int(conf.batch_size), self.workers, self.out,
        )
        window = _Window()
        deadline = None if conf.time_limit is None else time.monotonic() + float(conf.time_limit)
        log_every, ckpt_every, val_every = int(conf.log_every), int(conf.checkpoint_every), int(conf.validate_every)
        stopped_early = False
        if step < end:
            batches = self._loader(end)
            bar = tqdm(total=end, initial=step, disable=not progress, desc="train")
            try:
                while step < end:
                    t0 = time.perf_counter()
                    batch, load_s, items = next(batches)
                    t1 = time.perf_counter()
                    batch = move_to_device(batch, self.device)
                    loss, metrics, lr = self._update(batch, step)
                    step += 1
                    if hasattr(self.task, "on_step_end"):
                        self.task.on_step_end(step)
                    window.add({"loss": loss, **metrics}, items, time.perf_counter() - t1, t1 - t0, load_s)
                    bar.update(1)
                    stop = deadline is not None and self._any(time.monotonic() > deadline)
                    last = step == end or stop
                    if step % log_every == 0 or last:
                        self._log_row(step, window, lr, logs)
                        bar.set_postfix(loss=f"{self.last_row['loss']:.4g}")
                    if logs is not None and ((val_every and step % val_every == 0) or step == steps):
                        self._validate(step, logs)
                    if step % ckpt_every == 0 or last:
                        self._checkpoint(step, logs)
                    if stop and step < end:
                        stopped_early = True
                        logger.info("time_limit reached: stopping at update %d (checkpointed)", step)
                        break
            finally:
                bar.close()
                del batches
        completed = step >= steps
        finished_now = completed and self.start_step < steps
        throughput = self._throughput(window) if window.total_items else {}
        summary: dict[str, Any] = {
            "step": step,
            "start_step": self.start_step,
            "completed": completed,
            "stopped_early": stopped_early,
            "world_size": self.info.world_size,
            "train": {k: v for k, v in self.last_row.items() if k != "step"},
            "val": dict(self.last_val),
            "throughput": throughput,
        }
        if throughput and self.main:
            self._report_throughput(throughput)
        if self.main:
            if finished_now:
                meta = {"step": step, "trainer": OmegaConf.to_container(conf), "git_commit": git_commit()}
                meta.update(getattr(self.task, "checkpoint_meta", dict)())
                save_checkpoint(self.model, self.out / "model.pt", meta)
            with atomic_path(self.out / "summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=2))
        return summary

    def _report_throughput(self, throughput: Mapping[str, float]) -> None:
        step_rate, loader_rate = throughput["step_items_s"], throughput["loader_items_s"]
        wait = throughput["data_wait_fraction"]
        logger.info(
            "Throughput: training steps consume %.1f items/s, the loader can produce %.1f items/s "
            "(%d workers per process); %.1f%% of the time was spent waiting for data",
            step_rate, loader_rate, self.workers, 100 * wait,
        )
        if self.workers == 0:
            if wait > 0.1:
                logger.warning(
                    "Data loading in the training process (num_workers=0) takes %.0f%% of the "
                    "time: set num_workers so that batches are prepared in parallel", 100 * wait,
                )
        elif loader_rate < 1.1 * step_rate:
            logger.warning(
                "The data loader is a bottleneck: its workers produce %.1f items/s, the steps "
                "consume %.1f items/s (%.0f%% of the time waiting): raise num_workers or make "
                "the dataset cheaper", loader_rate, step_rate, 100 * wait,
            )
        elif wait > 0.1:
            logger.warning(
                "The data loader is a bottleneck: %.0f%% of the time was spent waiting for data "
                "although its workers produce %.1f items/s for %.1f items/s consumed: the cost is "
                "in moving batches between processes (fewer, larger items or tensors help)",
                100 * wait, loader_rate, step_rate,
            )


def _check_task(task: Any) -> None:
    missing = [name for name in ("model", "dataset", "loss") if not hasattr(task, name)]
    if missing:
        raise TypeError(f"a training task needs {missing} (see hloc_hndesc.training.trainer.Task)")
    if not isinstance(task.model, nn.Module):
        raise TypeError(f"task.model must be an nn.Module, got {type(task.model).__name__}")
    if not hasattr(task.dataset, "__getitem__") or not hasattr(task.dataset, "__len__"):
        raise TypeError("task.dataset must be a map-style dataset with __len__ and __getitem__")


def train(task: Task, conf: Mapping[str, Any] | DictConfig | None = None) -> dict[str, Any]:
    """Train ``task`` with the trainer config ``conf`` (see :data:`TRAIN_DEFAULTS`).

    Returns the summary of this invocation: ``step`` reached, ``start_step``, ``completed``,
    ``stopped_early``, the last logged ``train`` row (loss, metrics, lr, times, items/s), the
    last ``val`` results and ``throughput`` (step vs loader items/s, fraction waiting for data).
    """
    conf = check_train_conf(conf)
    _check_task(task)
    info, device = _setup_distributed(conf)
    handler: logging.Handler | None = None
    level = logger.level
    try:
        if int(conf.batch_size) % info.world_size:
            raise ConfigError(
                f"trainer: batch_size={conf.batch_size} is not divisible by the {info.world_size} processes"
            )
        if info.rank == 0:
            Path(conf.output_dir).mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(Path(conf.output_dir) / "train.log")
            handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s"))
            logger.addHandler(handler)
        else:
            logger.setLevel(logging.WARNING)
        summary = _Trainer(task, conf, info, device).run()
        if info.created:
            # every process leaves its last collective before any tears the group down: gloo
            # aborts a process whose peer closes the connection under it
            dist.barrier()
        return summary
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
        if info.created:
            dist.destroy_process_group()
