"""Parametric renderer of synthetic night street scenes, used as night-like style references.

The stylization (whitening-colouring transform) only borrows the colour statistics of its
reference, so what matters here is that the rendered images have the statistics of night photos:
very dark overall, a deep blue to black sky, small bright warm (sodium) and cool (LED) sources with
halos and light pools, a colour cast and visible sensor noise. The scene is drawn from scratch; it
is not a relighting of a given photo, and it shares nothing with the benchmark's night model.

Model (everything in linear light, units where 1 is the sensor's saturation at unit exposure; all
lengths are fractions of the image height so that the look does not depend on the resolution):

Scene layout
    A *ground line* at ``scene.horizon`` (fraction of the height from the top, 0.55-0.82) separates
    a row of facades from the street. Facades are adjacent rectangles standing on the ground line,
    ``scene.facade_width`` (0.12-0.5) wide, tops at ``scene.skyline`` (0.08-0.5); with probability
    ``scene.gap_prob`` a slot stays empty (open sky). Behind them, ``scene.background`` (0-4)
    distant, darker and taller silhouettes. Facade albedo is grey with a slight random tint,
    ``scene.albedo`` (0.02-0.18: dark paint to light plaster), the street ``scene.ground_albedo``
    (0.03-0.12: asphalt) with a lighter pavement band along the facades. A multiplicative log-normal
    texture (coarse blotches + fine grain, log-std ``scene.texture`` 0.1-0.35; mostly grain on the
    asphalt) keeps surfaces from looking flat.
Sky
    Night sky radiance grows from the zenith (``sky.zenith`` 0.0003-0.003) to the horizon
    (``sky.horizon`` 0.003-0.02) as a power of the height: scattered moonlight and city light have a
    longer path through the atmosphere near the horizon. Its chromaticity is blue, red and green
    relative to blue ``sky.red`` 0.12-0.35 and ``sky.green`` 0.25-0.5 (Rayleigh scattering). With
    probability ``sky.glow_prob`` an orange light-pollution glow (sodium light scattered by haze,
    colour (1, ``sky.glow_green``, ``sky.glow_blue``)) of peak ``sky.glow`` 0.005-0.05 decays
    exponentially above the ground line with e-folding height ``sky.glow_height`` 0.04-0.2.
Windows
    Each facade carries a grid of windows (cell height ``windows.spacing`` 0.025-0.07, window fill
    ``windows.fill`` 0.35-0.7 of a cell), each lit with probability ``windows.lit_prob`` (drawn per
    image, 0.05-0.45). Lit windows are light *sources* of radiance ``windows.intensity`` (0.1-1.0,
    log-normal spread per window), warm incandescent (1, 0.62-0.75, 0.3-0.45) with probability
    ``windows.warm_prob`` else cool fluorescent (0.75-0.9, 0.85-0.95, 1); unlit windows are dark
    glass (0.35 of the facade albedo) and floor slabs are shadowed (0.7). With probability
    ``windows.shop_prob`` a facade's ground floor has a lit shop window split into panes.
Lamps
    ``lamps.count`` (2-7) point sources, sodium with probability ``lamps.sodium_prob``
    (high-pressure sodium: colour (1, ``sodium_green`` 0.55-0.65, ``sodium_blue`` 0.15-0.25)) else
    white LED
    (``led_red`` 0.85-0.95, ``led_green`` 0.9-0.97, 1). A street lamp stands on a pole of height
    ``lamps.pole_height`` (0.25-0.5 for the nearest lamp) whose foot is on the street; its
    perspective scale ``s`` (0.3 at the facades, 1 at the bottom edge) scales pole, core and pool.
    With probability ``lamps.wall_prob`` a lamp is mounted on a facade instead. Each lamp has
    - a core: Gaussian of radius ``core_radius`` (0.002-0.006) and peak ``core`` (10-60, far above
      saturation, as real lamps are),
    - a halo (forward scattering in haze and the lens' glare), peak ``halo`` (0.02-0.08) times the
      core peak, radius ``halo_radius`` (0.006-0.025), profile ``(1 + r²/ρ²)^(-3/2)``, added as
      emission everywhere,
    - light pools: irradiance of a point source at distance ``d`` over a plane is
      ``E(r) ∝ d / (r² + d²)^(3/2)`` (inverse square times the cosine of incidence), i.e. a peak
      ``lamps.pool`` (0.3-2.5) falling as ``(1 + r²/d²)^(-3/2)``. Street lamps light the street
      (``d`` = 0.6 × pole height, the vertical axis foreshortened by 0.35 for the oblique ground)
      and, more weakly, the facades behind them (``d`` = ``wall_distance`` 0.03-0.15); wall lamps
      light their facade with a tight pool.
    With probability ``lamps.wet_prob`` the street is wet: darker, and each street lamp casts a
    vertical specular streak towards the camera.
    Surface radiance = albedo × (ambient + Σ pools) + emission; the ambient irradiance
    ``scene.ambient`` (0.01-0.06) mixes blue sky light and warm city light. Halos and pools are
    smooth, so they are evaluated on a coarse grid (about 128 rows) and upsampled bilinearly.
Camera (in the order light meets it)
    Optional Gaussian lens blur (probability ``camera.blur_prob``, sigma ``blur_sigma`` 0.3-1.2 px),
    vignetting (``vignetting`` 0-0.4 loss at the corners), exposure gain (``exposure`` 0.7-1.6),
    sensor noise in the raw signal: Poisson shot noise approximated as Gaussian with variance
    ``shot_noise`` × signal (0.0005-0.004, high ISO) plus Gaussian read noise of std
    ``read_noise`` (0.0005-0.004); then white-balance gains (``wb_red`` 0.8-1.2, ``wb_blue``
    0.8-1.25, green 1), which give the global colour cast; a hue-preserving highlight roll-off of
    the brightest channel (so that sodium cores stay orange as in real photos rather than clipping
    to white) with a slight desaturation of over-exposed pixels (``highlight_desat`` 0-0.3);
    clipping to [0, 1] and the sRGB transfer curve.

Every range ``[lo, hi]`` is sampled uniformly, once per image or once per facade, window grid or
lamp for the entries that describe one (counts as integers, inclusive);
``*_prob`` entries are probabilities. Setting both ends of a range to the same value fixes it,
e.g. ``{"camera": {"shot_noise": [0, 0], "read_noise": [0, 0]}}`` renders without noise and
``{"lamps": {"sodium_prob": 1.0}}`` only sodium lamps.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf

from hloc_hndesc.config import ConfigError, merge_conf

NIGHT_DEFAULTS: dict[str, dict[str, Any]] = {
    "sky": {
        "zenith": [0.0003, 0.003],  # linear radiance at the top of the frame
        "horizon": [0.003, 0.02],  # linear radiance at the ground line
        "red": [0.12, 0.35],  # sky chromaticity, relative to blue = 1
        "green": [0.25, 0.5],
        "falloff": [1.5, 3.0],  # exponent of the zenith -> horizon gradient
        "glow_prob": 0.6,  # probability of an orange light-pollution glow
        "glow": [0.005, 0.05],  # its peak linear radiance at the ground line
        "glow_height": [0.04, 0.2],  # its e-folding height (fraction of the height)
        "glow_green": [0.45, 0.65],
        "glow_blue": [0.15, 0.35],
    },
    "scene": {
        "horizon": [0.55, 0.82],  # ground line, fraction of the height from the top
        "skyline": [0.08, 0.5],  # facade tops, fraction of the height from the top
        "facade_width": [0.12, 0.5],  # fraction of the height
        "gap_prob": 0.15,  # probability that a facade slot is open sky
        "background": [0, 4],  # number of distant silhouettes
        "albedo": [0.02, 0.18],  # facade albedo (linear)
        "ground_albedo": [0.03, 0.12],  # street albedo (linear)
        "ambient": [0.01, 0.06],  # ambient irradiance (sky + distant city light)
        "texture": [0.1, 0.35],  # log-std of the multiplicative albedo texture
    },
    "windows": {
        "lit_prob": [0.05, 0.45],  # fraction of lit windows (drawn per image)
        "warm_prob": 0.7,  # probability that a lit window is incandescent
        "intensity": [0.1, 1.0],  # linear radiance of a lit window
        "spacing": [0.025, 0.07],  # window grid cell height, fraction of the height
        "fill": [0.35, 0.7],  # window size, fraction of a cell
        "shop_prob": 0.35,  # probability of a lit shop window on a facade's ground floor
    },
    "lamps": {
        "count": [2, 7],
        "sodium_prob": 0.5,  # probability that a lamp is sodium (else LED)
        "sodium_green": [0.55, 0.65],  # sodium colour (1, g, b)
        "sodium_blue": [0.15, 0.25],
        "led_red": [0.85, 0.95],  # LED colour (r, g, 1)
        "led_green": [0.9, 0.97],
        "wall_prob": 0.3,  # probability that a lamp is on a facade (else on a pole)
        "pole_height": [0.25, 0.5],  # of the nearest lamp, fraction of the height
        "core": [10.0, 60.0],  # peak linear radiance of the core
        "core_radius": [0.002, 0.006],  # fraction of the height
        "halo": [0.02, 0.08],  # halo peak relative to the core peak
        "halo_radius": [0.006, 0.025],  # fraction of the height
        "pool": [0.3, 2.5],  # peak irradiance of a light pool
        "wall_distance": [0.03, 0.15],  # lamp-facade distance, fraction of the height
        "wet_prob": 0.3,  # probability of a wet street with specular streaks
    },
    "camera": {
        "blur_prob": 0.5,
        "blur_sigma": [0.3, 1.2],  # pixels
        "vignetting": [0.0, 0.4],  # relative loss at the corners
        "exposure": [0.7, 1.6],
        "shot_noise": [0.0005, 0.004],  # variance per unit of signal
        "read_noise": [0.0005, 0.004],  # std
        "wb_red": [0.8, 1.2],  # white-balance gains (green = 1)
        "wb_blue": [0.8, 1.25],
        "highlight_desat": [0.0, 0.3],
    },
}

_MIN_SIZE, _MAX_SIZE = 16, 8192
_INT_RANGES = {("scene", "background"), ("lamps", "count")}
_GROUND_ASPECT = 0.35  # vertical foreshortening of pools on the oblique street
_KNEE = 0.8  # start of the highlight roll-off
_LIGHT_ROWS = 128  # rows of the grid on which halos and light pools are evaluated
_SRGB_T = 0.0031308  # end of the linear segment of the sRGB curve


def render_night_reference(
    size: tuple[int, int], rng: np.random.Generator, conf: Mapping | None = None
) -> np.ndarray:
    """Render a synthetic night street scene: float32 (H, W, 3) sRGB in [0, 1].

    ``size`` is (height, width), each in [16, 8192]; ``conf`` overrides :data:`NIGHT_DEFAULTS`
    (unknown keys raise ConfigError). The image depends only on ``rng``'s state and ``conf``.
    """
    h, w = _check_size(size)
    cfg = _load_conf(conf)
    ys = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    xs = ((np.arange(w, dtype=np.float32) + 0.5) / h)[None, :]
    scene = _Scene(cfg, rng, h, w, ys, xs)
    radiance = scene.radiance()
    return _camera(radiance, cfg["camera"], rng, scratch=(scene.albedo, scene.emission))


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"night reference: size must be (height, width), got {size!r}") from None
    if not (_MIN_SIZE <= h <= _MAX_SIZE and _MIN_SIZE <= w <= _MAX_SIZE):
        raise ValueError(
            f"night reference: size (height, width) = ({h}, {w}) must lie in "
            f"[{_MIN_SIZE}, {_MAX_SIZE}] pixels on each side"
        )
    return h, w


def _load_conf(conf: Mapping | None) -> dict[str, dict[str, Any]]:
    """Strict merge with the defaults, checked; cached since merging costs ~20 ms per call."""
    plain = OmegaConf.to_container(conf, resolve=True) if isinstance(conf, DictConfig) else conf
    try:
        key = json.dumps(plain, sort_keys=True)
    except (TypeError, ValueError):
        return _merge_and_check(conf)
    return copy.deepcopy(_cached_conf(key))


@functools.lru_cache(maxsize=64)
def _cached_conf(key: str) -> dict[str, dict[str, Any]]:
    return _merge_and_check(json.loads(key))


def _merge_and_check(conf: Mapping | None) -> dict[str, dict[str, Any]]:
    """Strict merge with the defaults, then check ranges and probabilities."""
    cfg = OmegaConf.to_container(merge_conf(NIGHT_DEFAULTS, conf, "night reference"))
    for group, entries in cfg.items():
        for key, value in entries.items():
            name = f"{group}.{key}"
            if isinstance(value, list):
                if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
                    raise ConfigError(
                        f"night reference: {name} must be a range [lo, hi], got {value}"
                    )
                if not 0 <= value[0] <= value[1]:
                    raise ConfigError(f"night reference: {name} needs 0 <= lo <= hi, got {value}")
                if (group, key) in _INT_RANGES and not all(float(v).is_integer() for v in value):
                    raise ConfigError(f"night reference: {name} must be integers, got {value}")
            elif key.endswith("_prob") and not 0 <= value <= 1:
                raise ConfigError(f"night reference: {name} must be a probability, got {value}")
    if cfg["scene"]["facade_width"][0] <= 0:
        raise ConfigError("night reference: scene.facade_width must be positive")
    for key in ("horizon", "skyline"):
        if cfg["scene"][key][1] > 1:
            raise ConfigError(f"night reference: scene.{key} is a fraction of the height (<= 1)")
    return cfg


def _uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    lo, hi = bounds
    return float(lo + (hi - lo) * rng.random())


def _integer(rng: np.random.Generator, bounds: list[float]) -> int:
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


class _Scene:
    """Albedo, emission and light sources of one random night street scene."""

    def __init__(
        self,
        cfg: dict[str, dict[str, Any]],
        rng: np.random.Generator,
        h: int,
        w: int,
        ys: np.ndarray,
        xs: np.ndarray,
    ) -> None:
        self.cfg, self.rng, self.h, self.w, self.ys, self.xs = cfg, rng, h, w, ys, xs
        self.width = w / h
        sc = cfg["scene"]
        self.ground = _uniform(rng, sc["horizon"])
        self.ground_row = min(h - 1, int(round(self.ground * h)))
        self.albedo = np.zeros((h, w, 3), np.float32)
        self.emission = np.zeros((h, w, 3), np.float32)
        self.facades: list[tuple[float, float, float]] = []  # (x0, x1, top) of the front row
        self._sky()
        self._background()
        self._front_row()
        self._street()
        self._texture()

    # --- layout -------------------------------------------------------------------------------

    def _sky(self) -> None:
        rng, sk = self.rng, self.cfg["sky"]
        zenith, horizon = _uniform(rng, sk["zenith"]), _uniform(rng, sk["horizon"])
        colour = np.array([_uniform(rng, sk["red"]), _uniform(rng, sk["green"]), 1.0], np.float32)
        colour /= colour.mean()
        t = np.clip(self.ys / self.ground, 0.0, 1.0) ** _uniform(rng, sk["falloff"])
        sky = (zenith + (horizon - zenith) * t)[..., None] * colour  # (H, 1, 3)
        glow_on = rng.random() < sk["glow_prob"]
        glow, height = _uniform(rng, sk["glow"]), _uniform(rng, sk["glow_height"])
        glow_col = np.array(
            [1.0, _uniform(rng, sk["glow_green"]), _uniform(rng, sk["glow_blue"])], np.float32
        )
        if glow_on:
            above = np.clip(self.ground - self.ys, 0.0, None)
            sky = sky + (glow * np.exp(-above / height))[..., None] * glow_col
        self.emission[:] = sky
        self.emission[self.ground_row :] = 0.0

    def _grey(self, level: float) -> np.ndarray:
        tint = 1.0 + 0.08 * self.rng.standard_normal(3)
        return (level * tint / tint.mean()).astype(np.float32)

    def _paint(self, x0: float, x1: float, top: float, albedo: np.ndarray) -> tuple[int, int, int]:
        """Fill a facade rectangle from ``top`` down to the ground line; return its pixel box."""
        c0, c1 = max(0, int(round(x0 * self.h))), min(self.w, int(round(x1 * self.h)))
        r0 = max(0, int(round(top * self.h)))
        r1 = self.ground_row
        if c1 > c0 and r1 > r0:
            self.albedo[r0:r1, c0:c1] = albedo
            self.emission[r0:r1, c0:c1] = 0.0
        return r0, c0, c1

    def _background(self) -> None:
        rng, sc = self.rng, self.cfg["scene"]
        for _ in range(_integer(rng, sc["background"])):
            width = _uniform(rng, sc["facade_width"]) * 0.7
            x0 = rng.random() * (self.width + width) - width
            top = _uniform(rng, [sc["skyline"][0] * 0.5, sc["skyline"][1]])
            box = self._paint(x0, x0 + width, top, self._grey(0.5 * _uniform(rng, sc["albedo"])))
            self._windows(box, spacing_scale=0.6, lit_scale=0.5, shops=False)

    def _front_row(self) -> None:
        rng, sc = self.rng, self.cfg["scene"]
        x = -rng.random() * sc["facade_width"][1]
        while x < self.width:
            width = _uniform(rng, sc["facade_width"])
            top = _uniform(rng, sc["skyline"])
            albedo = self._grey(_uniform(rng, sc["albedo"]))
            if rng.random() >= sc["gap_prob"]:
                box = self._paint(x, x + width, top, albedo)
                self._windows(box, spacing_scale=1.0, lit_scale=1.0, shops=True)
                self.facades.append((x, x + width, top))
            x += width

    def _windows(
        self, box: tuple[int, int, int], spacing_scale: float, lit_scale: float, shops: bool
    ) -> None:
        """A grid of windows on the facade whose pixel box is (top row, first col, end col)."""
        rng, wc = self.rng, self.cfg["windows"]
        r0, c0, c1 = box
        cell_h = _uniform(rng, wc["spacing"]) * spacing_scale * self.h
        cell_w = cell_h * _uniform(rng, [0.7, 1.5])
        fill_y, fill_x = _uniform(rng, wc["fill"]), _uniform(rng, wc["fill"])
        lit_prob = _uniform(rng, wc["lit_prob"]) * lit_scale
        rows0, rows1 = r0 + int(0.5 * cell_h), self.ground_row - int(1.3 * cell_h)
        cols0, cols1 = c0 + int(0.3 * cell_w), c1 - int(0.3 * cell_w)
        ny, nx = int((rows1 - rows0) // cell_h), int((cols1 - cols0) // cell_w)
        if cell_h < 3 or ny < 1 or nx < 1:
            return
        lit = rng.random((ny, nx)) < lit_prob
        warm = rng.random((ny, nx)) < wc["warm_prob"]
        level = _uniform(rng, wc["intensity"]) * np.exp(0.4 * rng.standard_normal((ny, nx)))
        ones = np.ones((ny, nx))
        warm_col = np.stack(
            [ones, rng.uniform(0.62, 0.75, (ny, nx)), rng.uniform(0.3, 0.45, (ny, nx))], -1
        )
        cool_col = np.stack(
            [rng.uniform(0.75, 0.9, (ny, nx)), rng.uniform(0.85, 0.95, (ny, nx)), ones], -1
        )
        table = np.where(warm[..., None], warm_col, cool_col) * (level * lit)[..., None]
        yy = (np.arange(rows0, rows0 + int(ny * cell_h)) - rows0) / cell_h
        cols_all = np.arange(cols0, cols0 + int(nx * cell_w))
        cols_all = cols_all[(cols_all >= 0) & (cols_all < self.w)]
        if len(cols_all) == 0:
            return
        xx = (cols_all - cols0) / cell_w
        col_start = int(cols_all[0])
        iy, fy = np.minimum(yy.astype(int), ny - 1), yy % 1.0
        ix, fx = np.minimum(xx.astype(int), nx - 1), xx % 1.0
        win = (np.abs(fy - 0.5) < fill_y / 2)[:, None] & (np.abs(fx - 0.5) < fill_x / 2)[None, :]
        rows = slice(rows0, rows0 + len(iy))
        cols = slice(col_start, col_start + len(ix))
        shade = (1.1 - 0.3 * fy).astype(np.float32)[:, None, None]  # ceiling light
        glow = table[iy[:, None], ix[None, :]].astype(np.float32) * shade
        self.emission[rows, cols] += np.where(win[..., None], glow, 0.0).astype(np.float32)
        dark = win & ~lit[iy[:, None], ix[None, :]]
        self.albedo[rows, cols] *= np.where(dark, 0.35, np.where(win, 0.0, 1.0))[..., None].astype(
            np.float32
        )
        floors = ((np.arange(r0, self.ground_row) - rows0) / cell_h) % 1.0
        slab = np.where(floors > 0.9, 0.7, 1.0).astype(np.float32)  # shadowed floor slabs
        self.albedo[r0 : self.ground_row, c0:c1] *= slab[:, None, None]
        if shops and rng.random() < wc["shop_prob"]:
            self._shop(r0, c0, c1, cell_h)

    def _shop(self, r0: int, c0: int, c1: int, cell_h: float) -> None:
        """A lit shop window along the ground floor of a facade."""
        rng, wc = self.rng, self.cfg["windows"]
        g = self.ground_row
        rows = slice(max(r0, g - int(1.1 * cell_h)), g - int(0.15 * cell_h))
        margin = int(_uniform(rng, [0.05, 0.25]) * (c1 - c0))
        cols = slice(c0 + margin, c1 - margin)
        warm = rng.random() < wc["warm_prob"]
        colour = np.array([1.0, 0.7, 0.45] if warm else [0.8, 0.9, 1.0], np.float32)
        level = 0.8 * _uniform(rng, wc["intensity"])
        n, m = rows.stop - rows.start, cols.stop - cols.start
        if n <= 0 or m <= 0:
            return
        pane = max(2.0, 0.8 * cell_h)  # panes separated by dark mullions
        pos = np.arange(m) / pane
        panes = np.exp(0.3 * rng.standard_normal(int(pos[-1]) + 1)).astype(np.float32)
        across = np.where(pos % 1.0 < 0.9, panes[pos.astype(int)], 0.0).astype(np.float32)
        ramp = np.linspace(1.0, 0.5, n, dtype=np.float32)[:, None]
        self.emission[rows, cols] = (level * ramp * across)[..., None] * colour
        self.albedo[rows, cols] = 0.0

    def _street(self) -> None:
        rng, sc = self.rng, self.cfg["scene"]
        ground = self._grey(_uniform(rng, sc["ground_albedo"]))
        kerb = self.ground_row + int(_uniform(rng, [0.02, 0.06]) * self.h)
        self.wet = rng.random() < self.cfg["lamps"]["wet_prob"]
        self.albedo[self.ground_row :] = ground * (0.6 if self.wet else 1.0)
        self.albedo[self.ground_row : kerb] *= 1.5  # pavement along the facades

    def _texture(self) -> None:
        """Multiplicative log-normal albedo texture: coarse blotches, grain and pixel noise."""
        rng, h, w = self.rng, self.h, self.w
        strength = _uniform(rng, self.cfg["scene"]["texture"])
        small = rng.standard_normal((h // 24 + 2, w // 24 + 2)).astype(np.float32)
        tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        fine = rng.standard_normal((h, w), dtype=np.float32)
        grain = cv2.GaussianBlur(fine, (0, 0), 1.2)
        tex *= 0.6 * strength
        tex[self.ground_row :] *= 0.3  # asphalt: fine grain rather than blotches
        grain *= 0.8 * strength
        tex += grain
        fine *= 0.5 * strength
        tex += fine
        np.exp(tex, out=tex)
        self.albedo *= tex[..., None]

    # --- lights -------------------------------------------------------------------------------

    def _lamp_colour(self) -> np.ndarray:
        rng, lc = self.rng, self.cfg["lamps"]
        sodium = rng.random() < lc["sodium_prob"]
        a, b = rng.random(), rng.random()
        if sodium:
            lo_g, hi_g = lc["sodium_green"]
            lo_b, hi_b = lc["sodium_blue"]
            return np.array([1.0, lo_g + a * (hi_g - lo_g), lo_b + b * (hi_b - lo_b)], np.float32)
        lo_r, hi_r = lc["led_red"]
        lo_g, hi_g = lc["led_green"]
        return np.array([lo_r + a * (hi_r - lo_r), lo_g + b * (hi_g - lo_g), 1.0], np.float32)

    def radiance(self) -> np.ndarray:
        """Linear scene radiance (H, W, 3) with all lamps switched on.

        Halos and light pools are smooth, so they are evaluated on a grid of about
        ``_LIGHT_ROWS`` rows and upsampled; the sharp parts (cores, poles, wet streaks) are drawn
        at full resolution inside their bounding boxes.
        """
        rng, lc, sc = self.rng, self.cfg["lamps"], self.cfg["scene"]
        h, w = self.h, self.w
        step = max(1, h // _LIGHT_ROWS)
        hl, wl = max(2, -(-h // step)), max(2, -(-w // step))
        ys = ((np.arange(hl, dtype=np.float32) + 0.5) / hl)[:, None]
        xs = ((np.arange(wl, dtype=np.float32) + 0.5) * (self.width / wl))[None, :]
        g = int(np.searchsorted(ys[:, 0], self.ground))
        count = _integer(rng, lc["count"])
        n = max(count, 1)
        colours = np.zeros((n, 3), np.float32)
        light = np.zeros((n, hl, wl), np.float32)  # irradiance of the surfaces
        glare = np.zeros((n, hl, wl), np.float32)  # halo radiance seen by the camera
        sharp = []
        for i in range(count):
            colours[i] = self._lamp_colour()
            on_wall = rng.random() < lc["wall_prob"] and len(self.facades) > 0
            pick = int(rng.integers(0, max(len(self.facades), 1)))
            u, v = rng.random(), rng.random()
            lx = float(rng.random() * self.width)
            pole = _uniform(rng, lc["pole_height"])
            core, core_r = _uniform(rng, lc["core"]), _uniform(rng, lc["core_radius"])
            halo, halo_r = _uniform(rng, lc["halo"]), _uniform(rng, lc["halo_radius"])
            pool, wall_d = _uniform(rng, lc["pool"]), _uniform(rng, lc["wall_distance"])
            if on_wall:
                x0, x1, top = self.facades[pick]
                lx = float(np.clip(x0 + (0.15 + 0.7 * u) * (x1 - x0), 0.0, self.width))
                ly = self.ground - (0.1 + 0.3 * v) * (self.ground - max(top, 0.0))
                scale, foot = 0.3, None
            else:
                depth = 0.03 + 0.92 * u  # 0: at the facades, 1: at the bottom edge
                scale = 0.3 + 0.7 * depth
                foot = self.ground + (1.0 - self.ground) * depth
                ly = max(foot - pole * scale, 0.01)
                self._pole(lx, ly, foot, scale)
            size = 0.35 + 0.65 * scale
            r2 = (ys - ly) ** 2 + (xs - lx) ** 2
            glare[i] = _pool(r2, halo_r * size, halo * core)
            if on_wall:
                light[i, :g] = _pool(r2[:g], wall_d * 0.5, 1.5 * pool)
            else:
                light[i, :g] = _pool(r2[:g], wall_d * scale, 0.4 * pool)
                r2g = ((ys[g:] - foot) / _GROUND_ASPECT) ** 2 + (xs - lx) ** 2
                light[i, g:] = _pool(r2g, 0.6 * pole * scale, pool)
            sharp.append((lx, ly, core, max(core_r * size, 0.7 / h), size, foot))
        ambient = _uniform(rng, sc["ambient"])
        mix = rng.random()
        amb_col = mix * np.array([1.0, 0.8, 0.6], np.float32) + (1 - mix) * np.array(
            [0.45, 0.6, 1.0], np.float32
        )
        amb_col *= ambient / amb_col.mean()
        irr = (light.reshape(n, -1).T @ colours).reshape(hl, wl, 3) + amb_col
        out = cv2.resize(irr, (w, h), interpolation=cv2.INTER_LINEAR)
        out *= self.albedo
        out += self.emission
        lamps = (glare.reshape(n, -1).T @ colours).reshape(hl, wl, 3)
        out += cv2.resize(lamps, (w, h), interpolation=cv2.INTER_LINEAR)
        for colour, (lx, ly, core, sigma, size, foot) in zip(colours, sharp):
            self._core(out, colour, lx, ly, core, sigma)
            if self.wet and foot is not None:
                self._streak(out, colour, lx, foot, 0.02 * core, 0.004 * size + 1.0 / h)
        return out

    def _pole(self, lx: float, top: float, foot: float, scale: float) -> None:
        """A dark lamp post from the lamp head down to its foot; it hides what is behind it."""
        half = max(1, int(round(0.003 * scale * self.h)))
        c = int(lx * self.h)
        cols = slice(max(0, c - half), min(self.w, c + half))
        rows = slice(int(top * self.h), min(self.h, int(foot * self.h)))
        self.albedo[rows, cols] = 0.04
        self.emission[rows, cols] = 0.0

    def _box(self, x: float, y: float, rx: float, ry: float) -> tuple[slice, slice]:
        h = self.h
        rows = slice(max(0, int((y - ry) * h)), max(0, min(h, int((y + ry) * h) + 2)))
        cols = slice(max(0, int((x - rx) * h)), max(0, min(self.w, int((x + rx) * h) + 2)))
        return rows, cols

    def _core(
        self, out: np.ndarray, colour: np.ndarray, lx: float, ly: float, peak: float, sigma: float
    ) -> None:
        """Add a Gaussian lamp core inside its 4-sigma box."""
        rows, cols = self._box(lx, ly, 4 * sigma, 4 * sigma)
        r2 = (self.ys[rows] - ly) ** 2 + (self.xs[:, cols] - lx) ** 2
        out[rows, cols] += (peak * np.exp(-r2 / (2 * sigma**2)))[..., None] * colour

    def _streak(
        self, out: np.ndarray, colour: np.ndarray, lx: float, foot: float, peak: float, width: float
    ) -> None:
        """Specular reflection of a lamp on the wet street: a streak from its foot downwards."""
        rows, cols = self._box(lx, foot + 0.5, 6 * width, 0.5)
        rows = slice(max(rows.start, int(foot * self.h)), rows.stop)
        across = np.exp(-np.abs(self.xs[:, cols] - lx) / width)
        along = np.exp(-(self.ys[rows] - foot) / 0.15)
        out[rows, cols] += (peak * along * across)[..., None] * colour


def _pool(r2: np.ndarray, distance: float, peak: float) -> np.ndarray:
    """Irradiance of a point source at ``distance`` over a plane: peak (1 + r²/d²)^(-3/2)."""
    t = 1.0 / (1.0 + r2 / distance**2)
    return peak * t * np.sqrt(t)


def _camera(
    x: np.ndarray,
    cc: dict[str, Any],
    rng: np.random.Generator,
    scratch: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Lens blur, vignetting, exposure, raw sensor noise, white balance, highlights, sRGB.

    Works in place on the radiance ``x``; ``scratch`` are two free buffers of its shape.
    """
    h, w = x.shape[:2]
    a, b = scratch
    blur = rng.random() < cc["blur_prob"]
    sigma = _uniform(rng, cc["blur_sigma"])
    vignetting = _uniform(rng, cc["vignetting"])
    exposure = _uniform(rng, cc["exposure"])
    shot, read = _uniform(rng, cc["shot_noise"]), _uniform(rng, cc["read_noise"])
    gains = (_uniform(rng, cc["wb_red"]), 1.0, _uniform(rng, cc["wb_blue"]), 0.0)
    desat = _uniform(rng, cc["highlight_desat"])
    if blur and sigma > 0:
        cv2.GaussianBlur(x, (0, 0), sigma, dst=x)
    fall_y = 1.0 - 0.5 * vignetting * np.linspace(-1.0, 1.0, h, dtype=np.float32) ** 2
    fall_x = 1.0 - 0.5 * vignetting * np.linspace(-1.0, 1.0, w, dtype=np.float32) ** 2
    x *= (exposure * fall_y)[:, None, None]
    x *= fall_x[None, :, None]
    if shot > 0 or read > 0:
        np.maximum(x, 0.0, out=a)
        a *= shot
        a += read**2
        np.sqrt(a, out=a)
        rng.standard_normal(dtype=np.float32, out=b)
        b *= a
        x += b
    np.maximum(x, 0.0, out=x)
    cv2.multiply(x, gains, dst=x)
    peak = np.maximum(x[..., 0], x[..., 1])
    np.maximum(peak, x[..., 2], out=peak)
    over = peak > _KNEE
    if over.any():
        hot_peak = peak[over]
        rolled = _KNEE + (1 - _KNEE) * (1 - np.exp((_KNEE - hot_peak) / (1 - _KNEE)))
        amount = desat * np.clip((hot_peak - 1.0) / 4.0, 0.0, 1.0)
        hot = x[over] * (rolled / hot_peak)[:, None]
        x[over] = hot + amount[:, None] * (rolled[:, None] - hot)
    np.minimum(x, 1.0, out=x)
    # sRGB: 12.92 x below the threshold t, 1.055 x^(1/2.4) - 0.055 above; both curves meet at t,
    # so the sum of the power branch on max(x, t) and the linear part of min(x, t) - t is exact.
    np.maximum(x, _SRGB_T, out=a)
    np.power(a, 1 / 2.4, out=a)
    a *= 1.055
    a -= 0.055
    np.minimum(x, _SRGB_T, out=b)
    b -= _SRGB_T
    b *= 12.92
    a += b
    np.clip(a, 0.0, 1.0, out=a)
    return a
