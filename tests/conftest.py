"""Shared fixtures: the real data beside the checkout, random-weight checkpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

# `benchmarks/` (scripts at the repository root) is importable by the tests; appended, not
# prepended, so that `hloc_hndesc` still resolves to the installed package.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

DATA_DIR = Path(os.environ.get("HLOC_HNDESC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data not found at {DATA_DIR} (set HLOC_HNDESC_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def sacre_coeur(data_dir: Path) -> Path:
    return data_dir / "sacre_coeur" / "mapping"


def load_photo(path: Path, max_side: int, grayscale: bool = False) -> np.ndarray:
    """A real photo as float32 [0, 1], longer side ``max_side``."""
    from hloc_hndesc.io import read_image, resize_max

    return resize_max(read_image(path, grayscale=grayscale), max_side)


@pytest.fixture(scope="session")
def photo_small(sacre_coeur: Path) -> np.ndarray:
    """One real RGB photo, 256 px longer side."""
    return load_photo(sorted(sacre_coeur.glob("*.jpg"))[0], 256)


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write an RGB (or grey) uint8/uint16 array with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[..., ::-1]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(array))
    return path


def random_checkpoint(conf_name: str, path: Path, seed: int = 0) -> Path:
    """A checkpoint of randomly initialised weights, in our layout, for conf ``conf_name``.

    Extractors refuse to run without weights; tests pass this file as ``weights``.
    """
    from hloc_hndesc.weights import save_checkpoint

    torch.manual_seed(seed)
    meta: dict = {}
    if conf_name == "hynet":
        from hloc_hndesc.models.hynet import build_hynet

        net = build_hynet()
    elif conf_name == "hndesc-r2d2":
        from hloc_hndesc.models.r2d2 import R2D2Net

        net = R2D2Net("slim", mchan=2)
        meta = net.arch.as_meta()
    elif conf_name == "hndesc-caps":
        from hloc_hndesc.models.caps import CAPSNet

        net = CAPSNet()
    elif conf_name in ("how", "how-asmk"):
        from hloc_hndesc.models.how import HOWNet

        net = HOWNet()
    else:
        raise KeyError(conf_name)
    save_checkpoint(net, path, meta)
    return path


def randomize_batchnorm(net: torch.nn.Module) -> None:
    """Non-trivial batch-norm statistics, so eval mode differs from identity scaling."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def photo_tensor(folder: Path, max_side: int, index: int = 0) -> torch.Tensor:
    """The ``index``-th photo of ``folder`` as RGB (1, 3, h, w) in [0, 1], longer side ``max_side``."""
    image = load_photo(sorted(folder.glob("*.jpg"))[index], max_side)
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
