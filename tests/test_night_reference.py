"""Parametric night-scene references for the stylization: statistics, colours, noise, config."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from hloc_hndesc.config import ConfigError
from hloc_hndesc.training.stylization import night
from hloc_hndesc.training.stylization.night import NIGHT_DEFAULTS, render_night_reference

LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
NO_WINDOWS = {"lit_prob": [0.0, 0.0], "shop_prob": 0.0}
NO_NOISE = {"shot_noise": [0.0, 0.0], "read_noise": [0.0, 0.0]}


def _render(seed: int, size: tuple[int, int] = (96, 128), conf: dict | None = None) -> np.ndarray:
    return render_night_reference(size, np.random.default_rng(seed), conf)


def _brightest_colour(image: np.ndarray, fraction: float = 0.002) -> np.ndarray:
    luma = image @ LUMA
    return image[luma >= np.quantile(luma, 1.0 - fraction)].mean(axis=0)


def _sky_residual(image: np.ndarray) -> float:
    """Median |second difference| along x in the top rows, which are always open sky."""
    rows = image[: max(2, int(0.03 * image.shape[0]))]
    second = rows[:, 2:] - 2.0 * rows[:, 1:-1] + rows[:, :-2]
    return float(np.median(np.abs(second)))


def test_same_seed_same_image_other_seed_other_image():
    a, b, c = _render(3), _render(3), _render(4)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


@pytest.mark.parametrize("size", [(16, 16), (64, 96), (130, 33)])
def test_dtype_shape_and_range(size):
    image = _render(0, size)
    assert image.shape == (*size, 3)
    assert image.dtype == np.float32 and image.flags.c_contiguous
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_darkness_statistics_with_a_bright_tail():
    luma = np.stack([_render(seed, (128, 128)) @ LUMA for seed in range(20)])
    assert np.median(luma) < 0.15
    assert np.median(np.median(luma, axis=(1, 2))) < 0.12  # typical image is dark, not just some
    assert np.percentile(luma, 99.5) > 0.6
    assert (luma.max(axis=(1, 2)) > 0.8).all()  # every image has a light source near saturation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sodium_lamps_are_orange(seed):
    conf = OmegaConf.create({"lamps": {"sodium_prob": 1.0}, "windows": NO_WINDOWS})
    red, green, blue = _brightest_colour(_render(seed, conf=conf))
    assert red > green + 0.08 and green > blue + 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_led_lamps_are_neutral_to_cool(seed):
    conf = {
        "lamps": {"sodium_prob": 0.0},
        "windows": NO_WINDOWS,
        "camera": {"wb_red": [1.0, 1.0], "wb_blue": [1.0, 1.0]},
    }
    colour = _brightest_colour(_render(seed, conf=conf))
    assert colour[2] >= colour[0]
    assert colour.max() - colour.min() < 0.1


def test_sensor_noise_present_by_default_and_absent_when_disabled():
    for seed in range(3):
        noisy = _render(seed, (128, 128))
        clean = _render(seed, (128, 128), {"camera": NO_NOISE})
        assert _sky_residual(noisy) > 0.005
        assert _sky_residual(clean) < 1e-4
        # Same scene otherwise: the difference is zero-mean noise, small on average.
        assert np.abs(noisy - clean).mean() < 0.06


def test_lamp_count_zero_gives_a_dim_scene():
    conf = {"lamps": {"count": [0, 0]}, "windows": NO_WINDOWS, "camera": NO_NOISE}
    assert _render(0, conf=conf).max() < 0.6


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"lamps": {"colour": 1.0}}, "lamps.colour"),
        ({"fog": {"density": 1.0}}, "fog"),
        ({"lamps": {"count": [5, 2]}}, "lamps.count"),
        ({"camera": {"exposure": [1.0]}}, "camera.exposure"),
        ({"lamps": {"sodium_prob": 1.5}}, "lamps.sodium_prob"),
        ({"scene": {"horizon": [0.5, 1.5]}}, "scene.horizon"),
    ],
)
def test_bad_conf_raises_config_error_naming_the_key(conf, message):
    with pytest.raises(ConfigError, match=message):
        _render(0, conf=conf)


@pytest.mark.parametrize("size", [(8, 64), (64, 15), (64, 9000), (64,), "big"])
def test_bad_size_raises_value_error(size):
    with pytest.raises(ValueError, match="size"):
        render_night_reference(size, np.random.default_rng(0))


def test_conf_overrides_take_effect_and_defaults_stay_untouched():
    dim = _render(5, conf={"camera": {"exposure": [0.5, 0.5]}})
    bright = _render(5, conf={"camera": {"exposure": [1.5, 1.5]}})
    assert bright.mean() > dim.mean() + 0.02
    assert NIGHT_DEFAULTS["camera"]["exposure"] == [0.7, 1.6]
    assert np.array_equal(_render(5), _render(5, conf={}))


def test_does_not_use_the_benchmark_night_model():
    path = Path(night.__file__)
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not any("evaluation" in name or "synthetic" in name for name in imported), imported
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('night_alone', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "import numpy as np\n"
        "module.render_night_reference((32, 32), np.random.default_rng(0))\n"
        "print(sorted(m for m in sys.modules if m.startswith('hloc_hndesc.evaluation')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
