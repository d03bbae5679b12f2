"""HyNet model and the DoG + HyNet extractor."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.dog import detect_dog
from hloc_hndesc.features.hynet import HyNetExtractor, extract_patches
from hloc_hndesc.models.hynet import HyNet, build_hynet
from hloc_hndesc.weights import NoWeightsError, WeightsError, read_registry, save_checkpoint, shipped_weights


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hynet") / "hynet.pth"
    save_checkpoint(build_hynet(), path, {"model": "hynet", "note": "random weights for tests"})
    return path


@pytest.fixture(scope="module")
def photo(sacre_coeur: Path) -> torch.Tensor:
    """A real grey photo, longer side 320 px, as (1, 1, H, W) float in [0, 1]."""
    image = cv2.imread(str(sorted(sacre_coeur.glob("*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    scale = 320 / max(image.shape)
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]


def smooth_texture(size: int = 128, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.random((1, 1, size // 8, size // 8)).astype(np.float32))
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------- model


def test_model_layout_and_init():
    net = build_hynet()
    state = net.state_dict()
    assert len(state) == 44
    assert "layer7.1.weight" in state and state["layer7.1.weight"].shape == (128, 128, 8, 8)
    taus = [p for n, p in net.named_parameters() if n.endswith("tau")]
    assert len(taus) == 7 and all(torch.all(t == -1.0) for t in taus)
    assert net.layer7[0].p == pytest.approx(0.3)


@pytest.mark.parametrize("batch", [1, 5])
def test_model_shapes_unit_norm_and_determinism(batch):
    torch.manual_seed(0)
    net = build_hynet().eval()
    patches = torch.rand(batch, 1, 32, 32)
    with torch.no_grad():
        a = net(patches)
        b = net(patches)
        desc, norms = net.forward_with_norms(patches)
        raw = net.raw_descriptors(patches)
    assert a.shape == (batch, 128) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=1), torch.ones(batch))
    assert torch.equal(a, b)
    torch.testing.assert_close(desc, a)
    torch.testing.assert_close(norms, raw.norm(dim=1))
    assert (norms > 0).all() and not torch.allclose(norms, torch.ones(batch))


def test_model_rejects_wrong_patch_size():
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        build_hynet().raw_descriptors(torch.rand(2, 1, 64, 64))


def test_model_gradient_flow():
    torch.manual_seed(0)
    net = build_hynet().train()
    patches = torch.rand(6, 1, 32, 32)
    desc, norms = net.forward_with_norms(patches)
    loss = (desc @ desc.T).triu(1).sum() + ((norms - 1) ** 2).mean()
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if name == "layer1.1.tau":
            # the first TLU sees FRN(patch) >= 0 for non-negative patches: never below tau = -1.
            continue
        assert param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- extractor


def test_default_weights_are_the_shipped_checkpoint():
    entry = read_registry().get("hynet")
    if entry is None:
        with pytest.raises(NoWeightsError, match="hynet"):
            HyNetExtractor()
        return
    extractor = HyNetExtractor({"max_keypoints": 10})
    assert extractor.weights_path == shipped_weights("hynet") == entry.path
    saved = torch.load(entry.path, weights_only=True)["state_dict"]
    for key, value in extractor.net.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert entry.card_path.is_file() and "train_natural" in entry.card_path.read_text()


def test_checkpoint_loads(checkpoint):
    extractor = HyNetExtractor({"max_keypoints": 10}, weights=checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    for key, value in extractor.net.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert extractor.weights_path == checkpoint
    assert not extractor.net.training and not extractor.train().net.training


def test_bad_checkpoint_and_conf(tmp_path, checkpoint):
    path = tmp_path / "small.pth"
    save_checkpoint(HyNet(pretrained=False, dim_desc=64), path)
    with pytest.raises(WeightsError, match="does not fit"):
        HyNetExtractor(weights=path)
    with pytest.raises(ConfigError, match="peak_treshold"):
        HyNetExtractor({"dog": {"peak_treshold": 0.01}}, weights=checkpoint)
    with pytest.raises(ValueError, match="32x32"):
        HyNetExtractor({"patch_size": 64}, weights=checkpoint)


def test_real_photo_outputs(photo, checkpoint):
    extractor = HyNetExtractor({"max_keypoints": 150, "batch_size": 64}, weights=checkpoint)
    out = extractor(photo)
    n = 150
    assert out["keypoints"].shape == (n, 2) and out["keypoints"].dtype == torch.float32
    assert out["descriptors"].shape == (128, n) and out["descriptors"].dtype == torch.float32
    for key in ("scores", "scales", "oris"):
        assert out[key].shape == (n,) and out[key].dtype == torch.float32
    h, w = photo.shape[-2:]
    kp = out["keypoints"]
    assert (kp >= -0.5).all() and (kp[:, 0] <= w - 0.5).all() and (kp[:, 1] <= h - 0.5).all()
    torch.testing.assert_close(out["descriptors"].norm(dim=0), torch.ones(n))
    # the extractor cuts patches exactly as the public extract_patches, in any batch size.
    patches = extract_patches(photo, kp, out["scales"], out["oris"], 12.0, 32)
    with torch.no_grad():
        ref = extractor.net(patches).T
    torch.testing.assert_close(out["descriptors"], ref, atol=1e-5, rtol=1e-4)
    # the cap keeps the DoG keypoints of largest response.
    full = detect_dog(photo)
    assert full["keypoints"].shape[0] > n
    assert out["scores"].min() >= torch.sort(full["scores"], descending=True).values[n - 1] - 1e-7


def test_upright_and_empty(checkpoint, photo):
    extractor = HyNetExtractor({"max_keypoints": 40, "upright": True}, weights=checkpoint)
    out = extractor(photo)
    assert out["keypoints"].shape == (40, 2) and torch.all(out["oris"] == 0)
    for image in (torch.zeros(1, 1, 64, 64), torch.full((1, 1, 48, 80), 0.3)):
        empty = extractor(image)
        assert empty["keypoints"].shape == (0, 2) and empty["descriptors"].shape == (128, 0)
        assert empty["scores"].shape == (0,) and empty["scales"].shape == (0,) and empty["oris"].shape == (0,)
        assert empty["descriptors"].dtype == torch.float32


# ---------------------------------------------------------------- rotation equivariance of patches


def rotate_about_centre(image: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate counter-clockwise on screen by ``angle_deg`` about the image centre (bilinear)."""
    _, _, h, w = image.shape
    a = math.radians(angle_deg)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    # output p' = c + M (p - c), M = [[cos, sin], [-sin, cos]]; sample input at c + M^T (p' - c).
    dx, dy = xs - cx, ys - cy
    src_x = cx + math.cos(a) * dx - math.sin(a) * dy
    src_y = cy + math.sin(a) * dx + math.cos(a) * dy
    grid = torch.stack([2 * src_x / (w - 1) - 1, 2 * src_y / (h - 1) - 1], -1)[None].float()
    return F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=True)


def rotate_keypoints(kp: torch.Tensor, oris: torch.Tensor, angle_deg: float, w: int, h: int):
    a = math.radians(angle_deg)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    dx, dy = kp[:, 0] - cx, kp[:, 1] - cy
    new = torch.stack([cx + math.cos(a) * dx + math.sin(a) * dy, cy - math.sin(a) * dx + math.cos(a) * dy], -1)
    # pycolmap's angle is measured with y down (clockwise on screen): a CCW turn subtracts.
    return new, oris - angle_deg


def test_patch_rotation_equivariance_exact_90():
    image = smooth_texture(128)
    rotated = torch.rot90(image, k=1, dims=(2, 3))  # counter-clockwise on screen
    g = torch.Generator().manual_seed(1)
    n = 32
    kp = 40 + 48 * torch.rand(n, 2, generator=g)
    scales = 1 + 3 * torch.rand(n, generator=g)  # patch side <= 48 px: pyramid level 0
    oris = 360 * torch.rand(n, generator=g) - 180
    kp_rot = torch.stack([kp[:, 1], 127 - kp[:, 0]], -1)  # rot90: (x, y) -> (y, W-1-x)
    ref = extract_patches(image, kp, scales, oris)
    got = extract_patches(rotated, kp_rot, scales, oris - 90)
    assert ref.shape == (n, 1, 32, 32)
    assert (got - ref).abs().max() < 1e-4
    # the opposite sign convention would not give the same patches.
    wrong = extract_patches(rotated, kp_rot, scales, oris + 90)
    assert (wrong - ref).abs().mean() > 20 * (got - ref).abs().mean() + 1e-3


def test_patch_rotation_equivariance_35_degrees():
    image = smooth_texture(160, seed=3)
    angle = 35.0
    rotated = rotate_about_centre(image, angle)
    g = torch.Generator().manual_seed(2)
    n = 32
    kp = 60 + 40 * torch.rand(n, 2, generator=g)
    scales = 1.5 + 1.5 * torch.rand(n, generator=g)
    oris = 360 * torch.rand(n, generator=g) - 180
    kp_rot, oris_rot = rotate_keypoints(kp, oris, angle, 160, 160)
    ref = extract_patches(image, kp, scales, oris)
    got = extract_patches(rotated, kp_rot, scales, oris_rot)
    wrong = extract_patches(rotated, kp_rot, scales, oris + angle)
    err, err_wrong = (got - ref).abs().mean(), (wrong - ref).abs().mean()
    assert err < 0.01 and err_wrong > 5 * err


def test_pycolmap_orientation_convention():
    """DoG on a rot90 image: same keypoints, moved, with pycolmap orientation minus 90 deg."""
    image = smooth_texture(160, seed=5)
    rotated = torch.rot90(image, k=1, dims=(2, 3))
    a, b = detect_dog(image, max_keypoints=300), detect_dog(rotated, max_keypoints=300)
    expected = torch.stack([a["keypoints"][:, 1], 159 - a["keypoints"][:, 0]], -1)
    dist = torch.cdist(expected, b["keypoints"], compute_mode="donot_use_mm_for_euclid_dist")
    # keypoints at one location carry up to two orientations: compare the best orientation match.
    close = dist < 0.3
    assert close.any(dim=1).float().mean() > 0.8
    diff = (b["oris"][None, :] - (a["oris"][:, None] - 90) + 180) % 360 - 180
    best = torch.where(close, diff.abs(), torch.full_like(diff, 1e9)).min(dim=1).values
    best = best[close.any(dim=1)]
    assert best.median() < 2.0 and (best < 10).float().mean() > 0.8
    # with the opposite convention (+90), orientations would not agree.
    diff_wrong = (b["oris"][None, :] - (a["oris"][:, None] + 90) + 180) % 360 - 180
    wrong = torch.where(close, diff_wrong.abs(), torch.full_like(diff, 1e9)).min(dim=1).values
    assert wrong[close.any(dim=1)].median() > 20
