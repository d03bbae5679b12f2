"""The decorrelated colour space of the pixel-space stylization.

The pixel variant works in Reinhard et al.'s lαβ space (Ruderman's decorrelated
cone space): sRGB is decoded to linear light, mapped to LMS cone responses, taken to
a logarithm (so an illuminant change, a per-cone gain, becomes an offset) and rotated
onto an achromatic axis ``l`` and two opponent axes ``α`` (yellow-blue) and ``β``
(red-green). The logarithm has an offset (:data:`LOG_OFFSET`, about one 8-bit step in
linear light) so that the near-black pixels of night photos do not dominate the
statistics with quantisation noise.
"""

from __future__ import annotations

import math

import torch
from kornia.color import linear_rgb_to_rgb, rgb_to_linear_rgb

LOG_OFFSET = 0.004
_RGB_TO_LMS = torch.tensor(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_LOG_LMS_TO_LAB = torch.diag(torch.tensor([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)])) @ torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def rgb_to_lalphabeta(image: torch.Tensor) -> torch.Tensor:
    """sRGB (B, 3, H, W) in [0, 1] -> lαβ (B, 3, H, W), with :data:`LOG_OFFSET`."""
    lms = _apply(_RGB_TO_LMS, rgb_to_linear_rgb(image.clamp(0, 1)))
    return _apply(_LOG_LMS_TO_LAB, torch.log10(lms.clamp_min(0) + LOG_OFFSET))


def lalphabeta_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lalphabeta`, clamped to sRGB [0, 1]."""
    lms = 10 ** _apply(torch.linalg.inv(_LOG_LMS_TO_LAB), image) - LOG_OFFSET
    linear = _apply(torch.linalg.inv(_RGB_TO_LMS), lms).clamp(0, 1)
    return linear_rgb_to_rgb(linear).clamp(0, 1)
