"""Training throughput: data path (items/s) against the HyNet update (patch pairs/s).

The data side is timed per loader process: synthetic pairs alone (:class:`PairDataset`) and
HyNet patch pairs (DoG, frame transfer, patch cutting), with and without stylization, one
torch thread (what a DataLoader worker gets). The update side is one HyNet optimiser step
(two forward passes, the HyNet loss with in-batch mining, backward, Adam) at several batch
sizes, on the CPU and, when there is one, on the GPU (bf16 autocast there). The last
column says how many loader workers keep one update fed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.report import ROOT, publish, table
from hloc_hndesc.models.hynet import build_hynet
from hloc_hndesc.training.hynet import HyNetPatchDataset, hynet_train_conf
from hloc_hndesc.training.losses import hynet_loss
from hloc_hndesc.training.mining import select_negatives
from hloc_hndesc.training.tasks import load_train_config

KEY = "training_throughput"
TITLE = "Training throughput (issue 6)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "train_natural")
    parser.add_argument("--items", type=int, default=40, help="items timed per data setting")
    parser.add_argument("--batch", type=int, action="append", help="patch pairs per update (repeatable)")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per batch size (median)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    return parser.parse_args(argv)


def time_items(dataset: torch.utils.data.Dataset, count: int) -> float:
    """Items per second of ``dataset[(0, i)]`` after one warm-up item."""
    dataset[(1, 0)]
    start = time.perf_counter()
    for i in range(count):
        dataset[(0, i)]
    return count / (time.perf_counter() - start)


def time_updates(n: int, device: torch.device, repeats: int) -> float:
    """Median seconds of one HyNet update on ``n`` random patch pairs."""
    net = build_hynet().to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 32, 32, generator=gen).to(device)
    y = (x + 0.05 * torch.randn(n, 1, 32, 32, generator=gen).to(device)).clamp(0, 1)
    pairs = torch.arange(n, device=device) // 64
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with amp:
            a, na = net.forward_with_norms(x)
            p, np_ = net.forward_with_norms(y)
        neg = select_negatives({"mode": "in_batch"}, a.float(), p.float(), pairs, pairs)
        loss, _ = hynet_loss(a.float(), p.float(), na.float(), np_.float(), **neg.loss_kwargs())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    rows_data = []
    torch.set_num_threads(1)
    for p in (0.0, 0.3):
        conf = hynet_train_conf(load_train_config("hynet", [
            f"data.image_dirs=[{args.images}]", f"data.stylize_probability={p}", "data.preload=true",
        ]))
        patches = HyNetPatchDataset.from_conf(conf)
        pairs_rate = time_items(patches.pairs, args.items)
        patch_rate = time_items(patches, args.items)
        per_item = statistics.mean(int(patches[(0, i)]["valid"].sum()) for i in range(10))
        rows_data.append((p, pairs_rate, patch_rate, per_item))
    torch.set_num_threads(threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    batches = args.batch or [256, 1024]
    rows = []
    for device in devices:
        for n in batches:
            seconds = time_updates(n, device, args.repeats)
            rate = n / seconds
            for p, pairs_rate, patch_rate, per_item in rows_data:
                workers = rate / (patch_rate * per_item)
                rows.append([
                    device.type, n, f"{seconds:.3f}", f"{rate:.0f}", f"{p:.1f}", f"{pairs_rate:.1f}",
                    f"{patch_rate:.1f}", f"{per_item:.0f}", f"{workers:.1f}",
                ])
    body = "\n".join([
        f"Photos: `{args.images.name}` (preloaded, 512 px), crop {conf.data.crop}, up to "
        f"{conf.patches.per_pair} DoG patch pairs per synthetic pair; data timed with 1 torch thread per "
        f"loader process, updates with {threads} threads on the CPU (bf16 autocast on the GPU). "
        f"First version of the training code: no previous numbers; no SIFT row (nothing is trained for SIFT).",
        "",
        table(["device", "patch pairs / update", "s / update", "patch pairs / s", "stylize p",
               "pairs / s / process", "HyNet items / s / process", "patches / item", "loader processes to keep up"], rows),
    ])
    publish(KEY, TITLE, body, args.no_write)


if __name__ == "__main__":
    main()
