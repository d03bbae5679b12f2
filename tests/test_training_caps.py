"""HNDesc-CAPS training: DoG anchors and their positives, the extractor's sampling, mining, a tiny run, resume."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import h5py
import pytest
from conftest import photo_tensor
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.caps import CAPSExtractor, join_caps
from hloc_hndesc.training import caps as caps_training
from hloc_hndesc.training.caps import HNDescCAPSTask, hndesc_caps_train_conf, train_hndesc_caps
from hloc_hndesc.training.r2d2 import sample_maps
from hloc_hndesc.training.tasks import TASKS, load_train_config
from hloc_hndesc.weights import save_checkpoint



@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads wait on each other (~30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir: Path) -> Path:
    """Six training photos in two folders, one of them a 'scene' folder (one group)."""
    root = tmp_path_factory.mktemp("caps_photos") / "train_natural"
    for sub, count in (("bsd300", 4), ("tum_freiburg", 2)):
        (root / sub).mkdir(parents=True)
        for path in sorted((data_dir / "train_natural" / sub).glob("*.jpg"))[:count]:
            shutil.copy(path, root / sub / path.name)
    return root


def tiny_conf(photos: Path, out: Path, crop: int = 64, **mining) -> dict:
    return {
        "data": {
            "image_dirs": [str(photos)], "crop": crop, "max_size": 160, "val_fraction": 0.0,
            "stylize_probability": 0.0, "photometric": {"enabled": False},
        },
        "keypoints": {"max_keypoints": 40, "border": 2},
        "mining": {"mode": "in_batch", "top_k": 8, **mining},
        "bank_image_size": 96,
        "validation": {"pairs": 2},
        "train": {
            "steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 2, "output_dir": str(out),
            "progress": False, "tensorboard": False, "lr": 1e-3,
        },
    }


def test_positives_are_correspondences_and_sampling_is_the_extractors(photos: Path, tmp_path: Path):
    torch.manual_seed(0)
    task = HNDescCAPSTask(hndesc_caps_train_conf(tiny_conf(photos, tmp_path, crop=96)))
    item = task.dataset[(0, 1)]
    batch = default_collate([item])
    task.model.eval()
    with torch.no_grad():
        corr = task.correspondences(batch)
    n = corr["pair"].shape[0]
    assert n >= 8 and int(item["keypoints0_valid"].sum()) >= n
    # positives: the photo content around H(x0) in image1 is the content around x0 in image0
    blur = lambda im: F.avg_pool2d(im[None], 5, 1, 2)  # noqa: E731
    at0 = sample_maps(blur(item["image0"]), corr["kpts0"][None])[0]
    at1 = sample_maps(blur(item["image1"]), corr["kpts1"][None])[0]
    shuffled = at1[torch.roll(torch.arange(n), 1)]
    assert (at0 - at1).abs().mean() < 0.03 < (at0 - shuffled).abs().mean()
    # the training descriptors are the extractor's, level by level
    save_checkpoint(task.model, tmp_path / "net.pt")
    extractor = CAPSExtractor({"max_keypoints": 40}, weights=tmp_path / "net.pt")
    kpts = corr["kpts0"]
    expected = extractor.describe(item["image0"][None], kpts)
    with torch.no_grad():
        got = join_caps([d[0] for d in task.describe(item["image0"][None], kpts[None])], dim=1).t()
        assert torch.allclose(got, expected, atol=1e-5)
        joint = join_caps([corr["desc_a"][lvl] for lvl in ("coarse", "fine")], dim=1).t()
        assert torch.allclose(joint, expected, atol=1e-5)
    # the keypoints are the extractor's DoG keypoints of image0
    detected = extractor.detect(item["image0"][None])["keypoints"]
    assert torch.equal(item["keypoints0"][item["keypoints0_valid"]], detected)
    # identity pair: every keypoint is its own positive, with identical descriptors
    same = dict(batch, image1=batch["image0"], H_0to1=torch.eye(3, dtype=torch.float64)[None])
    with torch.no_grad():
        ident = task.correspondences(same)
    assert torch.allclose(ident["kpts0"], ident["kpts1"])
    for level in ("coarse", "fine"):
        assert torch.allclose(ident["desc_a"][level], ident["desc_p"][level], atol=1e-6)


@pytest.mark.parametrize("mode", ["in_pair", "in_batch", "global"])
def test_loss_per_mining_mode_respects_radius_and_groups_with_gradients(
    photos: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
):
    torch.manual_seed(0)
    conf = tiny_conf(photos, tmp_path, mode=mode, exclusion_radius=6.0, bank={"locals_per_image": 32})
    task = HNDescCAPSTask(hndesc_caps_train_conf(conf))
    seen: list = []
    original = caps_training.select_negatives

    def spy(conf, desc_a, desc_p, pair_ids, groups, kpts_p=None, bank=None, image_ids=None):
        result = original(conf, desc_a, desc_p, pair_ids, groups, kpts_p, bank, image_ids)
        seen.append(dict(
            conf=conf, pair=pair_ids, groups=groups, kpts=kpts_p, photos=image_ids, negatives=result, bank=bank
        ))
        return result

    monkeypatch.setattr(caps_training, "select_negatives", spy)
    batch = default_collate([task.dataset[(0, i)] for i in (0, 4)])  # photo 4 is a tum_freiburg frame
    loss, metrics = task.loss(batch, 0)
    loss.backward()
    assert len(seen) == 2  # one AP loss per level
    for level, call in zip(("coarse", "fine"), seen):
        mask, pair, groups, kpts = call["negatives"].mask, call["pair"], call["groups"], call["kpts"]
        i, j = mask.nonzero(as_tuple=True)
        assert len(i) > 0 and (mask.sum(1) <= 8).all()
        if mode == "in_pair":
            radius = 24.0 if level == "coarse" else 6.0  # coarse_exclusion_radius vs mining.exclusion_radius
            assert float(call["conf"].exclusion_radius) == radius
            assert (pair[i] == pair[j]).all() and ((kpts[i] - kpts[j]).norm(dim=1) >= radius).all()
        else:
            assert (pair[i] != pair[j]).all() and (groups[i] != groups[j]).all()
        if mode == "global":
            bank = call["bank"]
            assert bank is task.banks[level] and bank.last_refresh == 0
            assert metrics[f"{level}_extra_negatives_per_anchor"] > 0
            neighbours = bank.neighbours(call["photos"])
            pool_groups = torch.as_tensor(task.dataset.pool.groups)
            own = pool_groups[call["photos"]]
            assert ((neighbours < 0) | (pool_groups[neighbours.clamp(min=0)] != own[:, None])).all()
        assert 0.0 <= metrics[f"{level}_ap"] <= 1.0 and math.isfinite(metrics[f"{level}_ap_loss"])
    assert loss.item() == pytest.approx(metrics["coarse_ap_loss"] + metrics["fine_ap_loss"], rel=1e-5)
    grads = {name: p.grad for name, p in task.model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["conv_coarse.conv.weight"].abs().sum() > 0 and grads["conv_fine.conv.weight"].abs().sum() > 0


def test_global_mining_from_an_external_global_features_file(photos: Path, tmp_path: Path):
    """HNDesc's "gd": the banks take their image neighbours from an hloc global-features h5."""
    torch.manual_seed(0)
    names = sorted(f"train_natural/{p.parent.name}/{p.name}" for p in photos.rglob("*.jpg"))
    glob = F.normalize(torch.randn(len(names), 16), dim=1)
    with h5py.File(tmp_path / "global.h5", "w") as fd:
        for name, row in zip(names, glob):
            fd.create_dataset(f"{name}/global_descriptor", data=row.numpy())
    bank = {"source": "external", "global_path": str(tmp_path / "global.h5"), "locals_per_image": 16}
    task = HNDescCAPSTask(hndesc_caps_train_conf(tiny_conf(photos, tmp_path, mode="global", bank=bank)))
    loss, metrics = task.loss(default_collate([task.dataset[(0, i)] for i in (0, 4)]), 0)
    assert torch.isfinite(loss) and metrics["fine_extra_negatives_per_anchor"] > 0
    for level in ("coarse", "fine"):
        assert torch.allclose(task.banks[level].global_desc, glob, atol=1e-6)
        assert task.banks[level].cache.shape[2] == 128


def test_training_steps_on_one_batch_lower_the_loss(photos: Path, tmp_path: Path):
    torch.manual_seed(0)
    task = HNDescCAPSTask(hndesc_caps_train_conf(tiny_conf(photos, tmp_path)))
    batch = default_collate([task.dataset[(0, i)] for i in (0, 1, 4)])
    optimizer = torch.optim.Adam(task.model.parameters(), lr=1e-3)
    losses = []
    for step in range(5):
        loss, _ = task.loss(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_tiny_run_resumes_exactly_and_gives_weights_the_extractor_loads(
    photos: Path, tmp_path: Path, sacre_coeur: Path
):
    """Global mining with a bank refresh every 3 updates: a run cut at update 2 and resumed equals
    the uninterrupted one (the restored bank is used, not rebuilt with the update-2 model)."""
    def conf(out: Path) -> dict:
        c = tiny_conf(photos, out, mode="global", bank={"refresh_every": 3, "locals_per_image": 32})
        c["data"]["val_fraction"] = 0.4
        c["train"]["validate_every"] = 4
        return c

    whole = train_hndesc_caps(conf(tmp_path / "whole"))
    assert whole["completed"] and whole["step"] == 4
    cut = conf(tmp_path / "cut")
    cut["train"]["until_step"] = 2
    first = train_hndesc_caps(cut)
    assert first["step"] == 2 and not first["completed"]
    cut["train"]["until_step"] = None
    resumed = train_hndesc_caps(cut)
    assert resumed["start_step"] == 2 and resumed["completed"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    val = whole["val"]
    assert val["pairs"] == 2.0 and 0 <= val["ap"] <= 1 and 0 <= val["coarse_ap"] <= 1 and 0 <= val["fine_ap"] <= 1
    assert "mma" in val and val["matches"] > 0
    meta = a["meta"]
    assert meta["model"] == "hndesc-caps" and meta["arch"] == "caps" and meta["step"] == 4
    assert meta["backbone"] == "resnet18" and meta["decoder_channels"] == [128, 128] and meta["sampling"] == "corner"
    assert meta["train_photos"] == 4 and meta["config"]["mining"]["mode"] == "global"
    # the shipped extractor loads the weights and describes as the trained network does
    extractor = CAPSExtractor({"max_keypoints": 50}, weights=tmp_path / "whole" / "model.pt")
    task = HNDescCAPSTask(hndesc_caps_train_conf(conf(tmp_path / "other")))
    task.model.load_state_dict(a["state_dict"])
    task.model.eval()
    image = photo_tensor(sacre_coeur, 128)
    feats = extractor(image)
    n = feats["keypoints"].shape[0]
    assert 0 < n <= 50 and feats["descriptors"].shape == (256, n)
    with torch.no_grad():
        mine = join_caps([d[0] for d in task.describe(image, feats["keypoints"][None])], dim=1).t()
    assert torch.allclose(mine, feats["descriptors"], atol=1e-5)


def test_config_checks_and_shipped_config():
    assert TASKS["hndesc_caps"] == ("hloc_hndesc.training.caps", "train_hndesc_caps")
    shipped = hndesc_caps_train_conf(load_train_config("hndesc_caps"))
    assert shipped.mining.mode == "global" and shipped.data.crop % 16 == 0 and shipped.train.batch_size >= 4
    assert shipped.model.backbone == CAPSExtractor.default_conf["backbone"]
    assert list(shipped.model.decoder_channels) == CAPSExtractor.default_conf["decoder_channels"]
    with pytest.raises(ConfigError, match="multiple of 16"):
        hndesc_caps_train_conf({"data": {"crop": 100}})
    with pytest.raises(ConfigError):
        hndesc_caps_train_conf({"keypoints": {"max_keypoint": 10}})
    with pytest.raises(ConfigError):
        hndesc_caps_train_conf({"loss": {"weights": {"coarse": 1.0, "medium": 1.0}}})
    with pytest.raises(ConfigError, match="not all 0"):
        hndesc_caps_train_conf({"loss": {"weights": {"coarse": 0.0, "fine": 0.0}}})
    with pytest.raises(ConfigError, match="sampling"):
        hndesc_caps_train_conf({"model": {"sampling": "center"}})
