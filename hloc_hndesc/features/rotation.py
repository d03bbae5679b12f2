"""Test-time rotations for upright local extractors.

Networks such as R2D2 learn descriptors of upright patches: they match across small in-plane
rotations only (BENCHMARKS.md, "Robustness to in-plane rotation"). Extracting from the image
*and* from rotated copies of it, and keeping every view's keypoints in the input's frame, lets
hloc's unchanged matchers pair each keypoint of one image with the view of the other image that
is closest to upright relative to it.

Rotations by multiples of 90 degrees are exact (pixels are permuted, nothing is resampled), so
the keypoints of the view at 0 degrees are exactly those of the plain extractor. Any other angle
is resampled (bilinear) onto a canvas that holds the whole rotated image; the canvas outside the
image is filled by the caller (the R2D2 extractor fills it with the ImageNet mean, which the
network sees as zero, like its convolutions' padding), and keypoints that map back outside the
input are dropped (:func:`inside`).

Convention: a view at ``angle`` is the image rotated by ``angle`` degrees clockwise on screen
(x right, y down) about its centre; pixel centres are at integer coordinates (hloc's convention).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from kornia.geometry.transform import warp_affine

RIGHT_ANGLES = (0, 90, 180, 270)


def check_rotations(angles: Sequence[float] | None) -> tuple[float, ...]:
    """Validate a list of view angles (distinct degrees in [0, 360)); return it as a tuple.

    Whole angles come back as ``int`` (``[0, 90.0]`` -> ``(0, 90)``).
    """
    if angles is None or isinstance(angles, (str, bytes)) or len(angles) == 0:
        raise ValueError(f"rotations must be a non-empty list of angles in [0, 360) degrees, got {angles!r}")
    out: list[float] = []
    for angle in angles:
        if isinstance(angle, bool) or not isinstance(angle, numbers.Real) or not 0 <= angle < 360:
            raise ValueError(f"rotations: {angle!r} is not an angle in [0, 360) (degrees, clockwise)")
        out.append(int(angle) if float(angle).is_integer() else float(angle))
    if len(set(out)) != len(out):
        raise ValueError(f"rotations: {list(angles)} repeats an angle")
    return tuple(out)


def is_right_angle(angle: float) -> bool:
    """Whether the view at ``angle`` is an exact pixel permutation (a multiple of 90 degrees)."""
    return float(angle) in RIGHT_ANGLES


def view_size(angle: float, size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` of the view at ``angle`` of an input of ``(width, height)``."""
    width, height = size
    if is_right_angle(angle):
        return size if angle % 180 == 0 else (height, width)
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    # pixel centres of the rotated input span (W - 1) c + (H - 1) s; 1e-6 absorbs rounding of cos/sin
    return (math.ceil((width - 1) * c + (height - 1) * s - 1e-6) + 1, math.ceil((width - 1) * s + (height - 1) * c - 1e-6) + 1)


def view_from_input(angle: float, size: tuple[int, int]) -> torch.Tensor:
    """The (2, 3) float64 affine map of input pixel coordinates to those of the view at ``angle``."""
    width, height = size
    out_w, out_h = view_size(angle, size)
    t = math.radians(angle)
    rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    centre_in = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    centre_out = torch.tensor([(out_w - 1) / 2, (out_h - 1) / 2], dtype=torch.float64)
    return torch.cat([rot, (centre_out - rot @ centre_in)[:, None]], 1)


def rotate_image(image: torch.Tensor, angle: float, fill: Sequence[float] | None = None) -> torch.Tensor:
    """The (B, C, H, W) ``image`` rotated clockwise by ``angle`` degrees.

    Multiples of 90 are exact; other angles are resampled onto a canvas of :func:`view_size`,
    filled outside the image with ``fill`` (one value per channel; zeros when None).
    """
    if is_right_angle(angle):
        return torch.rot90(image, k=-(int(angle) // 90) % 4, dims=(-2, -1))
    size = (image.shape[-1], image.shape[-2])
    out_w, out_h = view_size(angle, size)
    matrix = view_from_input(angle, size).to(image)[None].expand(image.shape[0], -1, -1)
    fill_value = torch.zeros(image.shape[1]) if fill is None else torch.as_tensor(fill, dtype=torch.float32)
    return warp_affine(
        image, matrix, (out_h, out_w), mode="bilinear", padding_mode="fill", align_corners=True,
        fill_value=fill_value.to(image),
    )


def keypoints_to_input(keypoints: torch.Tensor, angle: float, size: tuple[int, int]) -> torch.Tensor:
    """Map (N, 2) x, y keypoints of the view at ``angle`` back to the input of ``(width, height)``."""
    width, height = size
    x, y = keypoints[:, 0], keypoints[:, 1]
    if not is_right_angle(angle):
        matrix = view_from_input(angle, size).to(keypoints.device)
        rot, shift = matrix[:, :2], matrix[:, 2]
        back = (keypoints.double() - shift) @ rot  # rot is orthonormal: its inverse is its transpose
        return back.to(keypoints.dtype)
    quarter = (int(angle) // 90) % 4
    if quarter == 0:
        return keypoints.clone()
    if quarter == 1:
        return torch.stack([y, (height - 1) - x], -1)
    if quarter == 2:
        return torch.stack([(width - 1) - x, (height - 1) - y], -1)
    return torch.stack([(width - 1) - y, x], -1)


def inside(keypoints: torch.Tensor, size: tuple[int, int], margin: float = 0.0) -> torch.Tensor:
    """Mask of the (N, 2) x, y ``keypoints`` at least ``margin`` px inside an image of ``(width, height)``.

    The image covers ``[-0.5, width - 0.5] x [-0.5, height - 0.5]`` (pixel centres at integers).
    """
    width, height = size
    x, y = keypoints[:, 0], keypoints[:, 1]
    lo = margin - 0.5
    return (x >= lo) & (x <= width - 0.5 - margin) & (y >= lo) & (y <= height - 0.5 - margin)
