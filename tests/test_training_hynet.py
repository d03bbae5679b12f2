"""HyNet training task: patch pairs cut as the extractor cuts them, losses per mining mode, a tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.dog import detect_dog
from hloc_hndesc.features.hynet import HyNetExtractor, extract_patches
from hloc_hndesc.io import read_image
from hloc_hndesc.training.hynet import HyNetTask, grey, hynet_train_conf, train_hynet
from hloc_hndesc.training.tasks import load_train_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir: Path) -> Path:
    """Six training photos in two folders, one of them a 'scene' folder (one group)."""
    root = tmp_path_factory.mktemp("photos") / "train_natural"
    for sub, count in (("bsd300", 4), ("tum_freiburg", 2)):
        (root / sub).mkdir(parents=True)
        for path in sorted((data_dir / "train_natural" / sub).glob("*.jpg"))[:count]:
            shutil.copy(path, root / sub / path.name)
    return root


def tiny_conf(photos: Path, out: Path, jitter: str = "none", **mining) -> dict:
    return {
        "data": {
            "image_dirs": [str(photos)], "crop": 128, "max_size": 256, "val_fraction": 0.0,
            "stylize_probability": 0.0, "photometric": {"enabled": False},
        },
        "patches": {"per_pair": 16, "jitter": jitter},
        "mining": {"mode": "in_batch", **mining},
        "validation": {"pairs": 2},
        "train": {"steps": 2, "batch_size": 3, "log_every": 1, "checkpoint_every": 2, "output_dir": str(out)},
    }


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def test_patch_pairs_are_cut_as_the_extractor_and_correspond(photos: Path, tmp_path: Path):
    conf = hynet_train_conf(tiny_conf(photos, tmp_path))
    task = HyNetTask(conf)
    item = task.dataset[(0, 0)]
    pair = task.dataset.pairs[(0, 0)]
    v = item["valid"]
    n = int(v.sum())
    assert n >= 8 and item["patches0"].shape == (16, 1, 32, 32)
    # source patches are exactly the extractor's patches at the same DoG frames
    g0 = grey(pair["image0"])
    feats = detect_dog(g0, task.dataset.dog)
    ref = extract_patches(g0, feats["keypoints"], feats["scales"], feats["oris"])
    dist = (item["patches0"][v].flatten(1)[:, None] - ref.flatten(1)[None]).abs().amax(-1)
    assert (dist.min(1).values < 1e-5).all()
    # target patches show the same content (photometric and stylization are off here)
    pos = ncc(item["patches0"][v], item["patches1"][v])
    shuffled = ncc(item["patches0"][v], item["patches1"][v].roll(1, 0))
    assert pos.median() > 0.9 and (pos > shuffled + 0.05).float().mean() >= 0.8


def test_target_frame_jitter_is_deterministic_and_weakens_positives(photos: Path, tmp_path: Path):
    exact = HyNetTask(hynet_train_conf(tiny_conf(photos, tmp_path))).dataset
    hard = HyNetTask(hynet_train_conf(tiny_conf(photos, tmp_path, jitter="hard"))).dataset
    a, b = hard[(0, 1)], hard[(0, 1)]
    assert torch.equal(a["patches1"], b["patches1"]) and not torch.equal(a["patches1"], hard[(1, 1)]["patches1"])
    e = exact[(0, 1)]
    ve, vh = e["valid"], a["valid"]
    assert torch.equal(e["patches0"][vh], a["patches0"][vh])  # the source side is never jittered
    assert ncc(a["patches0"][vh], a["patches1"][vh]).median() < ncc(e["patches0"][ve], e["patches1"][ve]).median() - 0.02
    with pytest.raises(ConfigError, match="jitter"):
        HyNetTask(hynet_train_conf(tiny_conf(photos, tmp_path, jitter="medium")))


@pytest.mark.parametrize("mode", ["in_pair", "in_batch", "global"])
def test_loss_per_mining_mode_has_gradients(photos: Path, tmp_path: Path, mode: str):
    task = HyNetTask(hynet_train_conf(tiny_conf(photos, tmp_path, mode=mode)))
    batch = torch.utils.data.default_collate([task.dataset[(0, i)] for i in range(3)])
    loss, metrics = task.loss(batch, 0)  # global: the first loss builds the bank
    if mode == "global":
        assert task.bank is not None and task.bank.last_refresh == 0
    loss.backward()
    assert torch.isfinite(loss) and metrics["patches"] == float(batch["valid"].sum())
    grads = [p.grad for p in task.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    if mode == "global":
        assert metrics["extra_negatives_per_anchor"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in_batch", "global"])
def test_tiny_training_run_gives_weights_the_extractor_loads(photos: Path, tmp_path: Path, sacre_coeur: Path, mode: str):
    out = tmp_path / "run"
    metrics = train_hynet(tiny_conf(photos, out, mode=mode))
    assert metrics["completed"] and metrics["step"] == 2
    assert (out / "model.pt").is_file() and (out / "log.csv").is_file() and (out / "curves.png").is_file()
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    assert meta["model"] == "hynet" and meta["config"]["patches"]["per_pair"] == 16 and meta["train_photos"] == 6
    extractor = HyNetExtractor({"max_keypoints": 50}, weights=out / "model.pt")
    image = torch.from_numpy(read_image(sorted(sacre_coeur.glob("*.jpg"))[0], grayscale=True))[None, None]
    feats = extractor(image)
    assert feats["descriptors"].shape[0] == 128 and feats["descriptors"].shape[1] > 0


def test_shipped_hynet_config_loads():
    conf = hynet_train_conf(load_train_config("hynet"))
    assert conf.task == "hynet" and conf.mining.mode == "in_batch"
    assert conf.train.batch_size * conf.patches.per_pair == 1024
