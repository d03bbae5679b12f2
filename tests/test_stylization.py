"""Photorealistic stylization: WCT, smoothing (exact and guided), the stylizer, the offline command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR

from hloc_hndesc.cli import main as cli_main
from hloc_hndesc.config import ConfigError
from hloc_hndesc.evaluation.stylization import colour_distances, dog_repeatability, edge_ssim, repeatability
from hloc_hndesc.io import image_to_tensor, read_image, resize_max
from hloc_hndesc.training.stylization.colour import lalphabeta_to_rgb, rgb_to_lalphabeta
from hloc_hndesc.training.stylization.offline import png_complete, read_manifest, stylize_folder
from hloc_hndesc.training.stylization.smoothing import (
    MattingLaplacian,
    box_mean,
    guided_filter,
    matting_smooth,
)
from hloc_hndesc.training.stylization.transform import Stylizer, stylize_conf
from hloc_hndesc.training.stylization.wct import gaussian_stats, match_regions, wct_transfer
from hloc_hndesc.training.tasks import load_train_config, run_task

DATA = DATA_DIR
CONTENT = DATA / "sacre_coeur" / "mapping" / "02928139_3448003521.jpg"
REFERENCE = DATA / "phototourism_sample" / "images" / "piazza_san_marco_15148634_5228701572.jpg"
needs_data = pytest.mark.skipif(not CONTENT.is_file(), reason=f"real data not found at {DATA} (set HLOC_HNDESC_DATA)")


def photo(path: Path, size: int) -> torch.Tensor:
    return image_to_tensor(resize_max(read_image(path), size))


def dense_matting_laplacian(guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Levin et al.'s matting Laplacian, one window per pixel truncated at the border, by loops."""
    h, w, _ = guide.shape
    flat = guide.reshape(-1, 3)
    lap = np.zeros((h * w, h * w))
    for cy in range(h):
        for cx in range(w):
            idx = [
                y * w + x
                for y in range(max(0, cy - radius), min(h, cy + radius + 1))
                for x in range(max(0, cx - radius), min(w, cx + radius + 1))
            ]
            n = len(idx)
            win = flat[idx]
            d = win - win.mean(0)
            inv = np.linalg.inv(np.cov(win.T, bias=True) + eps / n * np.eye(3))
            lap[np.ix_(idx, idx)] += np.eye(n) - (1 + d @ inv @ d.T) / n
    return lap


def naive_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter (one channel) with explicit window loops."""
    h, w, _ = guide.shape
    a = np.zeros((h, w, 3))
    b = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            sl = (slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1))
            gi, pi = guide[sl].reshape(-1, 3), src[sl].reshape(-1)
            cov = np.cov(gi.T, bias=True) + eps * np.eye(3)
            a[y, x] = np.linalg.solve(cov, (gi * pi[:, None]).mean(0) - gi.mean(0) * pi.mean())
            b[y, x] = pi.mean() - a[y, x] @ gi.mean(0)
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            sl = (slice(max(0, y - radius), y + radius + 1), slice(max(0, x - radius), x + radius + 1))
            out[y, x] = a[sl].reshape(-1, 3).mean(0) @ guide[y, x] + b[sl].mean()
    return out


# colour space and WCT ---------------------------------------------------------------------------


@needs_data
def test_lalphabeta_round_trip_on_a_photo():
    image = photo(CONTENT, 128)
    back = lalphabeta_to_rgb(rgb_to_lalphabeta(image))
    assert (back - image).abs().max() < 2e-3


def test_global_wct_matches_reference_mean_and_covariance():
    gen = torch.Generator().manual_seed(0)
    content = torch.randn(3, 40, 50, generator=gen) * torch.tensor([1.0, 0.5, 0.2])[:, None, None]
    mix = torch.tensor([[1.0, 0.3, 0.0], [0.2, 0.7, 0.1], [0.0, -0.4, 0.5]])
    reference = (mix @ torch.randn(3, 30 * 30, generator=gen)).reshape(3, 30, 30) + torch.tensor([2.0, -1.0, 0.5])[:, None, None]
    out = wct_transfer(content.double(), reference.double(), eps_rel=0.0)
    got, want = gaussian_stats(out.reshape(3, -1)), gaussian_stats(reference.reshape(3, -1))
    assert torch.allclose(got.mean, want.mean, atol=1e-8)
    assert torch.allclose(got.cov, want.cov, atol=1e-8)
    # the same image as reference is the identity, strength 0 returns the content
    assert torch.allclose(wct_transfer(content, content, eps_rel=0.0), content, atol=1e-4)
    assert torch.equal(wct_transfer(content, reference, strength=0.0), content)


def test_wct_of_a_flat_content_stays_finite():
    content = torch.full((3, 16, 16), 0.3)
    reference = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = wct_transfer(content, reference)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.mean((1, 2)), reference.mean((1, 2)), atol=1e-5)


def test_local_wct_follows_paired_regions_better_than_global():
    """Top/bottom halves of different colours: the local WCT gives each half its reference half's colour."""
    h, w = 48, 40
    gen = torch.Generator().manual_seed(2)
    content = torch.empty(3, h, w)
    content[:, : h // 2] = torch.tensor([0.2, -0.3, 0.4])[:, None, None]
    content[:, h // 2 :] = torch.tensor([-0.5, 0.3, -0.1])[:, None, None]
    content += 0.02 * torch.randn(3, h, w, generator=gen)
    reference = torch.empty(3, h, w)
    top, bottom = torch.tensor([-1.0, 0.0, 0.8]), torch.tensor([0.6, 0.5, -0.6])
    reference[:, : h // 2], reference[:, h // 2 :] = top[:, None, None], bottom[:, None, None]
    reference += 0.02 * torch.randn(3, h, w, generator=gen)
    regions = match_regions(content, reference, k=2, blur=0.0)
    assert torch.allclose(regions[0].sum(0), torch.ones(h, w), atol=1e-5)
    local = wct_transfer(content, reference, *regions, local_weight=1.0)
    glob = wct_transfer(content, reference)
    def error(out):
        return (out[:, 4 : h // 2 - 4].mean((1, 2)) - top).norm() + (out[:, h // 2 + 4 : -4].mean((1, 2)) - bottom).norm()
    assert error(local) < 0.05
    assert error(glob) > 5 * error(local)


# smoothing ----------------------------------------------------------------------------------------


def test_box_mean_truncates_windows_at_the_border():
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    out = box_mean(x, 1)
    assert out[0, 0, 0, 0] == pytest.approx(float(x[0, 0, :2, :2].mean()))
    assert out[0, 0, 2, 2] == pytest.approx(float(x[0, 0, 1:4, 1:4].mean()))


def test_matrix_free_matting_laplacian_equals_the_dense_one():
    gen = torch.Generator().manual_seed(3)
    guide = torch.rand(1, 3, 6, 7, generator=gen, dtype=torch.float64)
    dense = dense_matting_laplacian(guide[0].permute(1, 2, 0).numpy(), 1, 1e-3)
    p = torch.rand(1, 2, 6, 7, generator=gen, dtype=torch.float64)
    got = MattingLaplacian(guide, 1, 1e-3).apply(p)[0].reshape(2, -1).numpy()
    np.testing.assert_allclose(got, (dense @ p[0].reshape(2, -1).numpy().T).T, atol=1e-10)
    assert np.abs(dense.sum(1)).max() < 1e-10  # constants are in the null space
    assert np.linalg.eigvalsh(dense).min() > -1e-10


def test_exact_matting_solve_equals_a_direct_solve():
    gen = torch.Generator().manual_seed(4)
    guide = torch.rand(1, 3, 6, 7, generator=gen, dtype=torch.float64)
    target = torch.rand(1, 3, 6, 7, generator=gen, dtype=torch.float64)
    out, report = matting_smooth(guide, target, mu=30.0, radius=1, eps=1e-3, tol=1e-12)
    lap = dense_matting_laplacian(guide[0].permute(1, 2, 0).numpy(), 1, 1e-3)
    d = np.diag(MattingLaplacian(guide, 1, 1e-3).counts.reshape(-1).numpy() ** -0.5)
    direct = np.linalg.solve(np.eye(42) + 30.0 * d @ lap @ d, target[0].reshape(3, -1).numpy().T).T
    np.testing.assert_allclose(out[0].reshape(3, -1).numpy(), direct, atol=1e-9)
    assert report.residual <= 1e-12 and 0 < report.iterations < 200


def test_guided_filter_equals_the_window_loop_definition():
    gen = torch.Generator().manual_seed(5)
    guide = torch.rand(1, 3, 9, 11, generator=gen, dtype=torch.float64)
    src = torch.rand(1, 1, 9, 11, generator=gen, dtype=torch.float64)
    got = guided_filter(guide, src, radius=2, eps=1e-2)[0, 0].numpy()
    want = naive_guided_filter(guide[0].permute(1, 2, 0).numpy(), src[0, 0].numpy(), 2, 1e-2)
    np.testing.assert_allclose(got, want, atol=1e-10)
    # a linear function of the guide passes through a filter with tiny eps unchanged
    lin = (0.5 * guide[:, :1] - 0.2 * guide[:, 2:] + 0.1)
    assert (guided_filter(guide, lin, 2, 1e-9) - lin).abs().max() < 1e-5


# stylizer -----------------------------------------------------------------------------------------


def test_stylize_conf_is_strict():
    with pytest.raises(ConfigError, match="smothing"):
        stylize_conf({"smothing": "guided"})
    with pytest.raises(ConfigError, match="variant"):
        stylize_conf({"variant": "vgg"})
    with pytest.raises(ConfigError, match="radius"):
        stylize_conf({"guided": {"radius": "big"}})


@needs_data
@pytest.mark.parametrize("smoothing", ["guided", "matting"])
def test_pixel_stylization_keeps_geometry_and_moves_colour(smoothing):
    size = 256 if smoothing == "guided" else 160
    content, reference = photo(CONTENT, size), photo(REFERENCE, size)
    out = Stylizer({"smoothing": smoothing}).stylize(content, reference)
    assert out.shape == content.shape and out.min() >= 0 and out.max() <= 1
    assert dog_repeatability(content, out) > 0.75
    assert edge_ssim(content, out) > 0.85
    before, after = colour_distances(content, reference), colour_distances(out, reference)
    assert after["w2"] < 0.5 * before["w2"]
    assert after["sw1"] < 0.6 * before["sw1"]


@needs_data
def test_feature_stylization_with_the_shipped_autoencoder():
    content, reference = photo(CONTENT, 192), photo(REFERENCE, 192)
    stylizer = Stylizer({"variant": "feature", "smoothing": "guided"})
    out = stylizer.stylize(content, reference)
    raw = Stylizer({"variant": "feature", "smoothing": "none"}).stylize(content, reference)
    assert out.shape == content.shape
    assert dog_repeatability(content, out) > 0.6
    assert edge_ssim(content, out) > 0.75
    assert edge_ssim(content, out) > edge_ssim(content, raw) + 0.1  # the smoothing repairs the decoder
    assert colour_distances(out, reference)["w2"] < 0.6 * colour_distances(content, reference)["w2"]


@needs_data
def test_online_transform_is_deterministic_and_draws_references(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for path in (CONTENT, REFERENCE):
        shutil.copy(path, pool / path.name)
    content = photo(CONTENT, 96)
    stylizer = Stylizer({"references": {"image_dirs": [str(pool)], "night_probability": 0.0, "max_size": 64}})
    out1, src1 = stylizer(content, np.random.default_rng(7), exclude=pool / CONTENT.name)
    out2, src2 = stylizer(content, np.random.default_rng(7), exclude=pool / CONTENT.name)
    assert torch.equal(out1, out2) and src1 == src2 == str(pool / REFERENCE.name)
    night = Stylizer({"references": {"night_probability": 1.0, "max_size": 64}})
    out3, src3 = night(content, np.random.default_rng(7))
    assert src3.startswith("night:")
    assert out3.mean() < 0.6 * content.mean()  # night references darken
    with pytest.raises(ValueError, match="no photos"):
        _ = Stylizer().references


# offline command ----------------------------------------------------------------------------------


@needs_data
def test_offline_command_is_resumable_and_reports_bad_images(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for path in sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))[:3]:
        shutil.copy(path, src / "sub" / path.name)
    (src / "broken.jpg").write_bytes(CONTENT.read_bytes()[:3000])  # truncated JPEG
    out = tmp_path / "out"
    args = ["stylize", str(src), str(out), "--max-size", "64", "--smoothing", "guided", "--night-probability", "0.5"]
    assert cli_main(args) == 1
    printed = capsys.readouterr().out
    assert "3 written" in printed and "1 failed" in printed and "broken.jpg" in printed
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 3 and all(p.parent.name == "sub" and png_complete(p) for p in pngs)
    manifest = read_manifest(out / "manifest.jsonl")
    assert sorted(manifest) == sorted(p.relative_to(out).as_posix() for p in pngs)
    assert all(m["reference"] != f"sub/{Path(m['content']).name}" for m in manifest.values())
    first = {p: p.read_bytes() for p in pngs}
    mtimes = {p: p.stat().st_mtime_ns for p in pngs}
    # rerun: nothing redone; a truncated output is detected and rewritten identically
    pngs[0].write_bytes(first[pngs[0]][:-20])
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write('{"output": "torn')
    (src / "broken.jpg").unlink()
    assert cli_main(args) == 0
    assert "1 written, 2 already complete" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in pngs} == first
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in pngs[1:])
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["output"].endswith(".png") for line in lines)


@needs_data
@pytest.mark.slow
def test_offline_command_gives_the_same_files_with_parallel_workers(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for path in sorted((DATA / "sacre_coeur" / "mapping").glob("*.jpg"))[:2]:
        shutil.copy(path, src / path.name)
    conf = {"smoothing": "matting", "references": {"night_probability": 0.3}}
    one = stylize_folder(src, tmp_path / "one", conf, copies=2, workers=1, max_size=48)
    two = stylize_folder(src, tmp_path / "two", conf, copies=2, workers=2, max_size=48)
    assert sorted(one.written) == sorted(two.written) and len(one.written) == 4
    for name in one.written:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert not png_complete(tmp_path / "one" / "missing.png")


# measures and training configs --------------------------------------------------------------------


@needs_data
def test_measures_respond_to_what_they_measure():
    image = photo(CONTENT, 160)
    pts = torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) * 100
    assert repeatability(pts, pts) == 1.0
    assert repeatability(pts, pts + 3.0, threshold=2.0) < 0.2
    assert edge_ssim(image, image) == pytest.approx(1.0, abs=1e-5)
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    assert edge_ssim(image, noise) < 0.3
    assert colour_distances(image, image)["w2"] == pytest.approx(0.0, abs=1e-3)
    shifted = colour_distances(image, (image * torch.tensor([1.0, 0.8, 0.5])[:, None, None]))
    assert shifted["w2"] > 5 and shifted["sw1"] > 2
    assert dog_repeatability(image, image) == 1.0


def test_training_configs_load_with_overrides_and_reject_unknown_tasks(tmp_path):
    conf = load_train_config("stylizer_ae", ["train.steps=7"])
    assert conf.task == "stylizer_ae" and conf.train.steps == 7
    with pytest.raises(ConfigError, match="key=value"):
        load_train_config("stylizer_ae", ["train.steps"])
    with pytest.raises(FileNotFoundError, match="stylizer_ae"):
        load_train_config("no_such_config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: unknown\n")
    with pytest.raises(ConfigError, match="unknown"):
        run_task(load_train_config(bad))
