"""FLOPs and CPU/GPU time per image of every extractor, beside SIFT (pycolmap) in the same run.

python -m benchmarks.extraction_speed --images ../shared/data/sacre_coeur/mapping --num 3 \
    --r2d2-official r2d2_WASF_N16.pt

Network weights do not change FLOPs or time (except R2D2's keypoint count, hence the
option to run official R2D2 weights); models without given weights run random weights.
Times are medians over images after one warm-up image.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.report import table, write_section
from hloc_hndesc.confs import build_extractor, get_conf
from hloc_hndesc.features.dog import extract_sift
from hloc_hndesc.io import list_images, read_image, resize_max
from hloc_hndesc.weights import save_checkpoint

#: (row label, conf name, model overrides)
RUNS = [
    ("HyNet (DoG, all keypoints)", "hynet", {"max_keypoints": -1}),
    ("HyNet (DoG, top 2048)", "hynet", {"max_keypoints": 2048}),
    ("HNDesc-R2D2 full", "hndesc-r2d2", {}),
    ("HNDesc-R2D2 slim (mchan 4)", "hndesc-r2d2", {}),
    ("HNDesc-CAPS R18 (DoG, top 8000)", "hndesc-caps", {}),
    ("HOW R18 global (7 scales)", "how", {}),
    ("HOW R18 local n=1000 (7 scales)", "how-asmk", {}),
]


def _random_weights(label: str, conf_name: str, folder: Path) -> Path:
    from hloc_hndesc.models.caps import CAPSNet
    from hloc_hndesc.models.how import HOWNet
    from hloc_hndesc.models.hynet import build_hynet
    from hloc_hndesc.models.r2d2 import R2D2Net

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


def _time(fn, images):
    times, counts = [], []
    fn(images[0])
    for image in images:
        start = time.perf_counter()
        out = fn(image)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        counts.append(out["keypoints"].shape[0] if "keypoints" in out else 0)
    return statistics.median(times), int(statistics.median(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/sacre_coeur/mapping"))
    parser.add_argument("--num", type=int, default=3)
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--r2d2-official", type=Path, help="official R2D2 checkpoint (realistic keypoint counts)")
    parser.add_argument("--only", nargs="*", help="row labels to run (substring match)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    names = list_images(args.images)[: args.num + 1]
    rgb = [torch.from_numpy(resize_max(read_image(args.images / n), args.max_size)).permute(2, 0, 1)[None] for n in names]
    grey = [torch.from_numpy(resize_max(read_image(args.images / n, True), args.max_size))[None, None] for n in names]
    h, w = rgb[0].shape[-2:]

    sift_t, sift_n = _time(lambda im: extract_sift(im), grey)
    rows = [["SIFT (pycolmap DoG + RootSIFT), baseline", "-", f"{sift_t:.2f}", sift_n, "1.00"]]
    with tempfile.TemporaryDirectory() as tmp:
        for label, conf_name, overrides in RUNS:
            if args.only and not any(o in label for o in args.only):
                continue
            conf = get_conf(conf_name)
            model = {**conf["model"], **overrides}
            weights = _random_weights(label, conf_name, Path(tmp))
            if conf_name == "hndesc-r2d2" and args.r2d2_official and "full" in label:
                weights = args.r2d2_official
            extractor = build_extractor(model, weights=str(weights)).eval().to(device)
            inputs = grey if conf["preprocessing"]["grayscale"] else rgb
            inputs = [x.to(device) for x in inputs]
            with torch.inference_mode():
                with FlopCounterMode(display=False) as counter:
                    extractor(inputs[0])
                flops = counter.get_total_flops() / 1e9
                seconds, count = _time(extractor, inputs)
            rows.append([label, f"{flops:.1f}", f"{seconds:.2f}", count, f"{seconds / sift_t:.1f}"])
            print(rows[-1], flush=True)

    body = (
        f"{len(names) - 1} images of `{args.images}` at {w}x{h} px (longer side {args.max_size}), "
        f"median seconds per image after one warm-up image, on {device}. GFLOP counts network "
        "operations only (torch's FlopCounterMode; pycolmap's DoG is not counted). "
        "Time ratio is against SIFT measured in the same run. No previous version of ours exists yet. "
        "No trained weights are shipped yet: rows run random weights (so R2D2 slim finds no keypoint "
        "above its 0.7 thresholds), except R2D2 full when `--r2d2-official` is given.\n\n"
        + table(["extractor", "GFLOP / image", "seconds / image", "keypoints", "time / SIFT"], rows)
    )
    write_section("extraction_speed", "Extraction speed and FLOPs per image", body)


if __name__ == "__main__":
    main()
