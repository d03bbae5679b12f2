"""Self-supervised HOW training: contrastive loss, covisibility, negatives, whitening, a tiny run, resume."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycolmap
import pytest
from conftest import photo_tensor
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from hloc_hndesc.config import ConfigError
from hloc_hndesc.features.base import imagenet_normalize
from hloc_hndesc.features.how import HOWExtractor
from hloc_hndesc.training.how import (
    HOWTask,
    covisible_photos,
    hard_negatives,
    how_train_conf,
    mining_groups,
    retrieval_map,
    train_how,
)
from hloc_hndesc.training.data.photos import PhotoPool
from hloc_hndesc.training.losses import contrastive_loss
from hloc_hndesc.training.tasks import TASKS, load_train_config


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads wait on each other (~30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir: Path) -> Path:
    """Eight training photos: six single-photo groups and a 'scene' folder of two frames (one group)."""
    root = tmp_path_factory.mktemp("how_photos") / "train_natural"
    for sub, count in (("bsd300", 6), ("tum_freiburg", 2)):
        (root / sub).mkdir(parents=True)
        for path in sorted((data_dir / "train_natural" / sub).glob("*.jpg"))[:count]:
            shutil.copy(path, root / sub / path.name)
    return root


def tiny_conf(photos: Path, out: Path, **extra) -> dict:
    conf = {
        "data": {
            "image_dirs": [str(photos)], "crop": 64, "max_size": 128, "val_fraction": 0.0,
            "stylize_probability": 0.0, "photometric": {"enabled": False},
        },
        "negatives": 3,
        "mining": {"image_size": 64},
        "whitening": {"image_size": 128, "features_per_image": 64},
        "validation": {"photos": 3, "views": 3},
        "train": {
            "steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 1, "output_dir": str(out),
            "progress": False, "tensorboard": False, "lr": 1e-3,
        },
    }
    for key, value in extra.items():
        conf[key] = {**conf.get(key, {}), **value} if isinstance(value, dict) else value
    return conf


def write_sfm_model(folder: Path, names: list[str], tracks: list[list[int]]) -> Path:
    """A COLMAP model of ``names`` whose 3D points are seen by the listed images (indices into names)."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "SIMPLE_PINHOLE", 100.0, 64, 64))
    for i, name in enumerate(names, start=1):
        points = [pycolmap.Point2D(np.array([float(k % 64), float(k // 64)])) for k in range(len(tracks))]
        image = pycolmap.Image(name=name, points2D=points, camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    for k, seen in enumerate(tracks):
        track = pycolmap.Track()
        for i in seen:
            track.add_element(i + 1, k)
        rec.add_point3D(np.array([0.0, 0.0, 5.0 + k]), track)
    folder.mkdir(parents=True, exist_ok=True)
    rec.write(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------
# Loss, negatives, covisibility, mAP
# ---------------------------------------------------------------------------------------------


def test_contrastive_loss_matches_hand_computation_and_pulls_the_right_way():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    others = torch.tensor([
        [[0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]],  # positive, then negatives at 1.414, 0, 2
        [[0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [9.0, 9.0]],  # positive at 0; last entry invalid
    ])
    positive = torch.tensor([[True, False, False, False], [True, False, False, False]])
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    loss, stats = contrastive_loss(a, others, positive, valid, margin=0.8)
    d = lambda x, y: float(torch.dist(x, y))  # noqa: E731
    m = 0.8
    tuple0 = 0.5 * d(a[0], others[0, 0]) ** 2 + sum(0.5 * max(0.0, m - d(a[0], others[0, k])) ** 2 for k in (1, 2, 3))
    tuple1 = 0.5 * d(a[1], others[1, 0]) ** 2 + sum(0.5 * max(0.0, m - d(a[1], others[1, k])) ** 2 for k in (1, 2))
    assert float(loss) == pytest.approx((tuple0 + tuple1) / 2, abs=1e-6)
    assert tuple0 == pytest.approx(0.5 * 0.8 + 0.5 * 0.64)  # |a-p|^2 = 0.8; the duplicate negative costs m^2 / 2
    assert float(stats["active_negatives"]) == pytest.approx(2 / 5)  # d = 0 and d(0,1 vs .6,.8) = 0.632 < 0.8
    # gradients: the positive is pulled towards the anchor, a close negative pushed away
    x = others.clone().requires_grad_()
    contrastive_loss(a, x, positive, valid, margin=0.8)[0].backward()
    assert float((x.grad[0, 0] * (a[0] - others[0, 0])).sum()) < 0  # descent moves p towards a
    assert float((x.grad[1, 1] * (a[1] - others[1, 1])).sum()) > 0  # descent moves n away from a
    assert torch.isfinite(x.grad).all() and x.grad[1, 3].abs().sum() == 0 and x.grad[0, 3].abs().sum() == 0


def test_hard_negatives_are_the_hardest_outside_the_group_one_per_group():
    g = torch.Generator().manual_seed(0)
    desc = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    groups = torch.tensor([i // 3 if i < 12 else i for i in range(30)])  # four groups of 3, then singletons
    table = hard_negatives(desc, groups, 5)
    sim = desc @ desc.t()
    for q in range(30):
        row = table[q].tolist()
        assert -1 not in row and len({int(groups[j]) for j in row}) == 5
        assert all(groups[j] != groups[q] for j in row)
        # brute force: walk photos by similarity, keep the first of each new group
        expected, taken = [], {int(groups[q])}
        for j in torch.argsort(sim[q], descending=True).tolist():
            if int(groups[j]) not in taken:
                expected.append(j)
                taken.add(int(groups[j]))
        assert row == expected[:5]
    small = hard_negatives(desc[:6], groups[:6], 3)  # two groups only: one negative, then padding
    assert (small[:, 0] >= 0).all() and (small[:, 1:] == -1).all()


def test_covisibility_from_an_sfm_model_and_merged_groups(tmp_path: Path):
    names = ["train_natural/a/x.jpg", "train_natural/a/y.jpg", "train_natural/b/z.jpg", "train_natural/b/w.jpg"]
    # SfM names: folder-relative; x-y share 3 points, y-z share 1 point, v.jpg is not a training photo
    sfm_names = ["a/x.jpg", "a/y.jpg", "b/z.jpg", "v.jpg"]
    model = write_sfm_model(tmp_path / "sfm", sfm_names, [[0, 1], [0, 1], [0, 1, 3], [1, 2]])
    assert covisible_photos(model, names, 3) == [[1], [0], [], []]
    assert covisible_photos(model, names, 1) == [[1], [0, 2], [1], []]
    assert mining_groups([0, 1, 2, 3], covisible_photos(model, names, 3)) == [0, 0, 1, 2]
    assert mining_groups([0, 1, 1, 2], [[1], [0], [], []]) == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="several"):
        covisible_photos(model, ["p/a/x.jpg", "q/a/x.jpg"], 1)


def test_retrieval_map_hand_cases():
    desc = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    assert retrieval_map(desc, torch.tensor([0, 0, 1, 1]))["map"] == pytest.approx(1.0)
    # queries 0 and 2 find their positive at rank 2 (AP 1/2), queries 1 and 3 at rank 3 (AP 1/3)
    out = retrieval_map(desc, torch.tensor([0, 1, 1, 0]))
    assert out["map"] == pytest.approx(5 / 12) and out["top1"] == 0.0
    # ignoring other labels of the same group: query 0 ranks its positive 2 first (1 is ignored),
    # query 2 ranks 3 above its positive 0 (AP 1/2); queries 1 and 3 have no positive
    desc = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    labels, groups = torch.tensor([0, 1, 0, 2]), torch.tensor([0, 0, 0, 1])
    ignored = retrieval_map(desc, labels, groups)
    assert ignored["map"] == pytest.approx(0.75) and ignored["top1"] == pytest.approx(0.5)
    assert retrieval_map(desc, labels)["map"] == pytest.approx((1 / 2 + 1 / 3) / 2)


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------


def test_tuples_positives_negatives_and_whitening(photos: Path, tmp_path: Path):
    names = sorted(f"train_natural/{p.parent.name}/{p.name}" for p in photos.rglob("*.jpg"))
    # photos 0 and 1 (two bsd300 photos, otherwise their own groups) are covisible in the SfM model
    model = write_sfm_model(tmp_path / "sfm", [n.split("/", 1)[1] for n in names[:2]], [[0, 1]] * 4)
    sfm = {"model": str(model), "min_shared_points": 4, "probability": 1.0}
    conf = how_train_conf(tiny_conf(photos, tmp_path, sfm=sfm))
    torch.manual_seed(0)
    task = HOWTask(conf)
    ds = task.dataset
    assert list(ds.pool.names) == names and ds.covisible[0] == [1] and ds.groups[0] == ds.groups[1]
    item = ds[(0, 0)]
    assert item["covisible"] and not item["stylized"]
    photo1 = ds._photo(1)
    crop = (item["positive"].permute(1, 2, 0).numpy() * 255).round().astype(np.float32)
    assert cv2.minMaxLoc(cv2.matchTemplate(photo1.astype(np.float32), crop, cv2.TM_SQDIFF))[0] < 1.0
    other = ds[(0, 2)]  # no covisible photo: the synthetic view
    assert not other["covisible"] and other["positive"].shape == other["anchor"].shape
    # whitening: PCA of the setup's local descriptors, fixed, outside the optimiser
    task.setup(SimpleNamespace(device=torch.device("cpu"), start_step=0))
    net = task.model
    assert task.whitened and not any(p.requires_grad for p in net.dim_reduction.parameters())
    net.eval()
    with torch.no_grad():
        local = torch.cat([
            net.forward_local(task._input(im), (1.0,), 64, reduce=False)["descriptors"][0] for im in task.photos(128)
        ])
        white = local @ net.dim_reduction.weight[:, :, 0, 0].t() + net.dim_reduction.bias
    cov = torch.cov(white.t().double())
    assert white.mean(0).abs().max() < 1e-3
    assert torch.allclose(cov, torch.eye(cov.shape[0], dtype=torch.float64), atol=2e-2)
    # negatives: mined per epoch, never in the anchor's mining group (covisible photos merged)
    batch = default_collate([ds[(0, i)] for i in (2, 6)])  # synthetic positives
    weight = net.dim_reduction.weight.clone()
    net.train()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    losses = []
    for step in range(4):
        loss, metrics = task.loss(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert list(task.negatives) == [0] and metrics["negatives_per_tuple"] == 3.0
    table, groups = task.negatives[0], torch.as_tensor(ds.groups)
    assert (table >= 0).all() and (groups[table] != groups[:, None]).all()
    assert all(len(set(groups[row].tolist())) == 3 for row in table)
    assert 1 not in table[0].tolist() and 0 not in table[1].tolist()
    assert losses[-1] < 0.5 * losses[0], losses
    assert torch.equal(net.dim_reduction.weight, weight)
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    # a batch straddling epochs 1 and 2 mines both (with the current model) and drops epoch 0
    task.loss(default_collate([ds[(1, 3)], ds[(2, 4)]]), 4)
    assert sorted(task.negatives) == [1, 2]


def test_tiny_run_resumes_exactly_and_gives_weights_the_extractors_load(
    photos: Path, tmp_path: Path, sacre_coeur: Path
):
    """Epochs of 4 tuples (batch 2): negatives mined at updates 0 and 2. A run cut at update 1 and
    resumed equals the uninterrupted one (epoch 0's restored negatives are used, not re-mined)."""
    def conf(out: Path) -> dict:
        return tiny_conf(photos, out, data={"val_fraction": 0.3, "items_per_epoch": 4}, train={"validate_every": 4})

    whole = train_how(conf(tmp_path / "whole"))
    assert whole["completed"] and whole["step"] == 4
    cut = conf(tmp_path / "cut")
    cut["train"]["until_step"] = 1
    assert train_how(cut)["step"] == 1
    cut["train"]["until_step"] = None
    resumed = train_how(cut)
    assert resumed["start_step"] == 1 and resumed["completed"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    val = whole["val"]
    assert 0 < val["map"] <= 1 and 0 <= val["top1"] <= 1 and val["views"] >= 6
    meta = a["meta"]
    assert meta["model"] == "how" and meta["arch"] == "how" and meta["step"] == 4 and meta["dim"] == 128
    train_photos = len(PhotoPool({"image_dirs": [str(photos)], "val_fraction": 0.3}, "train"))
    assert meta["trunk_layers"] == 3 and meta["train_photos"] == train_photos
    assert meta["supervision"].startswith("self-supervised")
    # both extractors load the weights; the global one gives the trained network's descriptor
    image = photo_tensor(sacre_coeur, 128)
    glob = HOWExtractor({"scales": [1.0], "max_size": 1024}, weights=tmp_path / "whole" / "model.pt")
    net = glob.net
    with torch.no_grad():
        expected = net.forward_global(imagenet_normalize(image), (1.0,))[0]
    got = glob(image)["global_descriptor"]
    assert torch.allclose(got, expected, atol=1e-6) and got.norm() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(net.dim_reduction.weight, a["state_dict"]["dim_reduction.weight"])
    local_conf = {"mode": "local", "scales": [1.0], "features_num": 20}
    local = HOWExtractor(local_conf, weights=tmp_path / "whole" / "model.pt")
    feats = local(image)
    assert feats["descriptors"].shape == (128, 20) and feats["keypoints"].shape == (20, 2)


def test_config_checks_and_shipped_config():
    assert TASKS["how"] == ("hloc_hndesc.training.how", "train_how")
    shipped = how_train_conf(load_train_config("how"))
    assert shipped.negatives == 5 and shipped.train.batch_size == 5 and shipped.loss.margin == 0.8
    assert shipped.train.optimizer == "adam" and shipped.train.weight_decay == 1e-4
    for key in ("backbone", "trunk_layers", "dim", "smoothing_kernel"):
        assert shipped.model[key] == HOWExtractor.default_conf[key]
    with pytest.raises(ConfigError):
        how_train_conf({"negative": 5})
    with pytest.raises(ConfigError):
        how_train_conf({"sfm": {"min_shared_point": 3}})
    with pytest.raises(ConfigError, match="margin"):
        how_train_conf({"loss": {"margin": 0.0}})
    with pytest.raises(ConfigError, match="probability"):
        how_train_conf({"sfm": {"probability": 1.5}})
