"""R2D2-family network and multi-scale extractor (random weights, small images)."""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hloc_hndesc.features.r2d2 as r2d2_features
from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.base import imagenet_normalize
from hloc_hndesc.features.r2d2 import R2D2Extractor, pyramid_scales
from hloc_hndesc.models.r2d2 import (
    R2D2Arch,
    R2D2ArchError,
    R2D2Net,
    arch_from_checkpoint,
    parse_official_net_name,
    r2d2_from_official_checkpoint,
)
from hloc_hndesc.weights import NoWeightsError, WeightsError, read_registry, save_checkpoint, shipped_weights

OFFICIAL_KEYS_FULL = {f"ops.{i}.weight" for i in (0, 3, 6, 9, 12, 15, 18, 20, 22)}
OFFICIAL_BN_FULL = {f"ops.{i}.running_mean" for i in (1, 4, 7, 10, 13, 16, 19, 21)}


def _net(variant: str = "full", mchan: int = 4, seed: int = 0) -> R2D2Net:
    torch.manual_seed(seed)
    net = R2D2Net(variant, mchan)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _official_file(path: Path, net: R2D2Net, name: str, **extra) -> Path:
    state = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"net": name, "state_dict": state, **extra}, path)
    return path


@pytest.fixture(scope="module")
def rgb(sacre_coeur) -> np.ndarray:
    """A real photo, 256 px longer side, float32 RGB in [0, 1]."""
    image = cv2.imread(str(sorted(sacre_coeur.glob("*.jpg"))[0]), cv2.IMREAD_COLOR)[..., ::-1]
    scale = 256 / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def ckpt_full(tmp_path_factory) -> Path:
    net = _net("full", 2)
    path = tmp_path_factory.mktemp("r2d2") / "full.pth"
    save_checkpoint(net, path, meta=net.arch.as_meta())
    return path


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("variant,size,out", [("full", (37, 50), (37, 50)), ("slim", (37, 51), (36, 50))])
def test_shapes_dtype_and_layout(variant, size, out):
    net = _net(variant, 1)
    for batch in (1, 2):
        res = net(torch.randn(batch, 3, *size))
        assert res["descriptors"].shape == (batch, 128, *out)
        assert res["raw_descriptors"].shape == (batch, 128, *out)
        assert res["reliability"].shape == res["repeatability"].shape == (batch, 1, *out)
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in res.values())
    keys = set(net.state_dict())
    if variant == "full":
        assert OFFICIAL_KEYS_FULL | OFFICIAL_BN_FULL <= keys and len(keys) == 46
    else:
        assert {"ops.10.weight", "ops.23.weight", "ops.22.running_var"} <= keys and "ops.9.weight" not in keys
    assert not any(m.affine for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_eval_determinism_ranges_and_unit_norm():
    net = _net("full", 1)
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        a, b = net(x), net(x)
    for key in a:
        assert torch.equal(a[key], b[key])
    for key in ("reliability", "repeatability"):
        assert a[key].min() >= 0 and a[key].max() <= 1
        assert a[key].std() > 0
    norms = a["descriptors"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    torch.testing.assert_close(a["descriptors"], torch.nn.functional.normalize(a["raw_descriptors"], dim=1))


def test_repeatability_is_softplus_ratio_and_reliability_softmax():
    net = _net("full", 1)
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        res = net(x)
        energy = res["raw_descriptors"] ** 2
        sp = torch.nn.functional.softplus(net.sal(energy))
        logits = net.clf(energy)
    torch.testing.assert_close(res["repeatability"], sp / (1 + sp))
    torch.testing.assert_close(res["reliability"], torch.sigmoid(logits[:, 1:2] - logits[:, :1]))


@pytest.mark.parametrize("variant", ["full", "slim"])
def test_gradient_reaches_every_parameter(variant):
    net = _net(variant, 1).train()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    res = net(x)
    loss = (res["descriptors"] * torch.randn_like(res["descriptors"])).sum()
    loss = loss + res["reliability"].sum() + res["repeatability"].sum()
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ------------------------------------------------------- official layout


@pytest.mark.parametrize(
    "name,variant,mchan", [("Quad_L2Net_ConfCFS()", "full", 4), ("Fast_Quad_L2Net_ConfCFS()", "slim", 4),
                           ("Quad_L2Net_ConfCFS(mchan=2)", "full", 2)]
)
def test_official_layout_loads_strictly_and_reproduces(tmp_path, name, variant, mchan):
    source = _net(variant, mchan, seed=3)
    path = _official_file(tmp_path / "official.pt", source, name)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    ours = r2d2_from_official_checkpoint(ckpt)
    assert ours.arch == R2D2Arch(variant, mchan) and not ours.training
    x = torch.randn(1, 3, 30, 34)
    with torch.no_grad():
        ref, out = source(x), ours(x)
    for key in ("descriptors", "reliability", "repeatability"):
        assert torch.equal(ref[key], out[key])
    extractor = R2D2Extractor({"variant": "auto"}, weights=path)
    assert extractor.net.arch == R2D2Arch(variant, mchan)
    with torch.no_grad():  # channels_last convolutions round differently
        torch.testing.assert_close(extractor.net(x)["descriptors"], ref["descriptors"], atol=1e-6, rtol=0)


def test_official_file_with_training_losses_defaultdict_loads(tmp_path):
    losses = collections.defaultdict(list, {"loss_reliability": [0.1, 0.2]})
    path = _official_file(tmp_path / "faster.pt", _net("slim", 1), "Fast_Quad_L2Net_ConfCFS(mchan=1)",
                          training_losses=losses)
    extractor = R2D2Extractor(weights=path)
    assert extractor.net.arch == R2D2Arch("slim", 1)
    assert extractor.weights_path == path


def test_official_layout_missing_key_is_refused(tmp_path):
    net = _net("full", 1)
    state = {"module." + k: v for k, v in net.state_dict().items() if k != "sal.bias"}
    torch.save({"net": "Quad_L2Net_ConfCFS(mchan=1)", "state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="sal.bias"):
        R2D2Extractor(weights=tmp_path / "bad.pt")


@pytest.mark.parametrize(
    "name",
    [
        "__import__('pathlib').Path('PWNED').touch()",
        "Quad_L2Net_ConfCFS(mchan=__import__('os').getpid())",
        "Quad_L2Net_ConfCFS();open('PWNED','w')",
        "L2_Net()",
        "Quad_L2Net_ConfCFS(dilated=False)",
    ],
)
def test_unknown_or_malicious_net_string_is_rejected(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(R2D2ArchError, match="unsupported R2D2 architecture"):
        parse_official_net_name(name)
    path = _official_file(tmp_path / "evil.pt", _net("full", 4), name)
    with pytest.raises(WeightsError, match="never evaluated"):
        R2D2Extractor(weights=path)
    assert not (tmp_path / "PWNED").exists()


def test_recorded_arch_must_match_tensors(tmp_path):
    path = _official_file(tmp_path / "liar.pt", _net("full", 1), "Fast_Quad_L2Net_ConfCFS(mchan=1)")
    with pytest.raises(WeightsError, match="tensors are those of"):
        R2D2Extractor(weights=path)
    ckpt = {"state_dict": _net("slim", 1).state_dict(), "meta": {"arch": "hynet"}}
    with pytest.raises(R2D2ArchError, match="hynet"):
        arch_from_checkpoint(ckpt)
    assert arch_from_checkpoint({"state_dict": _net("slim", 2).state_dict()}) == R2D2Arch("slim", 2)


# --------------------------------------------------------------- extractor


def test_our_checkpoint_records_variant(ckpt_full, tmp_path):
    ckpt = torch.load(ckpt_full, weights_only=True)
    assert ckpt["meta"] == {"arch": "r2d2", "variant": "full", "mchan": 2, "dim": 128}
    assert R2D2Extractor(weights=ckpt_full).arch == ckpt["meta"]
    with pytest.raises(WeightsError, match="variant: full"):
        R2D2Extractor({"variant": "slim"}, weights=ckpt_full)
    with pytest.raises(ConfigError, match="unknown config key"):
        R2D2Extractor({"max_kpts": 10}, weights=ckpt_full)


def test_extractor_on_real_image(ckpt_full, rgb):
    height, width = rgb.shape[:2]
    conf = {"reliability_threshold": 0.0, "repeatability_threshold": 0.0, "min_size": 128}
    extractor = R2D2Extractor({**conf, "max_keypoints": 0}, weights=ckpt_full)
    full = extractor(_tensor(rgb))
    n = len(full["scores"])
    assert n > 300
    assert full["keypoints"].shape == (n, 2) and full["descriptors"].shape == (128, n)
    assert full["scales"].shape == (n,)
    assert all(v.dtype == torch.float32 for v in full.values())
    kp = full["keypoints"]
    assert (kp >= -0.5).all() and (kp[:, 0] <= width - 0.5).all() and (kp[:, 1] <= height - 0.5).all()
    assert (full["scores"][:-1] >= full["scores"][1:]).all()
    torch.testing.assert_close(full["descriptors"].norm(dim=0), torch.ones(n))

    levels = [lvl for lvl in pyramid_scales(height, width, min_size=128) if lvl[3]]
    assert len(levels) == 5 and levels[0][:3] == (1.0, height, width)
    assert torch.unique(full["scales"]).numel() == 5
    for s, nh, nw, _ in levels:  # every keypoint is a pixel centre of its level
        sel = torch.isclose(full["scales"], torch.tensor(32 / s))
        assert sel.any()
        pix = (kp[sel] + 0.5) * torch.tensor([nw / width, nh / height]) - 0.5
        torch.testing.assert_close(pix, pix.round(), atol=2e-3, rtol=0)

    limited = R2D2Extractor({**conf, "max_keypoints": 100}, weights=ckpt_full)(_tensor(rgb))
    assert limited["keypoints"].shape == (100, 2) and limited["descriptors"].shape == (128, 100)
    torch.testing.assert_close(limited["scores"], full["scores"][:100])
    assert limited["scores"].min() >= full["scores"][100]
    grey = extractor(_tensor(rgb.mean(2, keepdims=True)))
    assert grey["descriptors"].shape[0] == 128


def test_nms_keeps_only_local_maxima(ckpt_full, rgb):
    conf = {"reliability_threshold": 0.0, "repeatability_threshold": 0.0, "min_size": 256,
            "max_keypoints": 0}
    extractor = R2D2Extractor(conf, weights=ckpt_full)
    out = extractor(_tensor(rgb))
    with torch.no_grad():
        maps = extractor.net.detection_maps(imagenet_normalize(_tensor(rgb)))
    rep = maps["repeatability"][0, 0]
    pooled = torch.nn.functional.max_pool2d(rep[None, None], 3, 1, 1)[0, 0]
    expected = int((rep == pooled).sum())
    assert len(out["scores"]) == expected < rep.numel() // 4
    x, y = out["keypoints"].round().long().unbind(1)
    assert torch.equal(rep[y, x], pooled[y, x])


def test_no_weights_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(r2d2_features, "shipped_weights", functools.partial(shipped_weights, root=tmp_path))
    with pytest.raises(NoWeightsError, match="hndesc-r2d2"):
        R2D2Extractor()
    with pytest.raises(NoWeightsError, match="hndesc-r2d2-slim"):
        R2D2Extractor({"variant": "slim"})


@pytest.mark.skipif("hndesc-r2d2" not in read_registry(), reason="no shipped hndesc-r2d2 weights")
def test_default_weights_are_the_shipped_slim_checkpoint():
    auto, slim = R2D2Extractor(), R2D2Extractor({"variant": "slim"})
    assert auto.weights_path == slim.weights_path == shipped_weights("hndesc-r2d2")
    assert auto.arch == {"arch": "r2d2", "variant": "slim", "mchan": 4, "dim": 128}
    with pytest.raises(WeightsError, match="slim"):
        R2D2Extractor({"variant": "full"})  # no full network is shipped: refused, not substituted


def test_rotation_conf_runs_the_shipped_rotation_fine_tune():
    from hloc_hndesc.confs import build_extractor, get_conf, shipped_weights_name

    model = get_conf("hndesc-r2d2-rot4")["model"]
    extractor = build_extractor(model)
    assert shipped_weights_name(model) == "hndesc-r2d2-rot45" and extractor.rotations == (0, 90, 180, 270)
    assert extractor.weights_path == shipped_weights("hndesc-r2d2-rot45") != shipped_weights("hndesc-r2d2")
    meta = torch.load(extractor.weights_path, weights_only=True)["meta"]
    assert meta["config"]["data"]["homography"]["rotation"] == 90  # ±45° at difficulty 0.5
    assert meta["config"]["train"]["init_weights"] == "hloc_hndesc/checkpoints/hndesc_r2d2.pth"
    assert shipped_weights_name(get_conf("hndesc-r2d2")["model"]) == "hndesc-r2d2"
    eight = build_extractor(get_conf("hndesc-r2d2-rot8")["model"])
    assert eight.rotations == (0, 45, 90, 135, 180, 225, 270, 315) and eight.conf.max_keypoints == 2500
    assert eight.weights_path == extractor.weights_path
    with pytest.raises(NoWeightsError, match="nope"):
        R2D2Extractor({"shipped": "nope"})


def test_flat_and_tiny_images_give_valid_empty_result(tmp_path):
    net = _net("slim", 1)
    with torch.no_grad():
        net.sal.bias.fill_(-30.0)  # repeatability ~ 0 everywhere
    path = tmp_path / "quiet.pth"
    save_checkpoint(net, path, meta=net.arch.as_meta())
    extractor = R2D2Extractor({"min_size": 64}, weights=path)
    tiny = R2D2Extractor({"min_size": 256}, weights=path)
    for ext, image in ((extractor, torch.full((1, 3, 80, 96), 0.5)), (tiny, torch.rand(1, 3, 40, 60))):
        out = ext(image)
        assert out["keypoints"].shape == (0, 2) and out["scores"].shape == (0,)
        assert out["descriptors"].shape == (128, 0) and out["scales"].shape == (0,)
        assert all(v.dtype == torch.float32 for v in out.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(ckpt_full, rgb):
    conf = {"reliability_threshold": 0.0, "repeatability_threshold": 0.0, "max_keypoints": 200}
    extractor = R2D2Extractor(conf, weights=ckpt_full)
    cpu = extractor(_tensor(rgb))
    gpu = extractor.cuda()(_tensor(rgb))
    assert all(v.device.type == "cuda" for v in gpu.values())
    torch.testing.assert_close(gpu["scores"].cpu()[:50], cpu["scores"][:50], atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["full", "slim"])
def test_detection_maps_match_forward(variant):
    net = _net(variant, 1)
    x = torch.randn(2, 3, 34, 42)
    with torch.no_grad():
        ref, fast = net(x), net.detection_maps(x)
    assert set(fast) == {"raw_descriptors", "reliability", "repeatability"}
    for key in fast:
        torch.testing.assert_close(fast[key], ref[key], atol=1e-6, rtol=0)


# -- test-time rotations -------------------------------------------------------------------------


def test_rotation_helpers_follow_torch_rot90_exactly():
    from hloc_hndesc.features.rotation import check_rotations, keypoints_to_input, rotate_image

    height, width = 5, 7
    image = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    for angle in (0, 90, 180, 270):
        view = rotate_image(image, angle)
        assert view.shape[-2:] == ((height, width) if angle % 180 == 0 else (width, height))
        ys, xs = torch.meshgrid(torch.arange(view.shape[-2]), torch.arange(view.shape[-1]), indexing="ij")
        xy = torch.stack([xs.flatten(), ys.flatten()], -1).float()
        back = keypoints_to_input(xy, angle, (width, height)).long()
        assert torch.equal(view.flatten(), image[0, 0, back[:, 1], back[:, 0]])
    # clockwise on screen: the top-left corner goes to the top-right at 90 degrees
    assert rotate_image(image, 90)[0, 0, 0, -1] == image[0, 0, 0, 0]
    assert check_rotations([0, 90.0, 270]) == (0, 90, 270)
    assert check_rotations([0, 45, 22.5]) == (0, 45, 22.5)
    for bad in ([], [360], [-90], [0, 0], [0, 0.0], "0", ["90"], [True], None):
        with pytest.raises(ValueError, match="rotations"):
            check_rotations(bad)
    with pytest.raises(ValueError, match="rotations"):
        R2D2Extractor({"rotations": [400]})


def test_resampled_views_agree_with_their_keypoint_mapping():
    """A view at a non-right angle is the input resampled where keypoints_to_input says, on a canvas
    that holds the whole rotated input and is filled outside it."""
    from hloc_hndesc.features.rotation import inside, keypoints_to_input, rotate_image, view_from_input, view_size

    height, width = 37, 53
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = torch.stack([torch.sin(3 * xs + 2 * ys), torch.cos(4 * ys), xs * ys])[None]
    for angle in (30, 45, 137.5, 300):
        view = rotate_image(image, angle, fill=[9.0, 9.0, 9.0])
        out_w, out_h = view_size(angle, (width, height))
        assert view.shape[-2:] == (out_h, out_w)
        yy, xx = torch.meshgrid(torch.arange(out_h), torch.arange(out_w), indexing="ij")
        pixels = torch.stack([xx.flatten(), yy.flatten()], -1).float()
        back = keypoints_to_input(pixels, angle, (width, height))
        # bilinear samples of the input at the mapped positions equal the view's pixels
        grid = torch.stack([back[:, 0] / (width - 1) * 2 - 1, back[:, 1] / (height - 1) * 2 - 1], -1)
        sampled = F.grid_sample(image, grid[None, None], align_corners=True)[0, :, 0]
        within = inside(back, (width, height), margin=1.0)
        torch.testing.assert_close(sampled[:, within], view.flatten(2)[0][:, within], atol=1e-5, rtol=0)
        assert torch.all(view.flatten(2)[0][:, ~inside(back, (width, height), margin=-1.0)] == 9.0)
        # every input pixel lands on the canvas, and the mapping inverts view_from_input
        corners = torch.tensor([[0.0, 0.0], [width - 1, 0.0], [0.0, height - 1], [width - 1, height - 1]], dtype=torch.float64)
        matrix = view_from_input(angle, (width, height))
        moved = corners @ matrix[:, :2].T + matrix[:, 2]
        assert moved.min() >= -1e-6 and moved[:, 0].max() <= out_w - 1 + 1e-6 and moved[:, 1].max() <= out_h - 1 + 1e-6
        torch.testing.assert_close(keypoints_to_input(moved, angle, (width, height)), corners)


def _feature_set(keypoints: torch.Tensor, descriptors: torch.Tensor) -> list[tuple]:
    """Keypoints with their descriptors, as a sorted list (order-free comparison)."""
    return sorted(zip(map(tuple, keypoints.tolist()), map(tuple, descriptors.t().tolist())))


def test_rotated_views_make_extraction_exactly_rotation_covariant(rgb):
    """With all four views, the features of an image rotated by 90 degrees are those of the image,
    moved by the rotation: views are pixel permutations, so this holds to the last bit."""
    plain = R2D2Extractor({"max_keypoints": 300})
    multi = R2D2Extractor({"max_keypoints": 300, "rotations": [0, 90, 180, 270]})
    image = _tensor(rgb)
    height, width = image.shape[-2:]
    upright, out = plain(image), multi(image)
    assert out["keypoints"].shape == (4 * 300, 2) and out["descriptors"].shape == (128, 1200)
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    assert sorted(collections.Counter(out["oris"].tolist()).items()) == [(0.0, 300), (90.0, 300), (180.0, 300), (270.0, 300)]
    at0 = out["oris"] == 0
    assert torch.equal(out["keypoints"][at0], upright["keypoints"]) and torch.equal(out["descriptors"][:, at0], upright["descriptors"])
    assert out["keypoints"][:, 0].min() >= -0.5 and out["keypoints"][:, 0].max() <= width - 0.5
    assert out["keypoints"][:, 1].min() >= -0.5 and out["keypoints"][:, 1].max() <= height - 0.5

    turned = multi(torch.rot90(image, k=-1, dims=(-2, -1)).contiguous())  # 90 degrees clockwise
    x, y = out["keypoints"].unbind(-1)
    expected = torch.stack([(height - 1) - y, x], -1)  # where the rotation moves each keypoint
    assert _feature_set(turned["keypoints"], turned["descriptors"]) == _feature_set(expected, out["descriptors"])
    # the plain extractor is not covariant: its keypoints on the turned image are not the moved ones
    plain_turned = plain(torch.rot90(image, k=-1, dims=(-2, -1)).contiguous())
    moved = {tuple(p) for p in torch.stack([(height - 1) - upright["keypoints"][:, 1], upright["keypoints"][:, 0]], -1).tolist()}
    assert len(moved & {tuple(p) for p in plain_turned["keypoints"].tolist()}) < 0.9 * len(moved)


def _correct_matches(feats0: dict, feats1: dict, affine: np.ndarray) -> tuple[int, float]:
    """Mutual-NN matches of two feature dicts within 3 px under the (2, 3) ``affine``: count, precision."""
    from hloc_hndesc.evaluation.matching import match_descriptors

    matches = match_descriptors(feats0["descriptors"], feats1["descriptors"])
    k0, k1 = feats0["keypoints"].double().numpy(), feats1["keypoints"].double().numpy()
    moved = k0[matches[:, 0]] @ affine[:, :2].T + affine[:, 2]
    correct = np.linalg.norm(moved - k1[matches[:, 1]], axis=1) < 3
    return int(correct.sum()), float(correct.mean()) if len(correct) else 0.0


def test_resampled_views_match_a_photo_turned_by_45_degrees(rgb):
    """Views every 45 degrees (resampled ones included) keep only keypoints inside the input, leave
    the upright view's features untouched, and match a photo turned by 45 degrees - the angle the
    four right-angle views handle worst - better than those four views (shipped rot45 weights)."""
    from hloc_hndesc.features.r2d2 import VIEW_MARGIN
    from hloc_hndesc.features.rotation import inside

    model = {"max_keypoints": 500, "shipped": "hndesc-r2d2-rot45"}
    four = R2D2Extractor({**model, "rotations": [0, 90, 180, 270]})
    eight = R2D2Extractor({**model, "rotations": [0, 45, 90, 135, 180, 225, 270, 315]})
    height, width = rgb.shape[:2]
    # clockwise by 45 degrees on screen about the centre; the corners leave the frame
    affine = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), -45, 1.0)
    turned = cv2.warpAffine(rgb, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    image, image_turned = _tensor(rgb), _tensor(turned)
    out = eight(image)
    counts = collections.Counter(out["oris"].tolist())
    assert sorted(counts) == [0, 45, 90, 135, 180, 225, 270, 315] and max(counts.values()) <= 500
    resampled = out["oris"] % 90 != 0
    assert torch.all(inside(out["keypoints"][resampled], (width, height), VIEW_MARGIN - 1e-3))
    at0, plain = out["oris"] == 0, four(image)
    assert torch.equal(out["descriptors"][:, at0], plain["descriptors"][:, plain["oris"] == 0])
    n4, p4 = _correct_matches(plain, four(image_turned), affine)
    n8, p8 = _correct_matches(out, eight(image_turned), affine)
    # measured: 322 correct (precision 0.69) with four views, 1638 (0.94) with eight
    assert n8 > 3 * n4 and p8 > p4 + 0.15, (n4, p4, n8, p8)
