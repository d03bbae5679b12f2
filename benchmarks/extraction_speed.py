"""Time, peak memory, FLOPs and FLOP rate per image of every extractor, beside SIFT, at several sizes.

python -m benchmarks.extraction_speed --images ../shared/data/sacre_coeur/mapping --num 2 \
    --r2d2-official r2d2_WASF_N16.pt

Per row and image size (longer side, ``--sizes``), on one device (CUDA if available):

- time: median seconds per image over ``--num`` images, after a warm-up image.
  CPU: ``time.perf_counter``;
  CUDA: ``torch.cuda.Event`` pairs around each call, after a synchronisation.
- peak memory: increase over the memory in use just before the call of one image.
  CPU: resident-set size (RSS), see :class:`PeakRSS`; CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
- GFLOP: of the first timed image, network operations counted by ``torch.utils.flop_counter.FlopCounterMode``
  (pycolmap's DoG, NMS and sorting are not counted); the FLOP rate is set against the
  rate of a float32 matrix product measured in the same run with the same threads.
- previous s/image: the same row label and size in the section this script wrote last
  time in BENCHMARKS.md (read before it is replaced).

Network weights do not change FLOPs, and time only through the number of keypoints (R2D2's
detector): rows run the shipped weights of their network where one is shipped, the full R2D2
the official weights when ``--r2d2-official`` is given, random weights otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.report import ROOT, machine, table, write_section

T = TypeVar("T")
R = TypeVar("R")

KEY = "extraction_speed"
MIB = 2**20
SIFT_LABEL = "SIFT (pycolmap DoG + RootSIFT), baseline"
HEADER = [
    "extractor",
    "size",
    "GFLOP",
    "s / image (median)",
    "previous s / image",
    "keypoints",
    "peak MiB",
    "GFLOP/s",
    "% of matmul rate",
    "matmul GFLOP/s",
    "time / SIFT",
]

#: (row label, conf name, model overrides)
RUNS = [
    ("HyNet (DoG, all keypoints)", "hynet", {"max_keypoints": -1}),
    ("HyNet (DoG, top 2048)", "hynet", {"max_keypoints": 2048}),
    ("HNDesc-R2D2 full", "hndesc-r2d2", {}),
    ("HNDesc-R2D2 slim (mchan 4)", "hndesc-r2d2", {}),
    ("HNDesc-R2D2 slim, 4 views x 5000 (hndesc-r2d2-rot4)", "hndesc-r2d2-rot4", {}),
    ("HNDesc-R2D2 slim, 8 views x 2500 (hndesc-r2d2-rot8)", "hndesc-r2d2-rot8", {}),
    ("HNDesc-CAPS R18 (DoG, top 8000)", "hndesc-caps", {}),
    ("HOW R18 global (7 scales, levels <= 1024 px)", "how", {}),
    ("HOW R18 local n=1000 (7 scales, levels <= 1024 px)", "how-asmk", {}),
]


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[T], R], items: Sequence[T], device: torch.device | str = "cpu", warmup: int = 0
) -> tuple[float, list[R]]:
    """Median seconds of ``fn(item)`` over ``items[warmup:]``, after untimed calls on ``items[:warmup]``.

    On CUDA each call is timed with a pair of ``torch.cuda.Event`` (the GPU timeline from
    before the call to after its last queued kernel, which includes CPU work in between);
    on CPU with ``time.perf_counter``. Returns the median and the outputs of the timed calls.
    """
    if len(items) <= warmup:
        raise ValueError(f"need more than {warmup} items to time after {warmup} warm-up calls, got {len(items)}")
    cuda = torch.device(device).type == "cuda"
    for item in items[:warmup]:
        fn(item)
    times, outputs = [], []
    for item in items[warmup:]:
        synchronize(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(item)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            out = fn(item)
            times.append(time.perf_counter() - begin)
        outputs.append(out)
    return statistics.median(times), outputs


def matmul_flops(n: int) -> int:
    """Floating-point operations of an (n, n) @ (n, n) product: n^2 dot products of n mul + n add."""
    return 2 * n**3


def matmul_rate(n: int = 2048, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """GFLOP/s of a float32 (n, n) @ (n, n) ``torch.matmul``: median of ``repeats`` after one warm-up.

    Uses the current ``torch.get_num_threads()`` on CPU. On CUDA the product is plain
    float32 unless ``torch.backends.cuda.matmul.allow_tf32`` was switched on.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    seconds, _ = median_time(lambda _: torch.matmul(a, b), range(repeats + 1), device, warmup=1)
    return matmul_flops(n) / seconds / 1e9


def count_gflop(fn: Callable[[T], R], item: T) -> tuple[float, R]:
    """GFLOP of ``fn(item)`` counted by torch's ``FlopCounterMode`` (torch operators only), and the output."""
    with FlopCounterMode(display=False) as counter:
        out = fn(item)
    return counter.get_total_flops() / 1e9, out


# ----------------------------------------------------------------------------- memory

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident-set size of this process (``/proc/self/statm``, Linux)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def trim_heap() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim(0)``); False where unavailable."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _reset_hwm() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class PeakRSS:
    """Context manager measuring the peak RSS increase (bytes) of the code it wraps.

    At entry: ``gc.collect()`` and ``malloc_trim(0)``, so that memory freed earlier but kept
    by the allocator does not hide new allocations, then the baseline RSS is read. While
    inside, a daemon thread reads ``/proc/self/statm`` every ``interval`` seconds; where the
    kernel allows it (``/proc/self/clear_refs``), its exact high-water mark (VmHWM), reset at
    entry, is read too. ``increase`` = max(sampled peak, high-water mark) - baseline.

    ``ru_maxrss`` is not used: it never decreases, so it only sees the first large run.
    ``tracemalloc`` is not used: it does not see torch's (C++) allocations. RSS counts
    every resident page of the process (torch, oneDNN, pycolmap, OpenCV), i.e. what the
    machine must provide; pages touched for the first time (libraries, JIT kernels) count
    too, hence a warm-up call before measuring.
    """

    def __init__(self, interval: float = 0.002, use_hwm: bool = True) -> None:
        self.interval = interval
        self.use_hwm = use_hwm
        self.baseline = 0
        self.sampled = 0
        self.hwm: int | None = None
        self.increase = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        trim_heap()
        self.baseline = self.sampled = rss_bytes()
        self._hwm_ok = self.use_hwm and _reset_hwm()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.sampled = max(self.sampled, rss_bytes())
        self.hwm = _read_hwm() if self._hwm_ok else None
        self.increase = max(self.sampled, self.hwm or 0) - self.baseline


def peak_memory(fn: Callable[[T], R], item: T, device: torch.device | str = "cpu") -> tuple[int, R]:
    """Peak memory increase (bytes) while running ``fn(item)``, and its output.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
    allocated before the call (torch tensors only). CPU: :class:`PeakRSS`.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn(item)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, out
    with PeakRSS() as rss:
        out = fn(item)
    return rss.increase, out


# ----------------------------------------------------------------------------- previous section


def section_text(markdown: str, key: str) -> str | None:
    """The text between ``<!-- begin key -->`` and ``<!-- end key -->``, or None."""
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    if begin not in markdown:
        return None
    rest = markdown.split(begin, 1)[1]
    return rest.split(end, 1)[0] if end in rest else None


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of the first markdown table in ``text``, as {header: cell} (cells stripped)."""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.lstrip().startswith("|") and re.fullmatch(r"\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", lines[i + 1]):
            header = cells(line)
            rows = []
            for row in lines[i + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append(dict(zip(header, cells(row))))
            return rows
    return []


def section_meta(section: str) -> dict[str, str]:
    """``date``, ``commit`` and ``machine`` from a section written by ``write_section`` (missing keys left out)."""
    meta = {}
    if m := re.search(r"^- date: ([^,\n]*), commit (\S+)", section, re.M):
        meta["date"], meta["commit"] = m.group(1).strip(), m.group(2)
    if m := re.search(r"^- machine: (.*)$", section, re.M):
        meta["machine"] = m.group(1).strip()
    return meta


def previous_times(section: str) -> dict[tuple[str, int | None], float]:
    """Median seconds per image by (row label, longer side) from a previous section.

    Tables without a ``size`` column (the first version) ran one size, read from the
    "longer side N" of the text (None when absent).
    """
    rows = parse_table(section)
    if not rows:
        return {}
    time_col = next((h for h in rows[0] if h.startswith(("s / image", "seconds / image"))), None)
    if time_col is None:
        return {}
    m = re.search(r"longer side (\d+)", section)
    default_size = int(m.group(1)) if m else None
    out: dict[tuple[str, int | None], float] = {}
    for row in rows:
        try:
            seconds = float(row[time_col])
        except (KeyError, ValueError):
            continue
        size = row.get("size", "")
        out[(row["extractor"], int(size) if size.isdigit() else default_size)] = seconds
    return out


# ----------------------------------------------------------------------------- the benchmark


def _random_weights(label: str, conf_name: str, folder: Path) -> Path:
    from hloc_hndesc.models.caps import CAPSNet
    from hloc_hndesc.models.how import HOWNet
    from hloc_hndesc.models.hynet import build_hynet
    from hloc_hndesc.models.r2d2 import R2D2Net
    from hloc_hndesc.weights import save_checkpoint

    path = folder / f"{conf_name}-{len(label)}.pth"
    if conf_name == "hynet":
        save_checkpoint(build_hynet(), path)
    elif conf_name == "hndesc-r2d2":
        net = R2D2Net("slim" if "slim" in label else "full")
        save_checkpoint(net, path, net.arch.as_meta())
    elif conf_name == "hndesc-caps":
        save_checkpoint(CAPSNet(), path)
    else:
        save_checkpoint(HOWNet(), path)
    return path


def row_extractor(
    label: str, conf_name: str, model: dict, folder: Path, official: Path | None
) -> tuple[torch.nn.Module, str]:
    """The extractor of a row and the kind of its weights: the shipped file of the network where
    one exists (not for the full R2D2: the shipped one is slim), the official R2D2 weights for the
    full network when given, random weights otherwise."""
    from hloc_hndesc.confs import build_extractor
    from hloc_hndesc.weights import NoWeightsError

    if conf_name == "hndesc-r2d2" and "full" in label:
        if official:
            return build_extractor(model, weights=str(official)), "official"
    else:
        try:
            return build_extractor(model), "shipped"
        except NoWeightsError:
            pass
    return build_extractor(model, weights=str(_random_weights(label, conf_name, folder))), "random"


def _load(folder: Path, names: list[str], size: int, grayscale: bool) -> list[torch.Tensor]:
    """Images resized (down or up) so that the longer side is ``size``, as (1, C, H, W) float."""
    from hloc_hndesc.io import read_image, resize_max

    out = []
    for name in names:
        image = torch.from_numpy(resize_max(read_image(folder / name, grayscale), size, force=True))
        out.append((image[None] if grayscale else image.permute(2, 0, 1))[None].contiguous())
    return out


def measure(
    fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: list[torch.Tensor],
    device: torch.device | str,
    flops: bool = True,
    memory_device: torch.device | str | None = None,
) -> dict[str, Any]:
    """One row: warm-up on ``images[0]``; FLOP count and peak memory on ``images[1]``; median time on ``images[1:]``.

    FLOPs are counted on a timed image (not the warm-up one) since the images' aspect
    ratios, hence pixel and keypoint counts, differ at the same longer side.
    """
    with torch.inference_mode():
        fn(images[0])
        gflop = count_gflop(fn, images[1])[0] if flops else None
        peak, _ = peak_memory(fn, images[1], memory_device or device)
        seconds, outs = median_time(fn, images[1:], device)
    counts = [o["keypoints"].shape[0] for o in outs if "keypoints" in o]
    return {
        "gflop": gflop,
        "seconds": seconds,
        "keypoints": int(statistics.median(counts)) if counts else None,
        "peak_mib": peak / MIB,
    }


def format_row(
    label: str, size: int, r: dict[str, Any], rate: float, sift_seconds: float, previous: float | None
) -> list[str]:
    """A table row from :func:`measure`'s result; ``rate`` is the matmul GFLOP/s it is set against."""
    gflop, seconds = r["gflop"], r["seconds"]
    achieved = gflop / seconds if gflop is not None else None
    return [
        label,
        str(size),
        f"{gflop:.1f}" if gflop is not None else "-",
        f"{seconds:.3f}",
        f"{previous:.2f}" if previous is not None else "-",
        str(r["keypoints"]) if r["keypoints"] is not None else "-",
        f"{r['peak_mib']:.0f}",
        f"{achieved:.1f}" if achieved is not None else "-",
        f"{100 * achieved / rate:.0f}" if achieved is not None else "-",
        f"{rate:.0f}" if achieved is not None else "-",
        f"{seconds / sift_seconds:.1f}",
    ]


def main() -> None:
    from hloc_hndesc.confs import build_extractor, get_conf
    from hloc_hndesc.features.dog import extract_sift
    from hloc_hndesc.io import list_images

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/sacre_coeur/mapping"))
    parser.add_argument("--num", type=int, default=3, help="timed images, after one warm-up image")
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 1024, 1600], help="longer sides in px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--r2d2-official", type=Path, help="official R2D2 checkpoint (realistic keypoint counts)")
    parser.add_argument("--only", nargs="*", help="row labels to run (substring match)")
    parser.add_argument("--skip", nargs="*", default=[], help="LABEL@SIZE pairs not to run (label substring)")
    args = parser.parse_args()
    if args.num < 1:
        parser.error("--num must be at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    bench_md = ROOT / "BENCHMARKS.md"
    old = section_text(bench_md.read_text(), KEY) if bench_md.exists() else None
    previous = previous_times(old) if old else {}
    old_meta = section_meta(old) if old else {}

    names = list_images(args.images)[: args.num + 1]
    if len(names) < 2:
        parser.error(f"{args.images}: need at least 2 images (one warm-up, one timed)")
    load_start = os.getloadavg()[0]
    rate = matmul_rate(args.matmul_size, device=device)
    print(f"matmul {args.matmul_size}: {rate:.1f} GFLOP/s on {device}, load {load_start:.1f}", flush=True)

    def skipped(label: str, size: int) -> bool:
        return any(s.rsplit("@", 1)[0] in label and s.rsplit("@", 1)[1] == str(size) for s in args.skip if "@" in s)

    images = {(s, g): _load(args.images, names, s, g) for s in args.sizes for g in (True, False)}
    rows, sift, capped, kinds = [], {}, {}, {}
    for size in args.sizes:
        grey = [x.to(device) for x in images[(size, True)]]
        r = measure(lambda im: extract_sift(im), grey, device, flops=False, memory_device="cpu")
        sift[size] = r["seconds"]
        rows.append(format_row(SIFT_LABEL, size, r, rate, sift[size], previous.get((SIFT_LABEL, size))))
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, conf_name, overrides in RUNS:
            if args.only and not any(o in label for o in args.only):
                continue
            conf = get_conf(conf_name)
            model = {**conf["model"], **overrides}
            extractor, kinds[label] = row_extractor(label, conf_name, model, Path(tmp), args.r2d2_official)
            extractor = extractor.eval().to(device)
            max_size = extractor.conf.get("max_size")
            if max_size and max_size < max(args.sizes):
                capped[label] = max_size
            for size in args.sizes:
                if skipped(label, size):
                    continue
                inputs = [x.to(device) for x in images[(size, bool(conf["preprocessing"]["grayscale"]))]]
                row_rate = matmul_rate(args.matmul_size, repeats=3, device=device)
                r = measure(extractor, inputs, device)
                rows.append(format_row(label, size, r, row_rate, sift[size], previous.get((label, size))))
                print(rows[-1], flush=True)
                del inputs
            del extractor
            gc.collect()

    rate_end = matmul_rate(args.matmul_size, device=device)
    load_end = os.getloadavg()[0]
    print(f"matmul {args.matmul_size} at the end: {rate_end:.1f} GFLOP/s, load {load_end:.1f}", flush=True)
    if old_meta.get("commit"):
        where = f"commit {old_meta['commit']} ({old_meta.get('date', '?')})"
        if old_meta.get("machine") and old_meta["machine"] != machine():
            where += f", on another machine: {old_meta['machine']}"
        prev_text = f"previous s / image: the same row and size in this section as written at {where}."
        if "size" not in (parse_table(old) or [{}])[0]:
            prev_text += (
                " That version timed the warm-up image again among its images (median of "
                "warm-up + timed images) and only downscaled photos larger than the size."
            )
    else:
        prev_text = "No previous version of this section was found."
    if device.type == "cuda":
        memory_text = (
            "peak MiB: increase of `torch.cuda.max_memory_allocated` over the allocation before the "
            "call (network rows; torch tensors only), RSS increase for SIFT (pycolmap)."
        )
        import pycolmap

        gpu_text = (
            "Convolutions may run in TF32 (cuDNN's default), so the % of the float32 matmul rate can pass "
            f"100. pycolmap's SIFT/DoG runs on {'the GPU' if pycolmap.has_cuda else 'the CPU (pycolmap built without CUDA)'}."
        )
    else:
        memory_text = (
            "peak MiB: peak resident-set increase during the call over the RSS just before it (after "
            "`malloc_trim`), from the kernel's VmHWM reset through `/proc/self/clear_refs` and a "
            "2 ms `/proc/self/statm` sampling thread."
        )
        gpu_text = "GPU rows were not measured in this run (no CUDA device)."
    skip_text = f" Not run: {', '.join(args.skip)}." if args.skip else ""
    if capped:
        skip_text += (
            " Extractors with a `max_size` conf work on at most that longer side (HOW downscales, R2D2 "
            "skips larger pyramid levels), so their larger sizes cost no more: "
            + ", ".join(f"{k} ({v} px)" for k, v in capped.items())
            + "."
        )
    body = (
        f"{len(names) - 1} image(s) of `{args.images}` per size after one warm-up image, resized so that "
        f"the longer side is {', '.join(map(str, args.sizes))} px (upscaled with bilinear interpolation "
        f"where the photo is smaller), on {device} with {args.threads} torch threads; median seconds per "
        "image, median keypoints. GFLOP (of the first timed image) counts network operations only "
        "(torch's FlopCounterMode; pycolmap's DoG is not counted); GFLOP/s = GFLOP / median seconds, set "
        f"against the rate of a float32 {args.matmul_size}x{args.matmul_size} torch.matmul "
        f"({matmul_flops(args.matmul_size) / 1e9:.1f} GFLOP) measured just before the row (median of 3, "
        "column matmul GFLOP/s), so that both see about the same machine load. The same matmul at the "
        f"start of the run: {rate:.1f} GFLOP/s, at its end: {rate_end:.1f} GFLOP/s (median of 5); 1-minute "
        f"load average at the start {load_start:.1f}, at the end {load_end:.1f} ({os.cpu_count()} cores; "
        "other jobs may share them, inflating times). "
        f"{memory_text} time / SIFT: against SIFT at the same size in the same run. {prev_text} "
        f"{gpu_text}{skip_text} Weights per row (FLOPs do not depend on them, time only through R2D2's "
        f"keypoint count): {', '.join(f'{k}: {v}' for k, v in kinds.items())}.\n\n"
        + table(HEADER, rows)
    )
    write_section(KEY, "Extraction speed, memory and FLOPs per image", body)


if __name__ == "__main__":
    main()
