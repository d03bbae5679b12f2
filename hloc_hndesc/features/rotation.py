"""Test-time rotations for upright local extractors.

Networks such as R2D2 learn descriptors of upright patches: they match across small in-plane
rotations only (BENCHMARKS.md, "Robustness to in-plane rotation"). Extracting from the image
*and* from its rotations by multiples of 90 degrees, and keeping every view's keypoints in the
input's frame, lets hloc's unchanged matchers pair each keypoint of one image with the view of
the other image that is closest to upright relative to it. Rotations by 90 degrees are exact
(pixels are permuted, nothing is resampled), so the keypoints of the view at 0 degrees are
exactly those of the plain extractor.

Convention: a view at ``angle`` is the image rotated by ``angle`` degrees clockwise on screen
(x right, y down); pixel centres are at integer coordinates (hloc's convention), so mapping a
view's keypoints back is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RIGHT_ANGLES = (0, 90, 180, 270)


def check_rotations(angles: Sequence[int] | None) -> tuple[int, ...]:
    """Validate a list of view angles (distinct multiples of 90 in [0, 360)); return it as a tuple."""
    if angles is None or isinstance(angles, (str, bytes)) or len(angles) == 0:
        raise ValueError(f"rotations must be a non-empty list of angles among {RIGHT_ANGLES}, got {angles!r}")
    out = []
    for angle in angles:
        if isinstance(angle, bool) or not float(angle).is_integer() or int(angle) not in RIGHT_ANGLES:
            raise ValueError(f"rotations: {angle!r} is not one of {RIGHT_ANGLES} (degrees, clockwise)")
        out.append(int(angle))
    if len(set(out)) != len(out):
        raise ValueError(f"rotations: {list(angles)} repeats an angle")
    return tuple(out)


def rotate_image(image: torch.Tensor, angle: int) -> torch.Tensor:
    """The (B, C, H, W) ``image`` rotated clockwise by ``angle`` (a multiple of 90) degrees."""
    return torch.rot90(image, k=-(angle // 90) % 4, dims=(-2, -1))


def keypoints_to_input(keypoints: torch.Tensor, angle: int, size: tuple[int, int]) -> torch.Tensor:
    """Map (N, 2) x, y keypoints of the view at ``angle`` back to the input of ``(width, height)``."""
    width, height = size
    x, y = keypoints[:, 0], keypoints[:, 1]
    quarter = (angle // 90) % 4
    if quarter == 0:
        return keypoints.clone()
    if quarter == 1:
        return torch.stack([y, (height - 1) - x], -1)
    if quarter == 2:
        return torch.stack([(width - 1) - x, (height - 1) - y], -1)
    return torch.stack([(width - 1) - y, x], -1)
