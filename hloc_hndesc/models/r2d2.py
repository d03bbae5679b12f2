"""R2D2-family network: dilated L2-Net trunk with reliability and repeatability heads.

The trunk follows R2D2's ``Quad_L2Net_ConfCFS`` (Revaud et al., NeurIPS 2019): nine
convolutions kept at full resolution by dilation instead of striding, non-affine
batch norms, and the final 8x8 convolution of L2-Net replaced by three dilated 2x2
convolutions. Two 1x1 heads act on the square of the raw descriptor map:

- ``clf`` (2 channels, softmax) gives the *reliability*;
- ``sal`` (1 channel) gives the *repeatability* through softplus ``x / (1 + x)``,
  as in the official code (not a sigmoid).

The ``slim`` variant is R2D2's "faster" network (``Fast_Quad_L2Net_ConfCFS``): a 2x2
max-pooling after the third convolution halves the resolution of the six costly
layers (dilations restart at 1), and a bilinear x2 upsampling restores it at the end;
its output map is ``2 * (H // 2)`` by ``2 * (W // 2)``. ``mchan`` scales the width of
the trunk (official default 4, i.e. 32-64-128 channels); the last convolution always
outputs ``dim`` channels.

Module indices inside ``ops`` are those of the official implementation (ReLUs,
pooling and upsampling occupy the indices without parameters), so official state
dicts load strictly once DataParallel's ``module.`` prefix is removed.

This module is pure torch: official checkpoints are handled through their already
loaded dicts (:func:`arch_from_checkpoint`, :func:`r2d2_from_official_checkpoint`);
the ``net`` string of an official checkpoint is only compared to an allow-list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: official class name -> our variant
OFFICIAL_ARCHS: dict[str, str] = {
    "Quad_L2Net_ConfCFS": "full",
    "Fast_Quad_L2Net_ConfCFS": "slim",
}
VARIANTS = ("full", "slim")
#: value of ``meta["arch"]`` in this project's checkpoints of this network
META_ARCH = "r2d2"

_OFFICIAL_NET_RE = re.compile(r"(?P<name>[A-Za-z0-9_]+)\((?:mchan=(?P<mchan>[1-9][0-9]?))?\)")

# (kernel, dilation of the full variant, dilation of the slim variant) per convolution;
# batch norm after all but the last, ReLU after the first six, slim pools after the third.
_CONVS = ((3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 1), (3, 2, 1), (3, 4, 2), (2, 4, 2), (2, 8, 4), (2, 16, 8))
_WIDTHS = (8, 8, 16, 16, 32, 32, 32, 32)
_POOL_AFTER = 2
_SLIM_FACTOR = 2


class R2D2ArchError(ValueError):
    """A checkpoint describes an architecture this module does not build."""


@dataclass(frozen=True)
class R2D2Arch:
    """Hyper-parameters that fix the state-dict layout of :class:`R2D2Net`."""

    variant: str = "full"
    mchan: int = 4
    dim: int = 128

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise R2D2ArchError(f"unknown R2D2 variant {self.variant!r}; expected one of {VARIANTS}")
        if not (isinstance(self.mchan, int) and 1 <= self.mchan <= 64):
            raise R2D2ArchError(f"R2D2 mchan must be an int in [1, 64], got {self.mchan!r}")
        if not (isinstance(self.dim, int) and 1 <= self.dim <= 4096):
            raise R2D2ArchError(f"R2D2 dim must be an int in [1, 4096], got {self.dim!r}")

    def as_meta(self) -> dict[str, Any]:
        """The ``meta`` entries that record this architecture in our checkpoints."""
        return {"arch": META_ARCH, **asdict(self)}


class R2D2Net(nn.Module):
    """Dense 128-D descriptors, reliability and repeatability maps of an RGB image.

    Input: ImageNet-normalised images (B, 3, H, W). Output dict:
    ``descriptors`` (B, dim, H', W') L2-normalised, ``reliability`` and
    ``repeatability`` (B, 1, H', W') in [0, 1], ``raw_descriptors`` (B, dim, H', W')
    before normalisation; H' = H for ``full``, ``2 * (H // 2)`` for ``slim``.
    """

    def __init__(self, variant: str = "full", mchan: int = 4, dim: int = 128) -> None:
        super().__init__()
        self.arch = R2D2Arch(variant, mchan, dim)
        slim = variant == "slim"
        self.ops = nn.ModuleList()
        cin = 3
        for i, (k, dil_full, dil_slim) in enumerate(_CONVS):
            last = i == len(_CONVS) - 1
            cout = dim if last else _WIDTHS[i] * mchan
            d = dil_slim if slim else dil_full
            self.ops.append(nn.Conv2d(cin, cout, kernel_size=k, padding=(k - 1) * d // 2, dilation=d))
            if not last:
                self.ops.append(nn.BatchNorm2d(cout, affine=False))
            if i < 6:
                self.ops.append(nn.ReLU(inplace=True))
            if slim and i == _POOL_AFTER:
                self.ops.append(nn.MaxPool2d(kernel_size=_SLIM_FACTOR))
            cin = cout
        if slim:
            self.ops.append(nn.Upsample(scale_factor=_SLIM_FACTOR, mode="bilinear", align_corners=False))
        self.clf = nn.Conv2d(dim, 2, kernel_size=1)
        self.sal = nn.Conv2d(dim, 1, kernel_size=1)

    @property
    def variant(self) -> str:
        return self.arch.variant

    def trunk(self, image: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) descriptor map of normalised images (B, 3, H, W)."""
        x = image
        for op in self.ops:
            x = op(x)
        return x

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the trunk and both heads on normalised images (B, 3, H, W)."""
        x = self.trunk(image)
        energy = x**2
        reliability = F.softmax(self.clf(energy), dim=1)[:, 1:2]
        return {
            "descriptors": F.normalize(x, p=2, dim=1),
            "reliability": reliability,
            "repeatability": _softplus_ratio(self.sal(energy)),
            "raw_descriptors": x,
        }

    def detection_maps(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference path: raw descriptors and both maps, without dense normalisation.

        The two 1x1 heads run as one (3 x dim) matrix product, several times faster on
        CPU than two thin convolutions; results equal :meth:`forward` up to float
        rounding. Normalise descriptors after sampling them. Works in either memory
        format; ``channels_last`` (net and input) is faster on CPU.
        """
        x = self.trunk(image)
        weight = torch.cat([self.clf.weight, self.sal.weight]).flatten(1)
        bias = torch.cat([self.clf.bias, self.sal.bias])
        logits = F.linear((x**2).permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
        return {
            "raw_descriptors": x,
            "reliability": torch.sigmoid(logits[:, 1:2] - logits[:, 0:1]),
            "repeatability": _softplus_ratio(logits[:, 2:3]),
        }


def _softplus_ratio(logits: torch.Tensor) -> torch.Tensor:
    """R2D2's single-channel confidence: ``softplus(x) / (1 + softplus(x))``."""
    sp = F.softplus(logits)
    return sp / (1 + sp)


def parse_official_net_name(net: str) -> R2D2Arch:
    """Architecture of an official ``net`` string, by allow-list only (never evaluated).

    Accepted: ``Quad_L2Net_ConfCFS()`` and ``Fast_Quad_L2Net_ConfCFS()``, optionally with
    a single integer ``mchan=N`` argument (e.g. ``Quad_L2Net_ConfCFS(mchan=6)``).
    """
    if not isinstance(net, str):
        raise R2D2ArchError(f"official R2D2 'net' entry must be a string, got {type(net).__name__}")
    match = _OFFICIAL_NET_RE.fullmatch(net.replace(" ", ""))
    if match is None or match["name"] not in OFFICIAL_ARCHS:
        known = ", ".join(f"{name}()" for name in OFFICIAL_ARCHS)
        raise R2D2ArchError(
            f"unsupported R2D2 architecture {net[:200]!r}: only {known} "
            "(optionally with mchan=N) are accepted; the string is never evaluated"
        )
    mchan = int(match["mchan"]) if match["mchan"] else 4
    return R2D2Arch(OFFICIAL_ARCHS[match["name"]], mchan)


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> R2D2Arch:
    """Architecture implied by the keys and shapes of a (prefix-free) state dict."""
    state = strip_module_prefix(state_dict)
    try:
        first = state["ops.0.weight"]
        dim = state["clf.weight"].shape[1]
    except KeyError as err:
        raise R2D2ArchError(f"not an R2D2 state dict: missing key {err}") from None
    if first.shape[0] % _WIDTHS[0]:
        raise R2D2ArchError(f"not an R2D2 state dict: ops.0 has {first.shape[0]} channels")
    variant = "slim" if "ops.23.weight" in state else "full"
    return R2D2Arch(variant, int(first.shape[0]) // _WIDTHS[0], int(dim))


def arch_from_checkpoint(ckpt: Mapping[str, Any]) -> R2D2Arch:
    """Architecture recorded in a loaded checkpoint dict, official or ours.

    Official files carry a ``net`` string (checked against the allow-list); ours carry
    ``meta`` with ``arch == "r2d2"``, ``variant``, ``mchan``, ``dim`` (see
    :meth:`R2D2Arch.as_meta`); a bare state dict is recognised by its shapes. The result
    is checked against the tensors so that a wrong record fails with a clear message.
    """
    state = ckpt.get("state_dict", ckpt)
    if "net" in ckpt:
        arch = parse_official_net_name(ckpt["net"])
    elif isinstance(ckpt.get("meta"), Mapping) and "arch" in ckpt["meta"]:
        meta = ckpt["meta"]
        if meta["arch"] != META_ARCH:
            raise R2D2ArchError(f"checkpoint is of architecture {meta['arch']!r}, not {META_ARCH!r}")
        try:
            arch = R2D2Arch(str(meta["variant"]), int(meta["mchan"]), int(meta["dim"]))
        except KeyError as err:
            raise R2D2ArchError(f"R2D2 checkpoint meta lacks {err}") from None
    else:
        return infer_arch(state)
    found = infer_arch(state)
    if found != arch:
        raise R2D2ArchError(f"checkpoint records {arch} but its tensors are those of {found}")
    return arch


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key map: drop DataParallel's ``module.`` prefix, keep everything else."""
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def r2d2_from_official_checkpoint(ckpt: Mapping[str, Any]) -> R2D2Net:
    """Build the network named by an official checkpoint dict and load it strictly (eval mode)."""
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise R2D2ArchError("official R2D2 checkpoint must hold a 'state_dict' dict")
    net = R2D2Net(**asdict(arch_from_checkpoint(ckpt)))
    net.load_state_dict(strip_module_prefix(ckpt["state_dict"]), strict=True)
    return net.eval()
