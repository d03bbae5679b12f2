"""Our R2D2 network and extractor against the official code and weights (optional).

Skipped unless ``HLOC_HNDESC_R2D2_OFFICIAL`` names an official checkpoint (e.g.
``r2d2_WASF_N16.pt`` or ``faster2d2_WASF_N16.pt``) and ``HLOC_HNDESC_R2D2_REPO`` an
official r2d2 work tree. The official code is imported from that path, never copied.
Its ``extract.py`` imports torchvision only for ``norm_RGB``; where torchvision is
absent that one module is replaced by a stub and the normalisation is done here the
same way (uint8 / 255, minus mean, divided by std, in float32).
"""

from __future__ import annotations

import functools
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hloc_hndesc.features.base import IMAGENET_MEAN, IMAGENET_STD
from hloc_hndesc.features.r2d2 import R2D2Extractor, official_pickle_globals
from hloc_hndesc.models.r2d2 import parse_official_net_name, r2d2_from_official_checkpoint

CKPT = os.environ.get("HLOC_HNDESC_R2D2_OFFICIAL")
REPO = os.environ.get("HLOC_HNDESC_R2D2_REPO")

pytestmark = pytest.mark.skipif(
    not (CKPT and REPO and Path(CKPT).is_file() and (Path(REPO or ".") / "nets" / "patchnet.py").is_file()),
    reason="set HLOC_HNDESC_R2D2_OFFICIAL=<official .pt> and HLOC_HNDESC_R2D2_REPO=<r2d2 work tree>",
)

CONF = {"min_size": 160, "max_size": 1024, "max_keypoints": 0}
_OFFICIAL_MODULES = ("nets", "tools", "extract")


@pytest.fixture(scope="module")
def official():
    """The official ``nets.patchnet`` and ``extract`` modules, removed again afterwards."""
    saved_path = list(sys.path)
    sys.path.insert(0, str(REPO))
    stubbed = False
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tools.dataloader")
        stub.norm_RGB = None
        sys.modules["tools.dataloader"] = stub
        stubbed = True
    try:
        import extract
        from nets import patchnet
        yield types.SimpleNamespace(patchnet=patchnet, extract=extract, stubbed=stubbed)
    finally:
        sys.path[:] = saved_path
        for name in list(sys.modules):
            if name.split(".")[0] in _OFFICIAL_MODULES:
                del sys.modules[name]


@pytest.fixture(scope="module")
def checkpoint():
    with official_pickle_globals():
        return torch.load(CKPT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def official_net(official, checkpoint):
    """The official network built the official way, the class chosen by allow-list."""
    arch = parse_official_net_name(checkpoint["net"])
    cls = {"full": official.patchnet.Quad_L2Net_ConfCFS, "slim": official.patchnet.Fast_Quad_L2Net_ConfCFS}
    net = functools.partial(cls[arch.variant], mchan=arch.mchan)()
    net.load_state_dict({k.replace("module.", ""): v for k, v in checkpoint["state_dict"].items()})
    return net.eval()


@pytest.fixture(scope="module")
def rgb(sacre_coeur) -> np.ndarray:
    image = cv2.imread(str(sorted(sacre_coeur.glob("*.jpg"))[1]), cv2.IMREAD_COLOR)[..., ::-1]
    scale = 320 / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


def _official_input(rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return x.sub(mean).div(std)[None]


def test_network_reproduces_official(official_net, checkpoint, rgb):
    ours = r2d2_from_official_checkpoint(checkpoint)
    x = _official_input(rgb)
    with torch.no_grad():
        ref = official_net(imgs=[x])
        out = ours(x)
    for key in ("descriptors", "reliability", "repeatability"):
        assert out[key].shape == ref[key][0].shape
        torch.testing.assert_close(out[key], ref[key][0], atol=1e-5, rtol=0)
    assert (ref["reliability"][0] >= 0.7).any() and (ref["repeatability"][0] >= 0.7).any()


def _level_ratios(height: int, width: int, scale_factor: float = 2**0.25) -> dict[float, tuple[float, float]]:
    """Scale value (32 / s as float32) -> (W / nw, H / nh) of the official resize cascade."""
    ratios, s = {}, 1.0
    while s + 0.001 >= CONF["min_size"] / max(height, width):
        key = float(torch.tensor(32 / s, dtype=torch.float32))
        ratios[key] = (width / round(width * s), height / round(height * s))
        s /= scale_factor
    return ratios


def test_extractor_matches_official_keypoints(official, official_net, rgb):
    height, width = rgb.shape[:2]
    detector = official.extract.NonMaxSuppression(rel_thr=0.7, rep_thr=0.7)
    xys, desc, scores = official.extract.extract_multiscale(
        official_net, _official_input(rgb), detector, min_size=CONF["min_size"], max_size=CONF["max_size"]
    )
    assert len(xys) > 100

    extractor = R2D2Extractor(CONF, weights=CKPT)
    image = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    out = extractor(image)
    assert out["keypoints"].shape == (len(xys), 2)

    ratios = _level_ratios(height, width)
    assert len(set(xys[:, 2].tolist())) > 2, "the test image should span several pyramid levels"
    ratio = torch.tensor([ratios[float(s)] for s in out["scales"]])
    # ours: (i + 0.5) * W / nw - 0.5 ; official: i * W / nw
    as_official = out["keypoints"] + 0.5 - 0.5 * ratio
    ours = torch.cat([as_official, out["scales"][:, None]], 1)

    def order(xys_: torch.Tensor, ratio_: torch.Tensor) -> torch.Tensor:
        pix = torch.round(xys_[:, :2] / ratio_).long()
        key = (-xys_[:, 2].double()) * 1e8 + pix[:, 1] * 1e4 + pix[:, 0]
        return torch.argsort(key)

    ref_ratio = torch.tensor([ratios[float(s)] for s in xys[:, 2]])
    i_ours, i_ref = order(ours, ratio), order(xys, ref_ratio)
    torch.testing.assert_close(ours[i_ours], xys[i_ref], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["scores"][i_ours], scores[i_ref], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["descriptors"][:, i_ours], desc[i_ref].t(), atol=1e-5, rtol=0)
