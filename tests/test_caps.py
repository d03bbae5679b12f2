"""ResNet backbone, dense sampling, the CAPS-family network and the CAPS extractor."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
from conftest import photo_tensor, randomize_batchnorm
import torch
import torch.nn.functional as F

from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.caps import CAPSExtractor
from hloc_hndesc.features.sampling import keypoints_to_map_coords, map_coords_to_keypoints, sample_dense
from hloc_hndesc.models.caps import CAPSNet, official_caps_key_map, torchvision_to_caps_encoder
from hloc_hndesc.models.resnet import ResNet, select_torchvision_state
from hloc_hndesc.weights import NoWeightsError, WeightsError, load_weights, save_checkpoint

torch.set_num_threads(2)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet18_keys() -> list[str]:
    """torchvision resnet18 state-dict keys, in order, without ``fc``."""
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in BN]
    for layer in range(1, 5):
        for block in range(2):
            pre = f"layer{layer}.{block}."
            keys += [pre + "conv1.weight"] + [pre + f"bn1.{p}" for p in BN]
            keys += [pre + "conv2.weight"] + [pre + f"bn2.{p}" for p in BN]
            if block == 0 and layer > 1:
                keys += [pre + "downsample.0.weight"] + [pre + f"downsample.1.{p}" for p in BN]
    return keys


def load_photo(folder: Path, max_side: int = 192) -> torch.Tensor:
    """A sacre_coeur photo, RGB (1, 3, h, w) in [0, 1], longer side ``max_side``."""
    return photo_tensor(folder, max_side, 0)


# ---------------------------------------------------------------- ResNet


def test_resnet18_keys_are_torchvision():
    keys = list(ResNet("resnet18").state_dict())
    expected = torchvision_resnet18_keys()
    assert len(expected) == 120  # torchvision's 122 minus fc.weight / fc.bias
    assert keys == expected
    for name in ("layer3.1.bn2.running_var", "layer2.0.downsample.1.weight", "layer4.0.downsample.0.weight"):
        assert name in keys
    assert not any(k.startswith("fc.") for k in keys)
    named = dict(ResNet("resnet18").named_children())
    assert list(named) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def test_resnet_truncated_and_shapes():
    trunk = ResNet("resnet18", num_layers=3)
    assert all(not k.startswith("layer4") for k in trunk.state_dict())
    assert len(trunk.state_dict()) == 120 - 30
    assert (trunk.out_channels, trunk.stride) == (256, 16)
    r50 = ResNet("resnet50", num_layers=3)
    assert r50.out_channels == 1024
    assert r50.state_dict()["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert "layer3.5.bn3.running_mean" in r50.state_dict()
    trunk.eval()
    with torch.no_grad():
        outs = trunk.forward_layers(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6)]
    with pytest.raises(ValueError, match="unknown ResNet"):
        ResNet("resnet99")


def test_select_torchvision_state_loads_full_state():
    full = ResNet("resnet18").state_dict()
    full["fc.weight"], full["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    trunk = ResNet("resnet18", num_layers=3)
    trunk.load_state_dict(select_torchvision_state(full, 3), strict=True)
    assert torch.equal(trunk.layer3[1].bn2.running_var, full["layer3.1.bn2.running_var"])


# ---------------------------------------------------------------- sampling


def ramp_map() -> torch.Tensor:
    """(1, 2, 3, 4) map: channel 0 = column index, channel 1 = 10 * row index."""
    cols = torch.arange(4.0).expand(3, 4)
    rows = 10 * torch.arange(3.0)[:, None].expand(3, 4)
    return torch.stack([cols, rows])[None]


def test_sampling_hand_computed_receptive():
    fmap = ramp_map()
    kpts = torch.tensor([[8.0, 4.0], [6.0, 2.0], [0.0, 0.0], [-8.0, 100.0], [13.0, 9.0]])
    out = sample_dense(fmap, kpts, stride=4, convention="receptive", normalize=False)
    # u = x / 4: (2, 1) exact cell; (1.5, 0.5); origin; clamped to (0, 2); clamped x 3.25 -> 3, y 2.25 -> 2
    expected = torch.tensor([[2.0, 1.5, 0.0, 0.0, 3.0], [10.0, 5.0, 0.0, 20.0, 20.0]])
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, expected)


def test_sampling_hand_computed_corner_and_anisotropic():
    fmap = ramp_map()
    kpts = torch.tensor([[6.0, 2.0], [1.5, 1.5]])
    out = sample_dense(fmap, kpts, stride=4, convention="corner", normalize=False)
    # u = (x + 0.5) / 4 - 0.5: (1.125, 0.125); the first cell centre (1.5, 1.5) -> (0, 0)
    torch.testing.assert_close(out, torch.tensor([[1.125, 0.0], [1.25, 0.0]]))
    out = sample_dense(fmap, torch.tensor([[6.0, 6.0]]), stride=(4.0, 8.0), normalize=False)
    torch.testing.assert_close(out[:, 0], torch.tensor([1.5, 7.5]))
    coords = keypoints_to_map_coords(kpts, (4.0, 8.0), "corner")
    torch.testing.assert_close(map_coords_to_keypoints(coords, (4.0, 8.0), "corner"), kpts)
    with pytest.raises(ValueError, match="convention"):
        sample_dense(fmap, kpts, 4, convention="centre")


def test_sampling_matches_manual_bilinear_batched():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 5, 6, 7, generator=g)
    kpts = torch.rand(2, 9, 2, generator=g) * torch.tensor([6 * 8.0, 5 * 8.0])  # inside the cell centres
    out = sample_dense(fmap, kpts, stride=8, normalize=False)
    assert out.shape == (2, 5, 9)
    u = kpts / 8
    x0, y0 = u[..., 0].floor().long(), u[..., 1].floor().long()
    fx, fy = u[..., 0] - x0, u[..., 1] - y0
    x1, y1 = (x0 + 1).clamp(max=6), (y0 + 1).clamp(max=5)
    b = torch.arange(2)[:, None]
    manual = (
        fmap[b, :, y0, x0] * ((1 - fx) * (1 - fy))[..., None]
        + fmap[b, :, y0, x1] * (fx * (1 - fy))[..., None]
        + fmap[b, :, y1, x0] * ((1 - fx) * fy)[..., None]
        + fmap[b, :, y1, x1] * (fx * fy)[..., None]
    ).transpose(1, 2)
    torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-5)
    single = sample_dense(fmap[1], kpts[1], stride=8, normalize=True)
    torch.testing.assert_close(single, F.normalize(manual[1], dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single.norm(dim=0), torch.ones(9))


# ---------------------------------------------------------------- CAPS network


@pytest.fixture(scope="module")
def caps_net() -> CAPSNet:
    torch.manual_seed(0)
    net = CAPSNet()
    randomize_batchnorm(net)
    return net.eval()


@pytest.mark.parametrize("size", [(64, 96), (70, 93)])
def test_caps_shapes(caps_net, size):
    with torch.no_grad():
        coarse, fine = caps_net(torch.randn(1, 3, *size))
    h, w = size
    h4, w4 = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
    assert coarse.shape == (1, 128, math.ceil(h4 / 4), math.ceil(w4 / 4))
    assert fine.shape == (1, 128, h4, w4)
    assert coarse.dtype == fine.dtype == torch.float32


def test_caps_batch_and_determinism(caps_net):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        coarse, fine = caps_net(x)
        c1, f1 = caps_net(x[1:2])
        c2, f2 = caps_net(x[1:2])
    torch.testing.assert_close(c1, coarse[1:2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f1, fine[1:2], atol=1e-5, rtol=1e-4)
    assert torch.equal(c1, c2) and torch.equal(f1, f2)


def test_caps_gradient_flow():
    torch.manual_seed(0)
    net = CAPSNet().train()
    coarse, fine = net(torch.randn(2, 3, 64, 64))
    (coarse.square().mean() + fine.square().mean()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_caps_checkpoint_size_and_layout(tmp_path):
    net = CAPSNet()
    keys = list(net.state_dict())
    for name in ("firstconv.weight", "firstbn.running_var", "layer3.1.bn2.running_var",
                 "layer2.0.downsample.1.weight", "conv_coarse.conv.weight", "upconv3.conv.conv.weight",
                 "iconv2.bn.running_mean", "conv_fine.conv.bias"):
        assert name in keys, name
    save_checkpoint(net, tmp_path / "caps.pth")
    assert (tmp_path / "caps.pth").stat().st_size < 16 * 2**20


def test_caps_official_key_map_and_imagenet_encoder():
    torch.manual_seed(0)
    src = CAPSNet()
    official = {"net." + k: v for k, v in src.state_dict().items()}
    dst = CAPSNet()
    dst.load_state_dict(official_caps_key_map(official), strict=True)
    assert torch.equal(dst.upconv2.conv.conv.weight, src.upconv2.conv.conv.weight)
    wrapped = official_caps_key_map({"net.module." + k: v for k, v in src.state_dict().items()})
    assert wrapped.keys() == src.state_dict().keys()
    # a torchvision ImageNet resnet18 state (with layer4 and fc) fills the encoder only
    tv = ResNet("resnet18").state_dict()
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    mapped = torchvision_to_caps_encoder(tv)
    assert "firstconv.weight" in mapped and not any(k.startswith(("layer4", "fc", "conv1")) for k in mapped)
    decoder_before = dst.iconv3.conv.weight.clone()
    dst.load_imagenet_encoder(tv)
    assert torch.equal(dst.firstconv.weight, tv["conv1.weight"])
    assert torch.equal(dst.layer3[1].bn2.running_var, tv["layer3.1.bn2.running_var"])
    assert torch.equal(dst.iconv3.conv.weight, decoder_before)
    with pytest.raises(ValueError, match="does not fit resnet50"):
        CAPSNet("resnet50", decoder_channels=(512, 256)).load_imagenet_encoder(tv)
    resnet34 = ResNet("resnet34").state_dict()
    with pytest.raises(ValueError, match="does not fit resnet18"):
        dst.load_imagenet_encoder(resnet34)


# ---------------------------------------------------------------- CAPS extractor


@pytest.fixture(scope="module")
def caps_weights(tmp_path_factory, caps_net) -> Path:
    path = tmp_path_factory.mktemp("caps") / "caps.pth"
    save_checkpoint(caps_net, path, {"note": "random weights written by the test"})
    return path


def test_caps_extractor_requires_weights(tmp_path, monkeypatch):
    """Without shipped weights (an empty checkpoint folder here) random weights are refused."""
    from hloc_hndesc.features import caps as caps_features

    monkeypatch.setattr(caps_features, "load_weights", functools.partial(load_weights, root=tmp_path))
    with pytest.raises(NoWeightsError, match="hndesc-caps"):
        CAPSExtractor()


def test_caps_extractor_conf_checks(caps_weights):
    with pytest.raises(ValueError, match="detector"):
        CAPSExtractor({"detector": "r2d2"}, weights=caps_weights)
    with pytest.raises(ConfigError, match="unknown config key"):
        CAPSExtractor({"max_kpts": 10}, weights=caps_weights)
    with pytest.raises(WeightsError, match="does not fit"):
        CAPSExtractor({"decoder_channels": [512, 256]}, weights=caps_weights)


def test_caps_extractor_loads_official_layout(tmp_path, caps_net):
    path = tmp_path / "official.pth"
    torch.save({"state_dict": {"net." + k: v for k, v in caps_net.state_dict().items()}}, path)
    extractor = CAPSExtractor(weights=path)
    assert torch.equal(extractor.net.conv_fine.conv.weight, caps_net.conv_fine.conv.weight)


def test_caps_describe_given_keypoints(caps_weights, caps_net, sacre_coeur):
    extractor = CAPSExtractor({"sampling": "receptive"}, weights=caps_weights)
    assert not extractor.net.training
    image = load_photo(sacre_coeur, 128)
    kpts = torch.tensor([[0.0, 0.0], [20.0, 33.5], [64.0, 48.0], [image.shape[-1] - 1.0, image.shape[-2] - 1.0]])
    desc = extractor.describe(image, kpts)
    assert desc.shape == (256, 4) and desc.dtype == torch.float32
    torch.testing.assert_close(desc.norm(dim=0), torch.ones(4))
    torch.testing.assert_close(desc[:128].norm(dim=0), torch.full((4,), 2**-0.5))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        coarse, fine = caps_net((image - mean) / std)
    u = kpts[2] / 16  # (4, 3): an exact coarse cell; fine (16, 12)
    direct_c = F.normalize(coarse[0, :, int(u[1]), int(u[0])], dim=0)
    direct_f = F.normalize(fine[0, :, 12, 16], dim=0)
    torch.testing.assert_close(desc[:, 2], torch.cat([direct_c, direct_f]) / 2**0.5, atol=1e-5, rtol=1e-4)
    assert extractor.describe(image, torch.zeros(0, 2)).shape == (256, 0)
    # grey input is expanded to RGB
    grey = image.mean(1, keepdim=True)
    torch.testing.assert_close(extractor.describe(grey, kpts), extractor.describe(grey.expand(-1, 3, -1, -1), kpts))


def test_caps_extractor_on_photo(caps_weights, sacre_coeur):
    extractor = CAPSExtractor({"max_keypoints": 300}, weights=caps_weights)
    image = load_photo(sacre_coeur, 192)
    out = extractor(image)
    n = out["keypoints"].shape[0]
    assert 20 < n <= 300
    assert out["descriptors"].shape == (256, n)
    assert out["scores"].shape == out["scales"].shape == out["oris"].shape == (n,)
    assert all(v.dtype == torch.float32 for v in out.values())
    h, w = image.shape[-2:]
    kp = out["keypoints"]
    assert (kp >= -0.5).all() and (kp[:, 0] <= w - 0.5).all() and (kp[:, 1] <= h - 0.5).all()
    torch.testing.assert_close(out["descriptors"].norm(dim=0), torch.ones(n))
    torch.testing.assert_close(out["descriptors"], extractor.describe(image, kp))
    again = extractor(image)
    assert torch.equal(again["keypoints"], kp) and torch.equal(again["descriptors"], out["descriptors"])
    flat = extractor(torch.full((1, 3, 64, 64), 0.5))
    assert flat["keypoints"].shape == (0, 2) and flat["descriptors"].shape == (256, 0)


def test_sift_caps_kpts_baseline_describes_the_caps_keypoints(caps_weights, sacre_coeur, tmp_path):
    """``sift-caps-kpts`` (benchmark baseline) detects where ``hndesc-caps`` does, so rows differ by descriptor."""
    from hloc_hndesc.evaluation.methods import parse_method, read_features

    name = sorted(p.name for p in sacre_coeur.glob("*.jpg"))[0]
    caps = parse_method(f"hndesc-caps={caps_weights}")
    sift = parse_method("sift-caps-kpts")
    for method in (caps, sift):
        method.conf["model"]["max_keypoints"] = 500
        method.conf["preprocessing"]["resize_max"] = 400
    kc = read_features(caps.extract(sacre_coeur, [name], tmp_path), name)["keypoints"]
    ks = read_features(sift.extract(sacre_coeur, [name], tmp_path), name)["keypoints"]
    assert 300 <= len(kc) <= 500 and abs(len(ks) - len(kc)) <= 25
    nearest = torch.cdist(torch.from_numpy(kc).double(), torch.from_numpy(ks).double()).min(dim=1).values
    assert (nearest < 0.5).double().mean() > 0.9  # the same DoG points, up to the grey conversion
