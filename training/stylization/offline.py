"""Offline stylization of an image folder: resumable, parallel, with a manifest.

``hloc-hndesc stylize INPUT OUTPUT`` writes, for every image ``a/b.jpg`` of INPUT,
``OUTPUT/a/b.png`` (or ``a/b.style<k>.png`` with several copies) stylized with a
reference drawn deterministically from ``(seed, relative path, k)``, so a rerun, a
resumed run and a run with another number of workers write the same files. Outputs are
written to a temporary name and renamed, so a file that exists is complete; a PNG that
was truncated afterwards is detected (no IEND chunk) and redone. ``manifest.jsonl``
records content, reference and solve statistics of every output. By default the
offline command uses the exact matting-Laplacian smoothing.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hloc_hndesc import logger
from hloc_hndesc.io import image_to_tensor, list_images, read_image, resize_max, tensor_to_uint8

from .transform import Stylizer, stylize_conf

MANIFEST = "manifest.jsonl"
PNG_END = b"IEND\xaeB`\x82"


@dataclass(frozen=True)
class Job:
    """One output: content image (relative name), copy index, output name and seed."""

    name: str
    copy: int
    output: str
    seed: int


@dataclass
class StylizeReport:
    """What a run did: outputs written, already complete, and failures (name -> reason)."""

    output_dir: Path
    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def output_name(name: str, copy: int, copies: int) -> str:
    """Output file of copy ``copy`` of image ``name`` (relative, ``.png``)."""
    stem = Path(name).with_suffix("").as_posix()
    return f"{stem}.png" if copies == 1 else f"{stem}.style{copy}.png"


def job_seed(seed: int, name: str, copy: int) -> int:
    """A 63-bit seed from the run seed, the image's relative name and the copy index."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}/{copy}".encode()).digest()[:8], "little") >> 1


def png_complete(path: Path) -> bool:
    """True if ``path`` is a PNG whose last chunk is IEND (not truncated)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(-8, os.SEEK_END)
            return head == b"\x89PNG\r\n\x1a\n" and fh.read(8) == PNG_END
    except OSError:
        return False


def plan(input_dir: Path, output_dir: Path, copies: int, seed: int, overwrite: bool) -> tuple[list[Job], list[str]]:
    """Jobs still to run and outputs already complete."""
    todo, done = [], []
    for name in list_images(input_dir):
        for k in range(copies):
            job = Job(name, k, output_name(name, k, copies), job_seed(seed, name, k))
            if not overwrite and png_complete(output_dir / job.output):
                done.append(job.output)
            else:
                todo.append(job)
    return todo, done


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(data.tobytes())
    tmp.replace(path)


_WORKER: dict[str, Any] = {}


def _init_worker(conf: dict[str, Any], input_dir: str, output_dir: str, max_size: int | None, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(
        stylizer=Stylizer(conf), input_dir=Path(input_dir), output_dir=Path(output_dir), max_size=max_size
    )


def _run_job(job: Job) -> tuple[Job, dict[str, Any] | None, str | None]:
    """Stylize one job in a worker; errors are returned, not raised, so the run goes on."""
    path = _WORKER["input_dir"] / job.name
    try:
        start = time.perf_counter()
        content = image_to_tensor(resize_max(read_image(path), _WORKER["max_size"]))
        stylizer: Stylizer = _WORKER["stylizer"]
        out, source = stylizer(content, np.random.default_rng(job.seed), exclude=path)
        write_png(_WORKER["output_dir"] / job.output, tensor_to_uint8(out))
        solve = stylizer.last_solve
        meta = {
            "output": job.output,
            "content": job.name,
            "reference": source,
            "seed": job.seed,
            "size": list(content.shape[-2:]),
            "seconds": round(time.perf_counter() - start, 3),
            "cg_iterations": solve.iterations if solve else None,
            "cg_residual": solve.residual if solve else None,
        }
        return job, meta, None
    except Exception as err:  # one bad image must not stop the folder
        return job, None, f"{path}: {err}"


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Records of ``manifest.jsonl`` by output name; a torn last line (crash) is ignored."""
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[item["output"]] = item
    return records


def stylize_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    conf: Mapping[str, Any] | DictConfig | None = None,
    copies: int = 1,
    workers: int = 1,
    seed: int = 0,
    max_size: int | None = None,
    overwrite: bool = False,
) -> StylizeReport:
    """Write stylized copies of every image of ``input_dir`` into ``output_dir``.

    ``conf`` overrides the offline defaults (matting smoothing; references drawn from
    ``input_dir`` itself unless ``references.image_dirs`` is given). Failures (unreadable
    images) are reported with the file and the reason; the other images are still done.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"stylize: input folder not found: {input_dir}")
    merged = stylize_conf(OmegaConf.merge(OmegaConf.create({"smoothing": "matting"}), OmegaConf.create(dict(conf or {}))))
    if not merged.references.image_dirs:
        merged.references.image_dirs = [str(input_dir)]
    todo, done = plan(input_dir, output_dir, copies, seed, overwrite)
    report = StylizeReport(output_dir, existing=done)
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = output_dir / MANIFEST
    records = read_manifest(manifest)
    logger.info("stylize %s -> %s: %d to do, %d already complete", input_dir, output_dir, len(todo), len(done))
    args = (OmegaConf.to_container(merged), str(input_dir), str(output_dir), max_size)
    with open(manifest, "a") as log:
        for job, meta, error in _run(todo, args, workers):
            if error is not None:
                report.failed[job.output] = error
                logger.error("stylize: %s", error)
                continue
            report.written.append(job.output)
            records[job.output] = meta
            log.write(json.dumps(meta) + "\n")
            log.flush()
    tmp = manifest.with_name(MANIFEST + ".partial")
    tmp.write_text("".join(json.dumps(records[k]) + "\n" for k in sorted(records)))
    tmp.replace(manifest)
    return report


def _run(jobs: list[Job], args: tuple, workers: int):
    bar = tqdm(total=len(jobs), desc="stylize", unit="img")
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(*args, threads=torch.get_num_threads())
        for job in jobs:
            yield _run_job(job)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(*args, 1)) as pool:
            for result in pool.imap_unordered(_run_job, jobs):
                yield result
                bar.update()
            pool.close()  # workers exit on their own: terminate() would SIGTERM them
            pool.join()
    bar.close()
