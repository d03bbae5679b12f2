"""Training curves: CSV logs, optional TensorBoard, and a PNG of the curves drawn with OpenCV.

- :class:`CsvLog` keeps the rows of one CSV file (``step`` first, then the columns in order of
  first appearance). Rows are appended; when a new column appears the file is rewritten
  atomically with the wider header. On resume it keeps only the rows up to the resumed step,
  so that rows logged after the checkpoint by a run that then crashed are dropped.
- :func:`draw_curves` renders one panel per series (framed plot area, ticks at 1-2-5 steps with
  labels, title, the raw curve and, for long series, a centred running mean) with ``cv2`` and numpy
  only: matplotlib is not a dependency. :func:`plot_curves` writes it as a PNG atomically.
- :class:`TensorBoardLog` writes scalars when ``tensorboard`` is installed, and is a no-op
  otherwise.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from hloc_hndesc import logger
from hloc_hndesc.files import atomic_path

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]

#: BGR colour of the plot frames and tick marks (used nowhere else, so panels can be found).
FRAME_COLOUR = (60, 60, 60)
_BACKGROUND = (236, 236, 236)
_PANEL = (255, 255, 255)
_GRID = (228, 228, 228)
_TEXT = (0, 0, 0)
_RAW = (232, 181, 135)
_MEAN = (170, 84, 16)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MARGINS = (62, 14, 28, 30)  # left, right, top, bottom


def _parse(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _format(value: float) -> str:
    return "" if value is None else repr(float(value))


class CsvLog:
    """Rows of numbers keyed by column, mirrored to a CSV file (see the module docstring)."""

    def __init__(self, path: str | Path, keep_until: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, float]] = []
        if keep_until is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or ["step"])
                for raw in reader:
                    row = {k: _parse(v) for k, v in raw.items() if k is not None and v not in ("", None)}
                    if row.get("step", math.inf) <= keep_until:
                        self.rows.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            for row in self.rows:
                writer.writerow([_format(row[c]) if c in row else "" for c in self.columns])

    def append(self, row: Mapping[str, float]) -> None:
        """Add one row (must contain ``step``)."""
        row = {k: float(v) for k, v in row.items()}
        if "step" not in row:
            raise KeyError("a log row needs a 'step'")
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
            return
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_format(row[c]) if c in row else "" for c in self.columns])

    def series(self, prefix: str = "", skip: Sequence[str] = ()) -> dict[str, tuple[list[float], list[float]]]:
        """``{prefix + column: (steps, values)}`` for every column but ``step`` and ``skip``."""
        out = {}
        for column in self.columns:
            if column == "step" or column in skip:
                continue
            pairs = [(r["step"], r[column]) for r in self.rows if column in r]
            out[prefix + column] = ([p[0] for p in pairs], [p[1] for p in pairs])
        return out


def read_csv_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a CSV log as ``{column: value}`` (empty cells left out)."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) within ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1.0, 2.0, 5.0, 10.0)), key=lambda v: abs(math.log(v / raw)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _tick_label(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def panel_grid(count: int, cols: int = 3) -> tuple[int, int]:
    """``(rows, columns)`` of the panel grid for ``count`` panels, at most ``cols`` wide."""
    cols = max(1, min(cols, count))
    return max(1, math.ceil(count / cols)), cols


def _running_mean(values: np.ndarray, half: int) -> np.ndarray:
    """Centred running mean over ``[i - half, i + half]``, the window clipped at the ends."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(values.size)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, values.size)
    return (sums[hi] - sums[lo]) / (hi - lo)


def _draw_panel(canvas: np.ndarray, origin: tuple[int, int], size: tuple[int, int], name: str,
                steps: Sequence[float], values: Sequence[float]) -> None:
    ox, oy = origin
    w, h = size
    cv2.rectangle(canvas, (ox + 4, oy + 4), (ox + w - 5, oy + h - 5), _PANEL, -1)
    left, right, top, bottom = _MARGINS
    x0, x1, y0, y1 = ox + left, ox + w - right, oy + top, oy + h - bottom
    cv2.putText(canvas, name, (ox + left, oy + 18), _FONT, 0.45, _TEXT, 1, cv2.LINE_AA)
    xs = np.asarray(steps, dtype=np.float64)
    ys = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if xs.size == 0:
        cv2.rectangle(canvas, (x0, y0), (x1, y1), FRAME_COLOUR, 1, cv2.LINE_8)
        cv2.putText(canvas, "no data", ((x0 + x1) // 2 - 25, (y0 + y1) // 2), _FONT, 0.4, _TEXT, 1, cv2.LINE_AA)
        return
    xlo, xhi = float(xs.min()), float(xs.max())
    if xhi <= xlo:
        xlo, xhi = xlo - 1.0, xhi + 1.0
    ylo, yhi = float(ys.min()), float(ys.max())
    if yhi <= ylo:
        pad = abs(ylo) * 0.05 or 1.0
        ylo, yhi = ylo - pad, yhi + pad
    else:
        pad = (yhi - ylo) * 0.05
        ylo, yhi = ylo - pad, yhi + pad

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = x0 + 1 + (x - xlo) / (xhi - xlo) * (x1 - x0 - 2)
        py = y1 - 1 - (y - ylo) / (yhi - ylo) * (y1 - y0 - 2)
        return np.stack([px, py], -1)

    for tick in nice_ticks(ylo, yhi):
        py = int(round(float(to_px(np.array([xlo]), np.array([tick]))[0, 1])))
        cv2.line(canvas, (x0 + 1, py), (x1 - 1, py), _GRID, 1, cv2.LINE_8)
        cv2.line(canvas, (x0 - 4, py), (x0, py), FRAME_COLOUR, 1, cv2.LINE_8)
        label = _tick_label(tick)
        (tw, th), _ = cv2.getTextSize(label, _FONT, 0.33, 1)
        cv2.putText(canvas, label, (x0 - 7 - tw, py + th // 2), _FONT, 0.33, _TEXT, 1, cv2.LINE_AA)
    for tick in nice_ticks(xlo, xhi, 4):
        px = int(round(float(to_px(np.array([tick]), np.array([ylo]))[0, 0])))
        cv2.line(canvas, (px, y0 + 1), (px, y1 - 1), _GRID, 1, cv2.LINE_8)
        cv2.line(canvas, (px, y1), (px, y1 + 4), FRAME_COLOUR, 1, cv2.LINE_8)
        label = _tick_label(tick)
        (tw, th), _ = cv2.getTextSize(label, _FONT, 0.33, 1)
        cv2.putText(canvas, label, (px - tw // 2, y1 + 8 + th), _FONT, 0.33, _TEXT, 1, cv2.LINE_AA)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    points = np.round(to_px(xs, ys) * 16).astype(np.int32)
    if xs.size == 1:
        cv2.circle(canvas, tuple(int(v) for v in points[0]), 3 * 16, _MEAN, -1, cv2.LINE_AA, 4)
    else:
        cv2.polylines(canvas, [points], False, _RAW if xs.size > 20 else _MEAN, 1, cv2.LINE_AA, 4)
    if xs.size > 20:
        smooth = _running_mean(ys, max(1, xs.size // 40))
        cv2.polylines(canvas, [np.round(to_px(xs, smooth) * 16).astype(np.int32)], False, _MEAN, 2, cv2.LINE_AA, 4)
    # the frame last, so that anti-aliased curves never break it
    cv2.rectangle(canvas, (x0, y0), (x1, y1), FRAME_COLOUR, 1, cv2.LINE_8)


def draw_curves(series: Series, panel_size: tuple[int, int] = (330, 210), cols: int = 3,
                title: str | None = None) -> np.ndarray:
    """A BGR uint8 image with one panel per entry of ``series`` (``name -> (steps, values)``)."""
    names = list(series)
    rows, ncols = panel_grid(max(len(names), 1), cols)
    w, h = panel_size
    header = 26 if title else 0
    canvas = np.full((header + rows * h, ncols * w, 3), _BACKGROUND, np.uint8)
    if title:
        cv2.putText(canvas, title, (8, 18), _FONT, 0.5, _TEXT, 1, cv2.LINE_AA)
    for i, name in enumerate(names):
        r, c = divmod(i, ncols)
        steps, values = series[name]
        _draw_panel(canvas, (c * w, header + r * h), (w, h), name, steps, values)
    return canvas


def plot_curves(series: Series, path: str | Path, **kwargs: object) -> Path:
    """Draw :func:`draw_curves` and write it as a PNG (atomically); returns the path."""
    path = Path(path)
    image = draw_curves(series, **kwargs)  # type: ignore[arg-type]
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"could not encode the curves image {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return path


class TensorBoardLog:
    """Scalars to TensorBoard under ``log_dir`` when ``tensorboard`` is installed; else a no-op."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed: curves go to the CSV and PNG only")
            return
        self.writer = SummaryWriter(str(log_dir))

    def add(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        """Write ``values`` at ``step`` (names prefixed by ``prefix``)."""
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(prefix + key, float(value), int(step))

    def close(self) -> None:
        """Flush and close the writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
