"""BENCHMARKS.md sections: replaced in place, appended when new, safe with benchmarks side by side."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from benchmarks.report import write_section


def test_section_is_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write_section("a", "A", "first a", path=path)
    write_section("b", "B", "only b", path=path)
    write_section("a", "A", "second a", path=path)
    text = path.read_text()
    assert "first a" not in text and text.count("<!-- begin a -->") == 1
    assert text.index("second a") < text.index("only b")
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp.md")]


def _write(args: tuple[str, int]) -> None:
    path, i = args
    for round_ in range(5):
        write_section(f"k{i}", f"K{i}", f"body {i} round {round_} " + "x" * 20000, path=Path(path))


def test_concurrent_writers_keep_every_section(tmp_path: Path) -> None:
    """Eight processes rewriting their own sections at once: none loses another's section."""
    path = tmp_path / "BENCHMARKS.md"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        pool.map(_write, [(str(path), i) for i in range(8)])
    text = path.read_text()
    for i in range(8):
        assert text.count(f"<!-- begin k{i} -->") == 1 and f"body {i} round 4" in text
