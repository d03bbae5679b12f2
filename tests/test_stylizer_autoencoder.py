"""Stylization autoencoder: unpooling at the content's indices, odd sizes, a short real training run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO_ROOT, load_photo, write_image
from hloc_hndesc.config import ConfigError, merge_conf
from hloc_hndesc.evaluation.splits import SplitError, check_training_dirs
from hloc_hndesc.models.stylizer import StylizerAutoencoder
from hloc_hndesc.training.stylization.autoencoder import (
    AE_TRAIN_DEFAULTS,
    colour_jitter,
    load_autoencoder,
    split_names,
    train_autoencoder,
)
from hloc_hndesc.weights import WeightsError, load_weights, sha256sum


@pytest.fixture(scope="module")
def net() -> StylizerAutoencoder:
    torch.manual_seed(0)
    return StylizerAutoencoder().eval()


@pytest.mark.parametrize("size", [(37, 53), (5, 3), (64, 96), (1, 9)])
def test_shapes_any_size(net: StylizerAutoencoder, size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        enc = net.encode(x)
        out = net(x)
        again = net.decode(net.encode(x))
    h, w = size
    assert enc.features.shape == (2, 128, max(2, -(-h // 4)), max(2, -(-w // 4)))
    assert len(enc.indices) == len(enc.sizes) == 2
    assert enc.image_size == size
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, again)


def test_configurable_channels() -> None:
    small = StylizerAutoencoder({"channels": [8, 16, 24, 32], "convs_per_level": 1})
    enc = small.encode(torch.rand(1, 3, 40, 24))
    assert enc.features.shape == (1, 32, 5, 3) and len(enc.indices) == 3
    assert small(torch.rand(1, 3, 40, 24)).shape == (1, 3, 40, 24)
    with pytest.raises(ConfigError, match="unknown config key 'chanels'"):
        StylizerAutoencoder({"chanels": [8, 16]})
    with pytest.raises(ValueError, match="at least two levels"):
        StylizerAutoencoder({"channels": [8]})


def test_decode_with_replaced_features_is_differentiable(net: StylizerAutoencoder) -> None:
    x = torch.rand(1, 3, 30, 34, requires_grad=True)
    enc = net.encode(x)
    mean = enc.features.mean(dim=(2, 3), keepdim=True)
    recoloured = (enc.features - mean) * 0.5 + mean * 1.3
    out = net.decode(enc, recoloured, clamp=False)
    assert out.shape == (1, 3, 30, 34)
    net.zero_grad()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="do not fit the encoded content"):
        net.decode(enc, enc.features[..., :-1])


def test_decoder_uses_content_indices(net: StylizerAutoencoder) -> None:
    torch.manual_seed(1)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    enc_a, enc_b = net.encode(a), net.encode(b)
    with torch.no_grad():
        ref = net.decode(enc_a, clamp=False)
        swapped = net.decode(enc_a._replace(indices=enc_b.indices), clamp=False)
        # the same features placed at the content's maxima: only the indices differ
        assert (ref - swapped).abs().mean() > 0.05 * ref.abs().mean()
        # one level's indices alone already change the output
        one = net.decode(enc_a._replace(indices=(enc_b.indices[0], enc_a.indices[1])), clamp=False)
        assert not torch.allclose(one, ref)


def test_split_is_deterministic_and_local() -> None:
    names = [f"scene/img_{i:03d}.jpg" for i in range(400)]
    train, val = split_names(names, 0.05)
    assert 5 <= len(val) <= 40 and not set(train) & set(val)
    assert len(train) + len(val) == len(names)
    # membership depends on the name only: neither order nor the other names matter
    train2, val2 = split_names(list(reversed(names[:200])), 0.05)
    assert set(val2) == {n for n in val if n in set(names[:200])}
    # tiny sets still get one held-out photo
    assert len(split_names(names[:3], 0.05)[1]) == 1
    assert split_names(names[:3], 0.0)[1] == []


def test_colour_jitter() -> None:
    conf = merge_conf(AE_TRAIN_DEFAULTS, None, "test").augment
    x = torch.rand(6, 3, 16, 16)
    y1 = colour_jitter(x, conf, torch.Generator().manual_seed(3))
    y2 = colour_jitter(x, conf, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    assert float(y1.min()) >= 0 and float(y1.max()) <= 1
    assert (y1 - x).abs().mean() > 0.02
    off = OmegaConf.merge(conf, {"jitter_prob": 0.0})
    assert torch.allclose(colour_jitter(x, off, torch.Generator().manual_seed(3)), x, atol=1e-5)


def test_config_typo_and_evaluation_folder(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'train.stpes'"):
        train_autoencoder({"train": {"stpes": 10}})
    with pytest.raises(ConfigError, match="unknown config key 'data.image_dir'"):
        train_autoencoder({"data": {"image_dir": "x"}})
    out = tmp_path / "out"
    for folder in (data_dir / "sacre_coeur" / "mapping", data_dir / "strecha"):
        with pytest.raises(SplitError, match="never come from the evaluation sets"):
            train_autoencoder({"data": {"image_dirs": [str(folder)]}, "output_dir": str(out), "progress": False})
    assert not out.exists()


def test_shipped_config(data_dir: Path) -> None:
    yaml = OmegaConf.load(REPO_ROOT / "configs" / "train" / "stylizer_ae.yaml")
    conf = merge_conf(AE_TRAIN_DEFAULTS, yaml, "stylizer_ae.yaml")
    assert conf.task == "stylizer_ae"
    dirs = [REPO_ROOT / d for d in conf.data.image_dirs]
    if data_dir.resolve() == (REPO_ROOT.parent / "shared" / "data").resolve():
        assert all(d.is_dir() for d in dirs)
    check_training_dirs(dirs)


def test_tiny_training_run(tmp_path: Path, data_dir: Path) -> None:
    source = data_dir / "train_natural"
    folder = tmp_path / "train_natural"
    picks = sorted((source / "bsd300").glob("*.jpg"))[:4] + sorted((source / "urban100").glob("*.jpg"))[:4]
    for path in picks:
        image = load_photo(path, 64)
        write_image(folder / path.parent.name / path.name, np.round(image * 255).astype(np.uint8))
    out = tmp_path / "run"
    conf = {
        "data": {"image_dirs": [str(folder)], "max_size": 64, "crop": 32, "val_fraction": 0.1},
        "train": {"steps": 40, "batch_size": 4, "lr": 2e-3, "warmup": 5, "seed": 0},
        "augment": {"jitter_prob": 0.3},
        "log_every": 10,
        "output_dir": str(out),
        "progress": False,
    }
    metrics = train_autoencoder(conf)
    assert metrics["steps"] == 40 and metrics["images_seen"] == 160
    assert metrics["n_train"] + metrics["n_val"] == 8 and metrics["n_val"] >= 1
    assert metrics["loss_end"] < 0.65 * metrics["loss_start"]
    assert [s for s, _ in metrics["loss_curve"]] == [10, 20, 30, 40]
    assert metrics["threads"] == torch.get_num_threads()

    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(40))
    assert {"loss", "lr", "step_time_s"} <= set(rows[0])

    ckpt = out / "checkpoint.pth"
    assert metrics["sha256"] == sha256sum(ckpt)
    fresh = StylizerAutoencoder()
    load_weights(fresh, "stylizer_ae", ckpt)
    loaded = load_autoencoder(ckpt)
    x = torch.rand(1, 3, 21, 19)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), loaded(x))
    meta = torch.load(ckpt, weights_only=True)["meta"]
    assert meta["config"]["train"]["steps"] == 40
    assert meta["metrics"]["val"]["psnr"] == pytest.approx(metrics["val"]["psnr"])
    assert meta["data_dirs"] == [str(folder)]
    assert len(meta["val_names"]) == metrics["n_val"]

    # the held-out score is reproducible from the checkpoint and beats the untrained net
    val_names = [n.split("::")[1] for n in meta["val_names"]]
    val = [torch.from_numpy(load_photo(folder / n, 64)).permute(2, 0, 1)[None] for n in val_names]
    with torch.no_grad():
        psnr = np.mean([float(-10 * torch.log10(((loaded(v) - v) ** 2).mean())) for v in val])
        torch.manual_seed(0)
        untrained = StylizerAutoencoder().eval()
        psnr0 = np.mean([float(-10 * torch.log10(((untrained(v) - v) ** 2).mean())) for v in val])
    assert psnr == pytest.approx(metrics["val"]["psnr"], abs=0.3)
    assert psnr > psnr0 + 3.0

    with pytest.raises(WeightsError, match="does not fit"):
        load_weights(StylizerAutoencoder({"channels": [16, 32, 64]}), "stylizer_ae", ckpt)
