"""Photorealistic stylization: geometry kept, appearance moved, time per image; a grid PNG.

For content photos of the evaluation folders (never the training photos the stylization
encoder was trained on) and, per content, one photo reference (another content photo)
and one rendered night reference, every method stylizes at ``--size`` px and is measured:

- DoG repeatability of the stylized image against the content (upright pycolmap DoG,
  strongest 2000, mutual nearest within 2 px, over the smaller count);
- edge SSIM (SSIM of percentile-normalised Sobel magnitudes);
- colour distance to the reference in CIELAB (Gaussian 2-Wasserstein and sliced
  1-Wasserstein), before (content) and after (output);
- wall time per image with the given number of torch threads.

Baselines in the same run: Reinhard et al.'s per-channel mean/std transfer in lαβ (no
smoothing); ablations: the global pixel WCT and the local+global one without smoothing,
and the feature WCT without smoothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.report import ROOT, publish, table
from hloc_hndesc.evaluation.stylization import colour_distances, dog_keypoints, edge_ssim, repeatability
from hloc_hndesc.io import image_to_tensor, list_images, read_image, resize_max, tensor_to_uint8
from hloc_hndesc.training.stylization.colour import lalphabeta_to_rgb, rgb_to_lalphabeta
from hloc_hndesc.training.stylization.night import render_night_reference
from hloc_hndesc.training.stylization.transform import Stylizer
from hloc_hndesc.weights import WeightsError

KEY = "stylization"
TITLE = "Photorealistic stylization (issue 5)"
DATA = ROOT.parent / "shared" / "data"
DEFAULT_CONTENT = [
    DATA / "sacre_coeur" / "mapping",
    DATA / "phototourism_sample" / "images",
    DATA / "strecha" / "fountain-P11" / "images",
    DATA / "strecha" / "Herz-Jesu-P8" / "images",
]
METHODS = {
    "reinhard (baseline)": None,
    "pixel global, no smoothing": {"local_weight": 0.0, "smoothing": "none"},
    "pixel, no smoothing": {"smoothing": "none"},
    "pixel, guided (online default)": {"smoothing": "guided"},
    "pixel, matting (offline default)": {"smoothing": "matting"},
    "feature, no smoothing": {"variant": "feature", "smoothing": "none"},
    "feature, guided": {"variant": "feature", "smoothing": "guided"},
    "feature, matting": {"variant": "feature", "smoothing": "matting"},
}
GRID_METHODS = ["pixel, guided (online default)", "pixel, matting (offline default)", "feature, matting"]


def reinhard(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Reinhard et al. (2001): match per-channel mean and std in lαβ."""
    c, r = rgb_to_lalphabeta(content), rgb_to_lalphabeta(reference)
    cm, cs = c.mean((2, 3), keepdim=True), c.std((2, 3), keepdim=True).clamp_min(1e-6)
    rm, rs = r.mean((2, 3), keepdim=True), r.std((2, 3), keepdim=True)
    return lalphabeta_to_rgb((c - cm) / cs * rs + rm)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", action="append", type=Path, help="content photo folder (repeatable)")
    parser.add_argument("--num-content", type=int, default=10, help="content photos, spread over the folders")
    parser.add_argument("--size", type=int, default=512, help="longer side of content images")
    parser.add_argument("--feature-weights", type=Path, help="stylization autoencoder (default: shipped)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=ROOT / "docs" / "stylization_grid.png")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    return parser.parse_args(argv)


def pick_content(folders: list[Path], n: int, rng: np.random.Generator) -> list[Path]:
    """``n`` photos spread evenly over ``folders`` (random within a folder)."""
    names = [[f / name for name in list_images(f)] for f in folders]
    picks: list[Path] = []
    i = 0
    while len(picks) < n and any(names):
        pool = names[i % len(names)]
        if pool:
            picks.append(pool.pop(int(rng.integers(len(pool)))))
        i += 1
    return picks


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    contents = pick_content(args.content or DEFAULT_CONTENT, args.num_content, rng)
    images = [image_to_tensor(resize_max(read_image(p), args.size)) for p in contents]
    methods = dict(METHODS)
    notes = []
    stylizers = {}
    for name, conf in methods.items():
        if conf is None:
            continue
        conf = {**conf, "feature_weights": str(args.feature_weights) if args.feature_weights else None}
        try:
            stylizers[name] = Stylizer(conf)
        except WeightsError as err:
            notes.append(f"- {name}: not run ({err})")
    methods = {k: v for k, v in methods.items() if v is None or k in stylizers}

    pairs = []
    for i, (path, content) in enumerate(zip(contents, images)):
        j = (i + 1 + int(rng.integers(len(contents) - 1))) % len(contents)
        pairs.append((path, content, "photo", contents[j].name, resize_max_tensor(images[j], 256)))
        h, w = content.shape[-2:]
        night = render_night_reference((256, max(16, round(256 * w / h))), np.random.default_rng(args.seed + i))
        pairs.append((path, content, "night", f"night:{args.seed + i}", image_to_tensor(night)))

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    grid_rows = []
    for path, content, kind, ref_name, reference in tqdm(pairs, desc="stylization", unit="pair"):
        before = colour_distances(content, reference)
        content_kpts = dog_keypoints(content)
        outputs = {}
        for name in methods:
            start = time.perf_counter()
            out = reinhard(content, reference) if name not in stylizers else stylizers[name].stylize(content, reference)
            seconds = time.perf_counter() - start
            after = colour_distances(out, reference)
            results.setdefault((name, kind), []).append({
                "rep": repeatability(content_kpts, dog_keypoints(out)),
                "ssim": edge_ssim(content, out),
                "w2_before": before["w2"], "w2_after": after["w2"],
                "sw1_before": before["sw1"], "sw1_after": after["sw1"],
                "seconds": seconds,
            })
            outputs[name] = out
        if len(grid_rows) < 6 and (kind == "night" or len(grid_rows) % 2 == 0):
            grid_rows.append([content, reference] + [outputs[m] for m in GRID_METHODS if m in outputs])

    rows = []
    for (name, kind), items in results.items():
        med = {k: statistics.median(item[k] for item in items) for k in items[0]}
        drop = statistics.median(1 - item["w2_after"] / item["w2_before"] for item in items)
        rows.append([
            name, kind, len(items), f"{med['rep']:.3f}", f"{med['ssim']:.3f}",
            f"{med['w2_before']:.1f} -> {med['w2_after']:.1f}", f"{100 * drop:.0f} %",
            f"{med['sw1_before']:.1f} -> {med['sw1_after']:.1f}", f"{med['seconds']:.2f}",
        ])
    rows.sort(key=lambda r: (r[1], list(METHODS).index(r[0])))
    write_grid(grid_rows, args.grid)
    body = "\n".join([
        f"{len(contents)} content photos from {', '.join(sorted({p.parent.relative_to(DATA).as_posix() for p in contents}))} "
        f"at {args.size} px; per content one photo reference (another content photo, 256 px) and one "
        f"rendered night reference (`render_night_reference`, 256 px). Medians over pairs. "
        f"Repeatability: upright DoG, strongest 2000, mutual nearest within 2 px. "
        f"Colour distances in CIELAB (ΔE units) to the reference, content -> output. "
        f"Time: one image, {args.threads} torch threads, CPU. First version of the stylization: no previous numbers.",
        "",
        table(["method", "reference", "pairs", "DoG repeatability", "edge SSIM", "W2 to ref", "W2 drop",
               "SW1 to ref", "s / image"], rows),
        "",
        f"Grid: `{args.grid.relative_to(ROOT).as_posix() if args.grid.is_relative_to(ROOT) else args.grid}` "
        f"(columns: content, reference, {', '.join(m for m in GRID_METHODS if m in methods)}).",
        *notes,
    ])
    publish(KEY, TITLE, body, args.no_write)


def resize_max_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """Downscale a (1, 3, H, W) tensor so its longer side is ``size`` (area interpolation)."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    if scale >= 1:
        return image
    return F.interpolate(image, (max(1, round(h * scale)), max(1, round(w * scale))), mode="area")


def write_grid(rows: list[list[torch.Tensor]], path: Path, height: int = 160) -> None:
    """Rows of images scaled to ``height`` px and concatenated into one PNG."""
    if not rows:
        return
    lines = []
    for row in rows:
        tiles = [tensor_to_uint8(F.interpolate(t, (height, max(1, round(height * t.shape[-1] / t.shape[-2]))), mode="area")) for t in row]
        lines.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    width = max(line.shape[1] for line in lines)
    grid = np.concatenate([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid[..., ::-1])


if __name__ == "__main__":
    main()
