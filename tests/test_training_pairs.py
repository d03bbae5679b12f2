"""Pair synthesis for self-supervised training: photo pool, homographies, photometric change, pairs."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hloc_hndesc.config import ConfigError
from hloc_hndesc.evaluation.splits import SplitError
from hloc_hndesc.io import ImageReadError
from hloc_hndesc.training.data.homography import (
    correspondence_mask,
    coverage,
    sample_homography,
    translation,
    warp_image,
    warp_points,
)
from hloc_hndesc.training.data.pairs import PairDataset, _downscale_to_target
from hloc_hndesc.training.data.photometric import (
    OPERATIONS,
    apply_photometric,
    photometric,
    photometric_conf,
    sample_photometric,
)
from hloc_hndesc.training.data.photos import PhotoPool

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train_natural"
NO_PHOTOMETRIC = {"enabled": False}
CHEAP_STYLE = {
    "smoothing": "none",
    "local_weight": 0.0,
    "regions": 1,
    "references": {"max_size": 32, "night_probability": 0.5},
}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as in a DataLoader worker (small tensors on 2 shared cores are slower with more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour texture, uint8 (h, w, 3)."""
    coarse = rng.random((h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture
def photo_root(tmp_path: Path) -> Path:
    """train_natural/{tum_freiburg: 4 frames of one scene, misc: 9 photos (one smaller than a crop)}."""
    root = tmp_path / "train_natural"
    rng = np.random.default_rng(0)
    for sub, count in (("tum_freiburg", 4), ("misc", 9)):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            h, w = (30, 40) if (sub, i) == ("misc", 8) else (72, 96)
            cv2.imwrite(str(root / sub / f"{i:03d}.png"), _texture(rng, h, w))
    return root


def _pairs(root: Path, split: str = "train", **conf) -> PairDataset:
    base = {"image_dirs": [str(root)], "crop": 48, "val_fraction": 0.2, "stylize_probability": 0.0}
    return PairDataset({**base, **conf}, split=split)


# --------------------------------------------------------------------------- homographies


def test_warp_image_matches_warp_points_exactly_on_a_linear_ramp():
    """kornia's warp (align_corners=True) samples the source where warp_points says (centres at integers)."""
    h, w = 40, 56
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ramp = torch.stack([xs, ys])[None]
    H = sample_homography(np.random.default_rng(3), (h, w), {"difficulty": 0.6}, size1=(36, 44))
    out = warp_image(ramp, H, (36, 44))[0]
    mask = correspondence_mask(H, (h, w), (36, 44))
    assert mask.mean() > 0.25
    src = out.permute(1, 2, 0).reshape(-1, 2).double().numpy()[mask.ravel()]
    y1, x1 = np.nonzero(mask)
    err = np.abs(warp_points(H, src) - np.stack([x1, y1], -1))
    assert err.max() < 1e-3


def _checkerboard(size: int, period: float, corner: float) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    s = np.sin((xs - corner) * math.pi / period) * np.sin((ys - corner) * math.pi / period)
    return (0.5 + 0.5 * np.tanh(s)).astype(np.float32)


def _saddle(image: np.ndarray, guess: np.ndarray, r: int = 2) -> np.ndarray:
    """Sub-pixel checkerboard corner: stationary point of a quadratic fitted around ``guess``."""
    cx, cy = int(round(guess[0])), int(round(guess[1]))
    ys, xs = np.mgrid[cy - r : cy + r + 1, cx - r : cx + r + 1]
    x, y = (xs - cx).ravel().astype(float), (ys - cy).ravel().astype(float)
    A = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], 1)
    c = np.linalg.lstsq(A, image[ys, xs].ravel().astype(float), rcond=None)[0]
    d = np.linalg.solve(np.array([[2 * c[3], c[4]], [c[4], 2 * c[5]]]), -c[1:3])
    return np.array([cx + d[0], cy + d[1]])


def test_warped_checkerboard_corner_lands_where_warp_points_says():
    board = torch.from_numpy(_checkerboard(128, 16, 63.5))[None, None]
    errors, other_convention = [], []
    for seed in range(12):
        H = sample_homography(np.random.default_rng(seed), (128, 128), {"difficulty": 0.4, "translation": 0.0})
        pred = warp_points(H, np.array([63.5, 63.5]))
        found = _saddle(warp_image(board, H, (128, 128))[0, 0].numpy(), pred)
        errors.append(np.linalg.norm(found - pred))
        # the same warp done in the corner convention (pixel centres at +0.5) misses by ~0.5 px
        H_corner = translation(0.5, 0.5) @ H @ translation(-0.5, -0.5)
        found = _saddle(warp_image(board, H_corner, (128, 128))[0, 0].numpy(), pred)
        other_convention.append(np.linalg.norm(found - pred))
    assert max(errors) < 0.05
    assert np.mean(other_convention) > 0.2


def test_warp_points_numpy_torch_and_inverse():
    H = sample_homography(np.random.default_rng(1), (64, 64))
    pts = np.random.default_rng(2).uniform(0, 63, (50, 2))
    out = warp_points(H, pts)
    assert isinstance(out, np.ndarray)
    out_t = warp_points(torch.from_numpy(H), torch.from_numpy(pts))
    assert isinstance(out_t, torch.Tensor)
    assert np.allclose(out_t.numpy(), out, atol=1e-9)
    assert np.allclose(warp_points(np.linalg.inv(H), out), pts, atol=1e-6)
    behind = np.array([[1, 0, 0], [0, 1, 0], [-1.0, 0, 10]])  # w <= 0 for x >= 10
    assert np.isnan(warp_points(behind, np.array([[20.0, 1.0]]))).all()


def test_correspondence_mask_border():
    """Image1 = image0 shifted right by 10.3 px: valid columns are exactly 11..39 (pre-image in [0, 29])."""
    H = translation(10.3, 0.0)
    mask = correspondence_mask(H, (20, 30), (20, 50))
    assert mask.shape == (20, 50) and mask.dtype == bool
    cols = np.nonzero(mask.all(0))[0]
    assert cols[0] == 11 and cols[-1] == 39 and not mask[:, :11].any() and not mask[:, 40:].any()
    mask_t = correspondence_mask(torch.from_numpy(H), (20, 30), (20, 50))
    assert isinstance(mask_t, torch.Tensor) and torch.equal(mask_t, torch.from_numpy(mask))
    # vertical: shift down by -0.2 -> row 19 maps to 19.2 > 19, invalid; row 0 maps to 0.2, valid
    mask = correspondence_mask(translation(0.0, -0.2), (20, 30), (20, 30))
    assert mask[0].all() and not mask[19].any()


def _centre_jacobian(H: np.ndarray, size: int) -> np.ndarray:
    c = (size - 1) / 2
    eps = 1e-3
    pts = np.array([[c, c], [c + eps, c], [c, c + eps]])
    q = warp_points(H, pts)
    return np.stack([(q[1] - q[0]) / eps, (q[2] - q[0]) / eps], 1)


def test_homography_difficulty_grades_rotation_scale_and_tilt():
    size = 128
    conf = {"rotation": 90.0, "scale": 2.0, "tilt": 50.0, "translation": 0.1, "min_coverage": 0.0}
    identity = sample_homography(np.random.default_rng(0), (size, size), {**conf, "difficulty": 0.0})
    assert np.allclose(identity, np.eye(3), atol=1e-12)
    stats = []
    for d in (0.2, 0.5, 1.0):
        rng = np.random.default_rng(7)
        rot, scale, aniso = [], [], []
        for _ in range(200):
            J = _centre_jacobian(sample_homography(rng, (size, size), {**conf, "difficulty": d}), size)
            rot.append(abs(math.atan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1])))
            scale.append(abs(0.5 * math.log(abs(np.linalg.det(J)))))
            sv = np.linalg.svd(J, compute_uv=False)
            aniso.append(1 - sv[1] / sv[0])
        stats.append((np.mean(rot), np.mean(scale), np.mean(aniso), np.max(rot)))
    for a, b in zip(stats, stats[1:]):
        assert b[0] > 1.5 * a[0] and b[1] > 1.5 * a[1] and b[2] > 1.5 * a[2]
    assert stats[0][3] <= math.radians(0.2 * 90) + 1e-6  # the rotation range shrinks with difficulty
    assert stats[2][3] > math.radians(80)


def test_homography_keeps_min_coverage_and_positive_depth():
    rng = np.random.default_rng(5)
    for _ in range(100):
        H = sample_homography(rng, (64, 64), {"min_coverage": 0.4, "tilt": 70.0})
        assert coverage(H, (64, 64), (64, 64)) >= 0.4
        corners = np.array([[-0.5, -0.5], [63.5, -0.5], [63.5, 63.5], [-0.5, 63.5]])
        assert np.isfinite(warp_points(H, corners)).all()
        assert np.isfinite(warp_points(np.linalg.inv(H), corners)).all()
    # an impossible demand still returns a valid (shrunk, finally centred identity) homography
    H = sample_homography(rng, (64, 64), {"min_coverage": 1.0, "translation": 1.0, "max_tries": 6})
    assert coverage(H, (64, 64), (64, 64)) == 1.0
    with pytest.raises(ConfigError, match="difficulty"):
        sample_homography(rng, (64, 64), {"difficulty": 1.5})
    with pytest.raises(ConfigError, match="unknown config key"):
        sample_homography(rng, (64, 64), {"rotaton": 10.0})


# --------------------------------------------------------------------------- photometric


def test_photometric_ranges_and_probabilities():
    always = photometric_conf({name: {"p": 1.0} for name in OPERATIONS})
    values = {name: [] for name in OPERATIONS}
    for seed in range(400):
        params = sample_photometric(always, seed)
        assert set(OPERATIONS) <= set(params)
        for name in OPERATIONS:
            values[name].append(params[name][0] if name == "motion_blur" else params[name])
    for name in OPERATIONS:
        lo, hi = always[name]["range"]
        v = np.array(values[name], dtype=float)
        assert v.min() >= lo and v.max() <= hi, name
        assert v.max() - v.min() > 0.6 * (hi - lo), name  # the range is used, not one value
    assert all(int(k) % 2 == 1 for k in values["motion_blur"])
    default = photometric_conf()
    counts = dict.fromkeys(OPERATIONS, 0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        for name in sample_photometric(default, gen):
            if name in counts:
                counts[name] += 1
    for name in OPERATIONS:
        assert abs(counts[name] / 2000 - default[name]["p"]) < 0.04, name


def test_photometric_effects_and_determinism():
    image = torch.from_numpy(_texture(np.random.default_rng(1), 64, 64)).permute(2, 0, 1)[None].float() / 255
    image = 0.25 + 0.5 * image  # no clipping for the checks below
    assert torch.allclose(apply_photometric(image, {"brightness": 0.1}), image + 0.1, atol=1e-6)
    assert torch.allclose(apply_photometric(image, {"gamma": 1.3}), image**1.3, atol=1e-5)
    grey = lambda x: (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean()  # noqa: E731
    contrasted = apply_photometric(image, {"contrast": 1.4})
    assert abs(grey(contrasted) - grey(image)) < 1e-4 and contrasted.std() > 1.3 * image.std()
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = apply_photometric(flat, {"noise": 0.02, "noise_seed": 3})
    assert abs((noisy - flat).std().item() - 0.02) < 0.002
    jpeg = apply_photometric(image, {"jpeg": 40})
    assert 0 < (jpeg - image).abs().mean() < 0.05
    conf = photometric_conf()
    a, pa = photometric(image, conf, 11)
    b, pb = photometric(image, conf, torch.Generator().manual_seed(11))
    assert pa == pb and torch.equal(a, b)
    c, pc = photometric(image, conf, 12)
    assert pc != pa or not torch.equal(a, c)
    off, params = photometric(image, photometric_conf(NO_PHOTOMETRIC), 11)
    assert params == {} and torch.equal(off, image)
    for bad, match in (
        ({"brightness": {"p": 1.5}}, "brightness.p"),
        ({"contrast": {"range": [1.5, 0.5]}}, "contrast.range"),
        ({"hue": {"range": [-4.0, 0.0]}}, "hue.range"),
        ({"sharpness": {"p": 0.1}}, "unknown config key"),
    ):
        with pytest.raises(ConfigError, match=match):
            photometric_conf(bad)


# --------------------------------------------------------------------------- photo pool


def test_pool_names_groups_and_validation_split(photo_root: Path):
    pool = PhotoPool({"image_dirs": [str(photo_root)], "val_fraction": 0.3}, split="all")
    assert len(pool) == 13 and pool.names == sorted(pool.names)
    assert all(n.startswith("train_natural/") for n in pool.names)
    tum = {g for n, g in zip(pool.names, pool.groups) if "/tum_freiburg/" in n}
    others = [g for n, g in zip(pool.names, pool.groups) if "/tum_freiburg/" not in n]
    assert len(tum) == 1 and len(set(others)) == len(others) == 9 and not tum & set(others)
    assert pool.num_groups == 10
    train = PhotoPool({"image_dirs": [str(photo_root)], "val_fraction": 0.3}, split="train")
    val = PhotoPool({"image_dirs": [str(photo_root)], "val_fraction": 0.3}, split="val")
    assert set(train.groups).isdisjoint(val.groups) and len(val) > 0
    assert sorted(train.names + val.names) == pool.names
    assert sorted(set(val.groups)) == val.val_groups == pool.val_groups
    # grouping off: every photo its own group
    single = PhotoPool({"image_dirs": [str(photo_root)], "scene_folders": []}, split="all")
    assert len(set(single.groups)) == 13
    # scene folder given directly as the image folder: its photos form one group
    direct = PhotoPool({"image_dirs": [str(photo_root / "tum_freiburg")], "val_fraction": 0.0}, split="all")
    assert len(set(direct.groups)) == 1 and direct.names[0].startswith("tum_freiburg/")


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/train_natural not present")
def test_pool_on_the_real_training_photos():
    conf = {"image_dirs": [str(REAL)]}
    train, val = PhotoPool(conf, "train"), PhotoPool(conf, "val")
    assert len(train) + len(val) == 497
    assert set(train.groups).isdisjoint(val.groups) and 5 <= len(val) <= 60
    tum = {g for pool in (train, val) for n, g in zip(pool.names, pool.groups) if "tum_freiburg" in n}
    assert len(tum) == 1 and train.num_groups == 497 - 17 + 1


def test_pool_refuses_evaluation_folders(tmp_path: Path):
    folder = tmp_path / "strecha" / "images"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "0000.png"), _texture(np.random.default_rng(0), 32, 32))
    with pytest.raises(SplitError, match="evaluation"):
        PhotoPool({"image_dirs": [str(folder)]})
    train = tmp_path / "train_natural" / "mine"
    train.mkdir(parents=True)
    cv2.imwrite(str(train / "0.png"), _texture(np.random.default_rng(1), 32, 32))
    assert len(PhotoPool({"image_dirs": [str(train)], "val_fraction": 0.0})) == 1
    with pytest.raises(SplitError):
        PairDataset({"image_dirs": [str(tmp_path / "train_natural" / "strecha")]})
    with pytest.raises(SplitError):  # style references are training photos too
        PairDataset({"image_dirs": [str(train)], "stylization": {"references": {"image_dirs": [str(folder)]}}})
    with pytest.raises(ConfigError, match="image_dirs is empty"):
        PhotoPool({"image_dirs": []})


def test_pool_bad_images(photo_root: Path, caplog: pytest.LogCaptureFixture):
    bad = photo_root / "misc" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9")
    lazy = PhotoPool({"image_dirs": [str(photo_root)]}, split="all")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        lazy.load(lazy.names.index("train_natural/misc/broken.jpg"))
    package_logger = logging.getLogger("hloc_hndesc")  # does not propagate: listen to it directly
    package_logger.addHandler(caplog.handler)
    try:
        checked = PhotoPool({"image_dirs": [str(photo_root)], "check_images": True}, split="all")
    finally:
        package_logger.removeHandler(caplog.handler)
    assert "train_natural/misc/broken.jpg" not in checked.names and len(checked) == 13
    assert [n for n, _ in checked.skipped] == ["train_natural/misc/broken.jpg"]
    assert "broken.jpg" in caplog.text
    preloaded = PhotoPool({"image_dirs": [str(photo_root)], "preload": True}, split="all")
    assert len(preloaded) == 13 and np.array_equal(preloaded.load(0), checked.load(0))
    assert preloaded.load(0).dtype == np.uint8 and preloaded.load(0).shape == (72, 96, 3)


# --------------------------------------------------------------------------- pairs


def _sample_bilinear(image: torch.Tensor, pts: np.ndarray) -> torch.Tensor:
    """Values of ``image`` (3, H, W) at points (N, 2), pixel centres at integers."""
    h, w = image.shape[-2:]
    grid = torch.from_numpy(pts).float().clone()
    grid[:, 0] = grid[:, 0] / (w - 1) * 2 - 1
    grid[:, 1] = grid[:, 1] / (h - 1) * 2 - 1
    return F.grid_sample(image[None], grid[None, None], align_corners=True)[0, :, 0].T


def _content_error(item: dict, H: np.ndarray) -> float:
    """Mean |image0(p) - image1(H p)| over image0 pixels whose correspondence lies in image1."""
    S = item["image0"].shape[-1]
    ys, xs = np.nonzero(item["valid0"][0].numpy())
    p0 = np.stack([xs, ys], -1).astype(np.float64)
    v1 = _sample_bilinear(item["image1"], warp_points(H, p0))
    return (item["image0"][:, ys, xs].T - v1).abs().mean().item() if len(p0) > S else float("nan")


@pytest.fixture
def textured_root(tmp_path: Path) -> Path:
    """Two real photos when the training data is present, else two synthetic textures."""
    root = tmp_path / "train_natural" / "real"
    root.mkdir(parents=True)
    sources = sorted((REAL / "urban100").glob("*.jpg"))[:2] if REAL.is_dir() else []
    for i, src in enumerate(sources):
        shutil.copy(src, root / f"{i}{src.suffix}")
    if not sources:
        for i in range(2):
            cv2.imwrite(str(root / f"{i}.png"), _texture(np.random.default_rng(i), 300, 400))
    return root


def test_pair_geometry_is_exact_on_a_textured_photo(textured_root: Path):
    """image0 content reappears in image1 at warp_points(H_0to1, .), with and without zoom."""
    conf = {
        "image_dirs": [str(textured_root)],
        "crop": 128,
        "max_size": 256,
        "val_fraction": 0.0,
        "photometric": NO_PHOTOMETRIC,
        "stylize_probability": 0.0,
        "homography": {"scale": 1.0, "tilt": 30.0},
    }
    shifts = [(dx, dy) for dx in (-0.4, 0.0, 0.4) for dy in (-0.4, 0.0, 0.4)]
    for hom in ({"scale": 1.0, "tilt": 30.0}, {"scale": 1.6, "rotation": 30.0, "tilt": 20.0}):
        ds = PairDataset({**conf, "homography": hom})
        for key in ((0, 0), (1, 1), (2, 0), (3, 1)):
            item = ds[key]
            assert item["valid1"].float().mean() >= 0.25
            H = item["H_0to1"].numpy()
            # residual = interpolation only: smallest at the true H among sub-pixel shifts of it
            errors = {s: _content_error(item, translation(*s) @ H) for s in shifts}
            assert min(errors, key=errors.get) == (0.0, 0.0), (hom, key, errors)
            assert errors[(0.0, 0.0)] < 0.05
            assert _content_error(item, translation(1.5, -1.0) @ H) > 1.5 * errors[(0.0, 0.0)]


def test_downscaled_region_keeps_the_geometry():
    """Area-downscaling the source before the warp changes nothing for a linear image."""
    h, w = 160, 170
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.stack([xs / w, ys / h, np.zeros_like(xs)], -1)
    H = translation(31.5, 31.5) @ np.diag([0.45, 0.45, 1.0]) @ translation(-79.5, -79.5)
    corners = np.array([[-0.5, -0.5], [63.5, -0.5], [63.5, 63.5], [-0.5, 63.5]])
    small, H_small = _downscale_to_target(ramp, H, warp_points(np.linalg.inv(H), corners))
    assert small.shape[0] < 0.5 * h
    direct = warp_image(torch.from_numpy(ramp).permute(2, 0, 1)[None], H, (64, 64))
    via_small = warp_image(torch.from_numpy(small).permute(2, 0, 1)[None], H_small, (64, 64))
    inner = (slice(None), slice(None), slice(2, 62), slice(2, 62))
    # channel 0 is x / w: compare in pixels (OpenCV's fractional area weights are off by < 0.05 px)
    assert ((direct[inner] - via_small[inner]).abs()[:, :2] * w).max() < 0.05


def test_pairs_are_deterministic_functions_of_seed_epoch_index(photo_root: Path):
    conf = {"stylize_probability": 0.5, "stylization": CHEAP_STYLE}
    a, b = _pairs(photo_root, **conf), _pairs(photo_root, **conf)
    for key in ((0, 2), (3, 2), (1, 7)):
        x, y = a[key], b[key]
        for k in ("image0", "image1", "H_0to1", "valid0", "valid1"):
            assert torch.equal(x[k], y[k]), (key, k)
        assert (x["stylized"], x["group"], x["name"]) == (y["stylized"], y["group"], y["name"])
    assert torch.equal(a[2]["image1"], a[(0, 2)]["image1"])
    e0, e1 = a[(0, 2)], a[(1, 2)]
    assert e0["name"] == e1["name"]  # same photo, another draw
    assert not torch.equal(e0["H_0to1"], e1["H_0to1"]) and not torch.equal(e0["image1"], e1["image1"])
    other_seed = _pairs(photo_root, seed=1, **conf)[(0, 2)]
    assert not torch.equal(other_seed["H_0to1"], e0["H_0to1"])
    item = e0
    S = 48
    assert item["image0"].shape == item["image1"].shape == (3, S, S) and item["image1"].dtype == torch.float32
    assert item["H_0to1"].dtype == torch.float64 and item["valid1"].shape == (1, S, S)
    assert item["valid1"].dtype == torch.bool and 0 <= item["image1"].min() and item["image1"].max() <= 1
    assert torch.equal(item["valid1"][0], correspondence_mask(item["H_0to1"], (S, S), (S, S)))
    with pytest.raises(IndexError):
        a[(0, len(a))]


def test_pairs_through_a_dataloader_with_workers(photo_root: Path):
    """Workers need no random state: batches equal direct indexing, and default_collate works."""
    ds = _pairs(photo_root)
    keys = [(4, i) for i in (5, 0, 3, 1)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=keys, num_workers=2)
    batches = list(loader)
    assert batches[0]["image0"].shape == (2, 3, 48, 48) and batches[0]["H_0to1"].shape == (2, 3, 3)
    got = torch.cat([b["image1"] for b in batches])
    want = torch.stack([ds[k]["image1"] for k in keys])
    assert torch.equal(got, want)
    assert [int(g) for b in batches for g in b["group"]] == [ds[k]["group"] for k in keys]


def test_stylization_frequency_and_geometry(photo_root: Path):
    ds = _pairs(photo_root, crop=32, stylize_probability=0.3, stylization=CHEAP_STYLE, photometric=NO_PHOTOMETRIC)
    plain = _pairs(photo_root, crop=32, stylize_probability=0.0, photometric=NO_PHOTOMETRIC)
    n = 800
    flags = [ds[(e, i)]["stylized"] for e in range(n // len(ds) + 1) for i in range(len(ds))][:n]
    assert abs(np.mean(flags) - 0.3) < 0.05  # binomial sd 0.016
    key = next((e, i) for e in range(5) for i in range(len(ds)) if ds[(e, i)]["stylized"])
    styled, base = ds[key], plain[key]
    assert torch.equal(styled["H_0to1"], base["H_0to1"]) and torch.equal(styled["image0"], base["image0"])
    assert not torch.equal(styled["image1"], base["image1"])
    # the reference is never the photo itself
    refs = []
    stylizer = ds.stylizer
    original = stylizer.references.sample
    stylizer.references.sample = lambda rng, aspect, exclude: refs.append(exclude) or original(rng, aspect, exclude)
    ds[key]
    assert refs and Path(refs[0]).name == Path(styled["name"]).name


def test_pair_splits_and_small_photos(photo_root: Path):
    train = PairDataset({"image_dirs": [str(photo_root)], "crop": 48, "val_fraction": 0.3}, split="train")
    val = PairDataset({"image_dirs": [str(photo_root)], "crop": 48, "val_fraction": 0.3}, split="val")
    train_groups = {train[i]["group"] for i in range(len(train))}
    val_groups = {val[i]["group"] for i in range(len(val))}
    assert train_groups and val_groups and train_groups.isdisjoint(val_groups)
    assert val_groups <= set(val.pool.val_groups)
    everything = PairDataset({"image_dirs": [str(photo_root)], "crop": 48, "val_fraction": 0.0, "items_per_epoch": 30})
    assert len(everything) == 30
    small = everything.pool.names.index("train_natural/misc/008.png")  # 40x30 photo, crop 48: upscaled
    assert everything[small]["image0"].shape == (3, 48, 48)
    assert everything[small + len(everything.pool)]["name"] == "train_natural/misc/008.png"
    with pytest.raises(ConfigError, match="unknown config key"):
        PairDataset({"image_dirs": [str(photo_root)], "crops": 48})
    with pytest.raises(ConfigError, match="stylize_probability"):
        PairDataset({"image_dirs": [str(photo_root)], "stylize_probability": 2.0})
