"""The HOW network (attention, smoothing, whitening, SPoC, local selection) and its extractor."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from conftest import photo_tensor, randomize_batchnorm
import torch
import torch.nn.functional as F

from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.how import HOWExtractor
from hloc_hndesc.models.how import (
    HOWNet,
    how_key_map_to_official,
    l2_attention,
    official_how_key_map,
    pca_whitening,
    scale_image,
    smoothing_avg_pool,
)
from hloc_hndesc.models.resnet import ResNet
from hloc_hndesc.weights import NoWeightsError, WeightsError, load_weights, save_checkpoint

torch.set_num_threads(2)
SCALES = [2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25]
OFFICIAL_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def load_photo(folder: Path, max_side: int) -> torch.Tensor:
    """A sacre_coeur photo, RGB (1, 3, h, w) in [0, 1], longer side ``max_side``."""
    return photo_tensor(folder, max_side, 1)


def correlated(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) * torch.logspace(0, -2, dim)[None]
    return torch.randn(n, dim, generator=g) @ mix.T + 3 * torch.randn(dim, generator=g)


@pytest.fixture(scope="module")
def how_net() -> HOWNet:
    torch.manual_seed(0)
    net = HOWNet()
    randomize_batchnorm(net)
    net.init_whitening(correlated(3000, 256))
    return net.eval()


def test_layout_and_single_scale(how_net):
    keys = list(how_net.state_dict())
    assert "backbone.layer3.1.bn2.running_var" in keys and "backbone.layer2.0.downsample.1.weight" in keys
    assert not any(k.startswith("backbone.layer4") for k in keys)
    assert keys[-2:] == ["dim_reduction.weight", "dim_reduction.bias"]
    assert (how_net.backbone_dim, how_net.dim, how_net.stride) == (256, 128, 16)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats, att = how_net.single_scale(x)
        trunk = how_net.backbone(x)
    assert feats.shape == (1, 128, 4, 6) and att.shape == (1, 4, 6)
    # attention is the norm of the trunk output BEFORE smoothing
    torch.testing.assert_close(att, trunk.norm(dim=1), atol=1e-5, rtol=1e-5)
    smoothed = smoothing_avg_pool(trunk)
    torch.testing.assert_close(smoothed[..., 0, 0], trunk[..., :2, :2].mean((-2, -1)))  # corner: 4 valid cells
    torch.testing.assert_close(smoothed[..., 1, 1], trunk[..., :3, :3].mean((-2, -1)))
    w = how_net.dim_reduction.weight[:, :, 0, 0]
    torch.testing.assert_close(feats, torch.einsum("dc,bchw->bdhw", w, smoothed)
                               + how_net.dim_reduction.bias.view(1, -1, 1, 1), atol=1e-4, rtol=1e-4)


def test_l2_attention_values():
    x = torch.zeros(1, 2, 1, 2)
    x[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(l2_attention(x), torch.tensor([[[5.0, 1e-5]]]))


def test_pca_whitening_decorrelates(how_net):
    data = correlated(3000, 256)
    mean, proj = pca_whitening(data)
    out = (data - mean) @ proj.T
    cov = out.T @ out / data.shape[0]
    torch.testing.assert_close(cov, torch.eye(256), atol=2e-3, rtol=0)
    # the network's reduction (initialised from the same data in the fixture) whitens to d = 128
    with torch.no_grad():
        reduced = how_net.dim_reduction(data.T[None, :, :, None])[0, :, :, 0].T
    assert reduced.shape == (3000, 128)
    torch.testing.assert_close(reduced.mean(0), torch.zeros(128), atol=2e-3, rtol=0)
    torch.testing.assert_close(reduced.T @ reduced / 3000, torch.eye(128), atol=2e-3, rtol=0)
    # shrinkage 0.5 keeps the decorrelation but not unit variances
    _, half = pca_whitening(data, shrinkage=0.5)
    out = (data - mean) @ half.T
    cov = out.T @ out / data.shape[0]
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 1e-3 * cov.diag().max()
    assert cov.diag()[0] > 10 * cov.diag()[-1]


def test_whitening_from_network_features():
    torch.manual_seed(0)
    net = HOWNet().eval()
    with torch.no_grad():
        local = net.forward_local(torch.randn(1, 3, 256, 256), [1.0, 2.0, 1.414], features_num=None, reduce=False)
    desc = local["descriptors"][0]
    assert desc.shape == (16 * 16 + 32 * 32 + 23 * 23, 256)  # 256 * 1.414 -> 361 px -> 23 cells
    mean, proj = net.init_whitening(desc)
    with torch.no_grad():
        feats, _ = net.single_scale(torch.randn(1, 3, 32, 32))
        raw, _ = net.single_scale(torch.randn(1, 3, 32, 32), reduce=False)
    assert feats.shape[1] == 128 and raw.shape[1] == 256
    torch.testing.assert_close(net.dim_reduction.bias, -(proj[:128] @ mean))
    reduced = (desc - mean) @ proj[:128].T
    cov = reduced.T @ reduced / desc.shape[0]
    torch.testing.assert_close(cov.diag()[:100], torch.ones(100), atol=1e-2, rtol=0)


def test_global_spoc_matches_direct(how_net):
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    scales = [1.414, 1.0, 0.5]
    with torch.no_grad():
        glob = how_net.forward_global(x, scales)
        direct = []
        for b in range(2):
            maps, atts = [], []
            for s in scales:
                xs = F.interpolate(x[b : b + 1], scale_factor=s, mode="bilinear", align_corners=False,
                                   recompute_scale_factor=True) if s != 1.0 else x[b : b + 1]
                trunk = how_net.backbone(xs)
                atts.append(trunk.norm(dim=1)[0])
                maps.append(how_net.dim_reduction(F.avg_pool2d(trunk, 3, 1, 1, count_include_pad=False))[0])
            peak = max(a.max() for a in atts)
            desc = sum((m * (a / peak)).sum((1, 2)) for m, a in zip(maps, atts))
            direct.append(desc / desc.norm())
        single = how_net.forward_global(x[1:2], scales)
    assert glob.shape == (2, 128)
    torch.testing.assert_close(glob, torch.stack(direct), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single[0], glob[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(how_net.forward_global(x[1:2], scales), single, atol=0, rtol=0)  # deterministic


def test_local_selection(how_net):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    scales = [2.0, 1.0, 0.5]
    with torch.no_grad():
        out = how_net.forward_local(x, scales, features_num=40)
        feats, atts = how_net.multi_scale(x, scales)
    assert out["descriptors"].shape == (1, 40, 128)
    assert out["strengths"].shape == out["scales"].shape == (1, 40) and out["keypoints"].shape == (1, 40, 2)
    s = out["strengths"][0]
    assert (s[:-1] >= s[1:]).all() and s[0] == 1.0
    total = sum(a.numel() for a in atts)
    assert (torch.cat([a.flatten() for a in atts]) >= s[-1]).sum() == 40 and total > 40
    for k in range(40):
        level = scales.index(float(out["scales"][0, k]))
        cx, cy = (int(v) for v in out["cells"][0, k])
        torch.testing.assert_close(out["descriptors"][0, k], feats[level][0, :, cy, cx])
        assert out["strengths"][0, k] == atts[level][0, cy, cx]
        h_l, w_l = scale_image(x, scales[level]).shape[-2:]
        expected = torch.tensor([(16 * cx + 0.5) * 96 / w_l - 0.5, (16 * cy + 0.5) * 64 / h_l - 0.5])
        torch.testing.assert_close(out["keypoints"][0, k], expected)
    # all features when features_num is None
    with torch.no_grad():
        everything = how_net.forward_local(x, scales, features_num=None)
    assert everything["strengths"].shape[1] == total


def test_gradients_skip_whitening():
    torch.manual_seed(0)
    net = HOWNet().train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net.backbone.training
    net.init_whitening(correlated(600, 256))
    before = net.dim_reduction.weight.clone()
    desc = net(torch.randn(2, 3, 64, 64), scales=[1.0, 0.707])
    assert desc.shape == (2, 128)
    (desc[0] @ desc[1]).backward()
    assert net.dim_reduction.weight.grad is None and net.dim_reduction.bias.grad is None
    trunk = [p for p in net.backbone.parameters()]
    assert all(p.grad is not None for p in trunk)
    assert net.backbone.conv1.weight.grad.abs().sum() > 0 and net.backbone.layer3[1].conv2.weight.grad.abs().sum() > 0
    groups = net.parameter_groups(lr=1e-5, weight_decay=1e-4)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert id(net.dim_reduction.weight) not in grouped and id(net.dim_reduction.bias) not in grouped
    assert grouped == {id(p) for p in trunk}
    optimizer = torch.optim.Adam(groups)
    optimizer.step()
    assert torch.equal(net.dim_reduction.weight, before)


@pytest.mark.parametrize("trunk_layers", [3, 4])
def test_official_key_map_round_trip(trunk_layers, tmp_path):
    torch.manual_seed(0)
    ours = HOWNet(trunk_layers=trunk_layers)
    ours.init_whitening(correlated(2 * ours.backbone_dim, ours.backbone_dim))
    state = ours.state_dict()
    official = {}
    for key, value in state.items():  # the official features.<i> layout, written by hand
        if key.startswith("backbone."):
            head, _, rest = key[len("backbone."):].partition(".")
            key = f"features.{OFFICIAL_INDEX[head]}.{rest}"
        official[key] = value
    assert "features.6.1.bn2.running_var" in official and "features.0.weight" in official
    assert ("features.7.0.conv1.weight" in official) == (trunk_layers == 4)
    mapped = official_how_key_map(official)
    assert set(mapped) == set(state) and all(torch.equal(mapped[k], state[k]) for k in state)
    assert how_key_map_to_official(mapped).keys() == official.keys()
    with pytest.raises(KeyError, match="features.3"):
        official_how_key_map({"features.3.weight": torch.zeros(1)})
    # an official checkpoint file loads through the extractor
    path = tmp_path / "how_official.pth"
    torch.save({"meta": {"architecture": "resnet18"}, "state_dict": official}, path)
    extractor = HOWExtractor({"trunk_layers": trunk_layers, "scales": [1.0]}, weights=path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = ours.eval().forward_global((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                                              / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    torch.testing.assert_close(extractor(x)["global_descriptor"], expected[0], atol=1e-5, rtol=1e-4)


def test_imagenet_backbone_loads_torchvision_state():
    tv = ResNet("resnet18").state_dict()
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    net = HOWNet()
    net.load_imagenet_backbone(tv)
    assert torch.equal(net.backbone.layer3[0].downsample[0].weight, tv["layer3.0.downsample.0.weight"])


# ---------------------------------------------------------------- extractor


@pytest.fixture(scope="module")
def how_weights(tmp_path_factory, how_net) -> Path:
    path = tmp_path_factory.mktemp("how") / "how.pth"
    save_checkpoint(how_net, path, {"note": "random weights written by the test"})
    return path


def test_extractor_requires_weights_and_checks_conf(how_weights, tmp_path, monkeypatch):
    from hloc_hndesc.features import how as how_features

    with monkeypatch.context() as patch:  # no shipped weights (an empty checkpoint folder): refused
        patch.setattr(how_features, "load_weights", functools.partial(load_weights, root=tmp_path))
        with pytest.raises(NoWeightsError, match="'how'"):
            HOWExtractor()
    with pytest.raises(ValueError, match="mode"):
        HOWExtractor({"mode": "both"}, weights=how_weights)
    with pytest.raises(ConfigError, match="unknown config key"):
        HOWExtractor({"num_features": 10}, weights=how_weights)
    with pytest.raises(WeightsError, match="does not fit"):
        HOWExtractor({"trunk_layers": 4}, weights=how_weights)


def test_extractor_global_on_photo(how_weights, how_net, sacre_coeur):
    image = load_photo(sacre_coeur, 128)
    extractor = HOWExtractor({"mode": "global", "max_size": 1024}, weights=how_weights)
    assert extractor.conf.scales == SCALES
    out = extractor(image)
    assert set(out) == {"global_descriptor"}
    g = out["global_descriptor"]
    assert g.shape == (128,) and g.dtype == torch.float32
    torch.testing.assert_close(g.norm(), torch.tensor(1.0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = how_net.forward_global((image - mean) / std, SCALES)[0]
    torch.testing.assert_close(g, direct, atol=1e-5, rtol=1e-4)
    assert torch.equal(extractor(image)["global_descriptor"], g)
    # a different photo gives a different descriptor
    other = HOWExtractor({"mode": "global"}, weights=how_weights)(load_photo(sacre_coeur, 128).flip(-1))
    assert (other["global_descriptor"] - g).abs().max() > 1e-3


def test_extractor_local_on_photo(how_weights, sacre_coeur):
    image = load_photo(sacre_coeur, 256)
    h, w = image.shape[-2:]
    extractor = HOWExtractor({"mode": "local", "features_num": 200, "max_size": 128}, weights=how_weights)
    out = extractor(image)
    assert set(out) == {"keypoints", "scores", "descriptors", "scales"}
    assert out["descriptors"].shape == (128, 200) and out["keypoints"].shape == (200, 2)
    assert out["scores"].shape == out["scales"].shape == (200,)
    assert (out["scores"][:-1] >= out["scores"][1:]).all() and out["scores"][0] == 1.0
    levels = set(out["scales"].tolist())
    assert levels <= set(torch.tensor(SCALES).tolist()) and len(levels) > 1
    kp = out["keypoints"]
    assert (kp >= -0.5).all() and (kp[:, 0] < w).all() and (kp[:, 1] < h).all()
    # keypoints of the x1 level sit on the stride-16 grid of the 128 px image, mapped to 256 px
    at_one = out["scales"] == 1.0
    assert w == 256 and h < w
    small_size = torch.tensor([128.0, round(h * 128 / w)])
    small = (kp[at_one] + 0.5) * small_size / torch.tensor([w, h]) - 0.5
    torch.testing.assert_close(small / 16, (small / 16).round(), atol=1e-3, rtol=0)
    # capping the pyramid drops the x2 and x1.414 levels
    capped = HOWExtractor({"mode": "local", "max_size": 128, "max_scaled_side": 128}, weights=how_weights)
    assert capped.pyramid_scales(96, 128) == SCALES[2:]
    assert capped.pyramid_scales(4000, 4000) == [0.25]
    assert set(capped(image)["scales"].tolist()) <= set(torch.tensor(SCALES[2:]).tolist())
