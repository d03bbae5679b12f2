"""Bilinear sampling of dense descriptor maps at keypoints (hloc pixel convention).

Keypoints are ``(x, y)`` in the image with pixel centres at integer coordinates.
A map at stride ``s`` has cell ``(i, j)`` (row, column); where that cell sits in the
image depends on how the network was built and trained, hence two conventions:

- ``"receptive"``: cell ``j`` is centred on pixel ``s * j``. This is the exact
  receptive-field centre of ResNet-style trunks whose strided layers are odd kernels
  with "same" padding (conv 7x7/2 pad 3, maxpool 3x3/2 pad 1, conv 3x3/2 pad 1,
  conv 1x1/2): map coordinate ``u = x / s``.
- ``"corner"``: the map tiles the image, cell ``j`` covering pixels
  ``[s j - 0.5, s (j + 1) - 0.5]`` and centred on ``s j + (s - 1) / 2``: ``u =
  (x + 0.5) / s - 0.5``. With ``s = image_size / map_size`` per axis this is how
  the official CAPS / HNDesc code samples (image extent mapped onto the map extent,
  ``grid_sample`` with ``align_corners=False``).

Points beyond the outermost cell centres take the border value (no zero fade-out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Convention = Literal["receptive", "corner"]
CONVENTIONS = ("receptive", "corner")


def _stride_xy(stride: float | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    if isinstance(stride, (int, float)):
        stride = (float(stride), float(stride))
    if len(stride) != 2:
        raise ValueError(f"stride must be a number or (sx, sy), got {stride!r}")
    return like.new_tensor([float(stride[0]), float(stride[1])])


def keypoints_to_map_coords(
    keypoints: torch.Tensor, stride: float | Sequence[float], convention: Convention = "receptive"
) -> torch.Tensor:
    """Image keypoints (..., 2) -> continuous map coordinates (..., 2) (cell centres at integers)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown sampling convention {convention!r}; choose one of {CONVENTIONS}")
    s = _stride_xy(stride, keypoints)
    if convention == "receptive":
        return keypoints / s
    return (keypoints + 0.5) / s - 0.5


def map_coords_to_keypoints(
    coords: torch.Tensor, stride: float | Sequence[float], convention: Convention = "receptive"
) -> torch.Tensor:
    """Inverse of :func:`keypoints_to_map_coords`: map coordinates -> image keypoints."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown sampling convention {convention!r}; choose one of {CONVENTIONS}")
    s = _stride_xy(stride, coords)
    if convention == "receptive":
        return coords * s
    return (coords + 0.5) * s - 0.5


def sample_dense(
    features: torch.Tensor,
    keypoints: torch.Tensor,
    stride: float | Sequence[float],
    convention: Convention = "receptive",
    normalize: bool = True,
) -> torch.Tensor:
    """Bilinearly sample ``features`` (B, C, h, w) at ``keypoints`` (B, N, 2) -> (B, C, N).

    An unbatched call, features (C, h, w) or (1, C, h, w) with keypoints (N, 2),
    returns (C, N). ``stride`` is the map's stride in image pixels (a number or
    ``(sx, sy)``); ``normalize`` L2-normalises each sampled descriptor.
    """
    unbatched = keypoints.ndim == 2
    if features.ndim == 3:
        features = features[None]
    if unbatched:
        keypoints = keypoints[None]
    if features.ndim != 4 or keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(
            f"expected features (B, C, h, w) and keypoints (B, N, 2), got {tuple(features.shape)} "
            f"and {tuple(keypoints.shape)}"
        )
    if keypoints.shape[0] != features.shape[0]:
        raise ValueError(f"batch sizes differ: features {features.shape[0]}, keypoints {keypoints.shape[0]}")
    h, w = features.shape[-2:]
    coords = keypoints_to_map_coords(keypoints.to(features.dtype), stride, convention)
    size = coords.new_tensor([w, h])
    grid = (2 * coords + 1) / size - 1  # align_corners=False: cell centre j -> (2j+1)/w - 1
    out = F.grid_sample(features, grid[:, :, None], mode="bilinear", padding_mode="border", align_corners=False)
    out = out[..., 0]
    if normalize:
        out = F.normalize(out, dim=1)
    return out[0] if unbatched else out
