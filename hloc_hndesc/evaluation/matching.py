"""Descriptor matching for the benchmarks, equal to hloc's ``NN-mutual`` and ``NN-ratio``.

Descriptors are in hloc's layout, (D, N), L2-normalised. Distances are Euclidean,
``sqrt(2 - 2 cos)``; the ratio test compares the nearest to the second-nearest distance
(hloc applies it as ``d1^2 <= r^2 d2^2``) and, like hloc's ``NN-ratio``, also keeps only
mutual nearest neighbours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MATCHERS = ("mutual", "ratio")
#: the hloc ``match_features`` conf equal to each matcher.
HLOC_MATCHERS = {"ratio": "NN-ratio", "mutual": "NN-mutual"}
#: rows of the similarity matrix computed at once (bounds memory for 10k x 10k).
CHUNK = 4096


def _nearest(d0: torch.Tensor, d1: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` similarities and indices in ``d1`` of every column of ``d0``."""
    sims, idx = [], []
    for start in range(0, d0.shape[1], CHUNK):
        s = d0[:, start : start + CHUNK].T @ d1
        top = s.topk(min(k, d1.shape[1]), dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)


def match_descriptors(
    desc0: np.ndarray | torch.Tensor, desc1: np.ndarray | torch.Tensor, matcher: str = "mutual", ratio: float = 0.8
) -> np.ndarray:
    """(M, 2) index pairs ``(i0, i1)`` between (D, N0) and (D, N1) descriptors."""
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; known: {', '.join(MATCHERS)}")
    d0 = torch.as_tensor(np.asarray(desc0), dtype=torch.float32)
    d1 = torch.as_tensor(np.asarray(desc1), dtype=torch.float32)
    if d0.ndim != 2 or d1.ndim != 2 or d0.shape[0] != d1.shape[0]:
        raise ValueError(f"expected (D, N) descriptors of the same D, got {tuple(d0.shape)} and {tuple(d1.shape)}")
    if d0.shape[1] == 0 or d1.shape[1] == 0:
        return np.zeros((0, 2), np.int64)
    need_second = matcher == "ratio"
    sim0, nn0 = _nearest(d0, d1, 2 if need_second else 1)
    _, nn1 = _nearest(d1, d0, 1)
    i0 = torch.arange(d0.shape[1])
    keep = nn1[nn0[:, 0], 0] == i0
    if need_second and sim0.shape[1] == 2:
        dist = (2 - 2 * sim0.clamp(-1, 1)).clamp_min(0)
        keep &= dist[:, 0] <= ratio**2 * dist[:, 1]
    return torch.stack([i0[keep], nn0[keep, 0]], 1).numpy().astype(np.int64)


def hloc_matcher_conf(matcher: str) -> dict[str, Any]:
    """hloc's ``match_features`` conf of our matcher name (``ratio`` -> NN-ratio, ``mutual`` -> NN-mutual)."""
    from hloc import match_features

    if matcher not in HLOC_MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; known: {', '.join(HLOC_MATCHERS)}")
    return match_features.confs[HLOC_MATCHERS[matcher]]
