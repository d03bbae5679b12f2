"""The helpers of benchmarks/extraction_speed.py: timing, peak memory, matmul rate, previous-section parsing."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.extraction_speed import (
    SIFT_LABEL,
    PeakRSS,
    row_extractor,
    count_gflop,
    format_row,
    matmul_flops,
    matmul_rate,
    median_time,
    parse_table,
    peak_memory,
    previous_times,
    rss_bytes,
    section_meta,
    section_text,
)
from hloc_hndesc.confs import get_conf
from hloc_hndesc.weights import shipped_weights

MIB = 2**20

OLD_SECTION = """# Benchmarks

<!-- begin other -->
| extractor | seconds / image |
|---|---|
| HyNet (DoG, top 2048) | 99.00 |
<!-- end other -->

<!-- begin extraction_speed -->
## Extraction speed and FLOPs per image

- command: `python -m benchmarks.extraction_speed --num 2`
- machine: AMD EPYC, 2 cores, torch 2.13.0+cpu with 2 threads, no GPU
- date: 2026-11-21, commit 126145b

2 images at 751x1024 px (longer side 1024), median seconds per image.

| extractor | GFLOP / image | seconds / image | keypoints | time / SIFT |
|---|---|---|---|---|
| SIFT (pycolmap DoG + RootSIFT), baseline | - | 1.18 | 9356 | 1.00 |
| HyNet (DoG, top 2048) | 160.2 | 4.49 | 2048 | 3.8 |
| HOW R18 global (7 scales) | 344.2 | 2.54 | 0 | 2.2 |
<!-- end extraction_speed -->
"""

NEW_SECTION = """- date: 2026-11-22, commit abc1234+dirty

| extractor | size | GFLOP | s / image (median) | previous s / image | keypoints |
|---|---|---|---|---|---|
| HyNet (DoG, top 2048) | 640 | 60.1 | 1.500 | - | 2048 |
| HyNet (DoG, top 2048) | 1024 | 160.2 | 4.400 | 4.49 | 2048 |
"""


def test_median_time_skips_warmup_and_takes_median() -> None:
    delays = [0.3, 0.01, 0.05, 0.01]  # first is the warm-up; median of the rest is 0.01
    seconds, outs = median_time(lambda d: (time.sleep(d), d)[1], delays, warmup=1)
    assert outs == delays[1:]
    assert 0.009 <= seconds < 0.04


def test_median_time_needs_a_timed_item() -> None:
    with pytest.raises(ValueError, match="warm-up"):
        median_time(lambda x: x, [1], warmup=1)


def test_rss_sampler_sees_a_200_mib_allocation() -> None:
    with PeakRSS(use_hwm=False) as rss:
        x = torch.ones(200 * MIB // 4)  # touched pages: resident
        time.sleep(0.05)
        del x
    assert 160 * MIB <= rss.increase <= 240 * MIB
    assert rss.hwm is None


def test_peak_rss_sees_a_short_lived_allocation_after_it_is_freed() -> None:
    # With the kernel high-water mark, a 200 MiB allocation freed at once is still seen.
    with PeakRSS() as rss:
        torch.ones(200 * MIB // 4).sum()
    assert 160 * MIB <= rss.increase <= 240 * MIB
    # and memory freed before entry does not count: nothing allocated -> small increase
    with PeakRSS() as idle:
        time.sleep(0.02)
    assert idle.increase < 20 * MIB


def test_peak_memory_cpu_returns_output_and_increase() -> None:
    before = rss_bytes()
    peak, out = peak_memory(lambda n: torch.zeros(n).add_(1.0).sum().item(), 100 * MIB // 4)
    assert out == 100 * MIB // 4
    assert 80 * MIB <= peak <= 120 * MIB
    assert rss_bytes() - before < 50 * MIB


def test_matmul_flop_formula_matches_torch_counter_and_rate_is_positive() -> None:
    assert matmul_flops(2048) == 2 * 2048**3
    a, b = torch.randn(64, 48), torch.randn(48, 32)
    gflop, out = count_gflop(lambda ab: ab[0] @ ab[1], (a, b))
    assert out.shape == (64, 32)
    assert gflop * 1e9 == 2 * 64 * 48 * 32
    gflop_sq, _ = count_gflop(lambda m: torch.matmul(m, m), torch.randn(128, 128))
    assert gflop_sq * 1e9 == matmul_flops(128)
    rate = matmul_rate(256, repeats=3)
    assert 0.1 < rate < 1e5  # GFLOP/s, a sane range for any CPU


def test_section_text_and_meta() -> None:
    section = section_text(OLD_SECTION, "extraction_speed")
    assert section is not None and "99.00" not in section and "4.49" in section
    assert section_meta(section) == {
        "date": "2026-11-21",
        "commit": "126145b",
        "machine": "AMD EPYC, 2 cores, torch 2.13.0+cpu with 2 threads, no GPU",
    }
    assert section_text(OLD_SECTION, "missing") is None
    assert section_meta(NEW_SECTION)["commit"] == "abc1234+dirty"


def test_parse_table_cells() -> None:
    rows = parse_table(section_text(OLD_SECTION, "extraction_speed"))
    assert len(rows) == 3
    assert rows[0] == {
        "extractor": SIFT_LABEL,
        "GFLOP / image": "-",
        "seconds / image": "1.18",
        "keypoints": "9356",
        "time / SIFT": "1.00",
    }
    assert rows[2]["extractor"] == "HOW R18 global (7 scales)" and rows[2]["GFLOP / image"] == "344.2"
    assert parse_table("no table here\n| just a pipe line |") == []


def test_previous_times_old_and_new_layouts() -> None:
    old = previous_times(section_text(OLD_SECTION, "extraction_speed"))
    assert old == {
        (SIFT_LABEL, 1024): 1.18,
        ("HyNet (DoG, top 2048)", 1024): 4.49,
        ("HOW R18 global (7 scales)", 1024): 2.54,
    }
    new = previous_times(NEW_SECTION)
    assert new == {("HyNet (DoG, top 2048)", 640): 1.5, ("HyNet (DoG, top 2048)", 1024): 4.4}


def test_format_row_rates() -> None:
    r = {"gflop": 100.0, "seconds": 2.0, "keypoints": 2048, "peak_mib": 512.4}
    row = format_row("X", 1024, r, rate=200.0, sift_seconds=0.5, previous=4.49)
    assert row == ["X", "1024", "100.0", "2.000", "4.49", "2048", "512", "50.0", "25", "200", "4.0"]
    sift = format_row(SIFT_LABEL, 640, {"gflop": None, "seconds": 0.5, "keypoints": None, "peak_mib": 3.0}, 200.0, 0.5, None)
    assert sift == [SIFT_LABEL, "640", "-", "0.500", "-", "-", "3", "-", "-", "-", "1.0"]


def test_rows_run_shipped_weights_and_the_full_r2d2_official_or_random(tmp_path):
    r2d2 = get_conf("hndesc-r2d2")["model"]
    slim, kind = row_extractor("HNDesc-R2D2 slim (mchan 4)", "hndesc-r2d2", r2d2, tmp_path, None)
    shipped = torch.load(shipped_weights("hndesc-r2d2"), weights_only=True)["state_dict"]
    assert kind == "shipped" and all(torch.equal(slim.net.state_dict()[k], v) for k, v in shipped.items())
    full, kind = row_extractor("HNDesc-R2D2 full", "hndesc-r2d2", r2d2, tmp_path, None)
    assert kind == "random" and full.net.arch.variant == "full"
    hynet, kind = row_extractor("HyNet (DoG, top 2048)", "hynet", get_conf("hynet")["model"], tmp_path, None)
    assert kind == "shipped"
