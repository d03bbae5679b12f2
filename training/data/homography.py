"""Random homographies graded by difficulty, point warping, validity masks and image warping.

Convention (the whole of training): x, y with pixel centres at integer coordinates, so an
image of width w spans [-0.5, w - 0.5]; ``H_0to1`` maps image0 pixel coordinates to image1
pixel coordinates, [x1, y1, 1] ~ H [x0, y0, 1]. :func:`warp_image` uses kornia's
``warp_perspective`` with ``align_corners=True``, which is exactly this convention (tested).

A sampled homography is, in image0's centred coordinates, a camera tilt (out-of-plane
rotation of a fronto-parallel plane seen by a pinhole camera of field of view ``fov``),
then a zoom, an in-plane rotation and a shift, all ranges multiplied by ``difficulty``:

    H = T(c1 + t) · R(rotation) · S(scale) · K · Tilt · K^-1 · T(-c0)

Draws that would put a point at infinity in either image, or leave less than
``min_coverage`` of image1 covered by image0, are redrawn (``max_tries``); the second half
of the tries shrinks the difficulty towards 0 so that a valid homography is always found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kornia.geometry.transform import warp_perspective
from omegaconf import DictConfig

from hloc_hndesc.config import ConfigError, merge_conf

HOMOGRAPHY_DEFAULTS: dict[str, Any] = {
    "difficulty": 1.0,  # in [0, 1]: multiplies every range below (0 = identity)
    "scale": 2.0,  # zoom factor drawn log-uniformly in [1/scale, scale] at difficulty 1
    "rotation": 180.0,  # in-plane rotation drawn uniformly in ±rotation degrees
    "tilt": 60.0,  # out-of-plane tilt drawn uniformly in [0, tilt] degrees, random axis
    "fov": 60.0,  # field of view (degrees, across the longer side) of the tilted camera
    "translation": 0.25,  # shift drawn uniformly in ±translation × image1 size
    "min_coverage": 0.25,  # least fraction of image1 whose pre-image lies inside image0
    "max_tries": 50,
}


@dataclass(frozen=True)
class HomographyParams:
    """The homography sampler's settings, checked (see :data:`HOMOGRAPHY_DEFAULTS`)."""

    difficulty: float
    scale: float
    rotation: float
    tilt: float
    fov: float
    translation: float
    min_coverage: float
    max_tries: int

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | DictConfig | None = None) -> HomographyParams:
        """Merge ``conf`` strictly into :data:`HOMOGRAPHY_DEFAULTS` and check the ranges."""
        c = merge_conf(HOMOGRAPHY_DEFAULTS, conf, "homography")
        params = cls(**{k: (int(c[k]) if k == "max_tries" else float(c[k])) for k in HOMOGRAPHY_DEFAULTS})
        checks = [
            (0.0 <= params.difficulty <= 1.0, "difficulty must be in [0, 1]"),
            (params.scale >= 1.0, "scale must be >= 1 (a zoom factor)"),
            (0.0 <= params.rotation <= 180.0, "rotation must be in [0, 180] degrees"),
            (0.0 <= params.tilt < 90.0, "tilt must be in [0, 90) degrees"),
            (0.0 < params.fov < 180.0, "fov must be in (0, 180) degrees"),
            (params.translation >= 0.0, "translation must be >= 0"),
            (0.0 <= params.min_coverage <= 1.0, "min_coverage must be in [0, 1]"),
            (params.max_tries >= 1, "max_tries must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"homography: {message}, got {params}")
        return params

    def with_difficulty(self, difficulty: float) -> HomographyParams:
        """A copy with another difficulty."""
        return HomographyParams(**{**self.__dict__, "difficulty": float(difficulty)})


def translation(tx: float, ty: float) -> np.ndarray:
    """The 3x3 homography of a shift by (tx, ty)."""
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _rotation_scale(angle: float, scale: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def tilt_homography(tilt: float, axis: float, focal: float) -> np.ndarray:
    """Homography (centred pixel coordinates) of a plane seen after tilting the camera.

    The camera turns by ``tilt`` radians about the in-plane axis at angle ``axis`` through
    the plane's centre, keeping its distance; the centre stays fixed and the Jacobian there
    is the foreshortening (1 along the axis, cos(tilt) across it).
    """
    u = np.array([math.cos(axis), math.sin(axis), 0.0])
    ux = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    rot = math.cos(tilt) * np.eye(3) + math.sin(tilt) * ux + (1 - math.cos(tilt)) * np.outer(u, u)
    plane = rot.copy()
    plane[:, 2] = (0.0, 0.0, 1.0)  # R + (C - R C) n^T for the plane z = 1 and C = (0, 0, 1)
    k = np.diag([focal, focal, 1.0])
    return k @ plane @ np.diag([1.0 / focal, 1.0 / focal, 1.0])


def _image_corners(size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def _positive_depth(H: np.ndarray, size: tuple[int, int]) -> bool:
    """Whether the homogeneous scale of H stays positive over the whole image (its corners)."""
    corners = _image_corners(size)
    w = corners @ H[2, :2] + H[2, 2]
    return bool(np.all(w > 1e-6 * np.abs(H[2, 2])))


def coverage(H_0to1: np.ndarray, size0: tuple[int, int], size1: tuple[int, int], grid: int = 16) -> float:
    """Fraction of image1 (a ``grid`` x ``grid`` lattice of points) whose pre-image lies in image0."""
    h1, w1 = size1
    ys, xs = np.meshgrid(np.linspace(0, h1 - 1, grid), np.linspace(0, w1 - 1, grid), indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel()], -1)
    return float(_inside(np.linalg.inv(H_0to1), pts, size0).mean())


def _inside(H: np.ndarray, pts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    hom = pts @ H[:2, :2].T + H[:2, 2]
    z = pts @ H[2, :2] + H[2, 2]
    ok = z > 0
    z = np.where(ok, z, 1.0)
    x, y = hom[:, 0] / z, hom[:, 1] / z
    return ok & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def _draw(rng: np.random.Generator, p: HomographyParams, difficulty: float, size0, size1) -> np.ndarray:
    (h0, w0), (h1, w1) = size0, size1
    u = rng.uniform(-1.0, 1.0, size=4)
    tilt = rng.uniform(0.0, 1.0) * difficulty * math.radians(p.tilt)
    axis = rng.uniform(0.0, math.pi)
    scale = math.exp(u[0] * difficulty * math.log(p.scale))
    angle = u[1] * difficulty * math.radians(p.rotation)
    shift = u[2:] * difficulty * p.translation * np.array([w1, h1])
    focal = 0.5 * max(h0, w0) / math.tan(math.radians(p.fov) / 2)
    c0 = ((w0 - 1) / 2, (h0 - 1) / 2)
    c1 = ((w1 - 1) / 2 + shift[0], (h1 - 1) / 2 + shift[1])
    tilt_h = tilt_homography(tilt, axis, focal)
    H = translation(*c1) @ _rotation_scale(angle, scale) @ tilt_h @ translation(-c0[0], -c0[1])
    return H / H[2, 2]


def sample_homography(
    rng: np.random.Generator,
    size: tuple[int, int],
    conf: Mapping[str, Any] | DictConfig | HomographyParams | None = None,
    size1: tuple[int, int] | None = None,
) -> np.ndarray:
    """A random H_0to1 (3, 3) float64 for image0 of ``size`` (h, w) and image1 of ``size1``.

    ``size1`` defaults to ``size``. Deterministic given ``rng``'s state; see the module
    docstring for the model, the grading by difficulty and the validity rules.
    """
    p = conf if isinstance(conf, HomographyParams) else HomographyParams.from_conf(conf)
    size0 = (int(size[0]), int(size[1]))
    size1 = size0 if size1 is None else (int(size1[0]), int(size1[1]))
    half = (p.max_tries + 1) // 2
    for k in range(p.max_tries):
        shrink = 1.0 if k < half else 1.0 - (k - half + 1) / (p.max_tries - half + 1)
        H = _draw(rng, p, p.difficulty * shrink, size0, size1)
        if (
            _positive_depth(H, size0)
            and _positive_depth(np.linalg.inv(H), size1)
            and coverage(H, size0, size1) >= p.min_coverage
        ):
            return H
    c0 = ((size0[1] - 1) / 2, (size0[0] - 1) / 2)
    c1 = ((size1[1] - 1) / 2, (size1[0] - 1) / 2)
    return translation(c1[0] - c0[0], c1[1] - c0[1])


def warp_points(H: np.ndarray | torch.Tensor, pts: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map points (..., 2) through the homography H (3, 3); numpy in numpy out, torch in torch out.

    Points whose homogeneous scale is not positive (behind the camera) come out as NaN.
    """
    if isinstance(pts, torch.Tensor):
        Ht = torch.as_tensor(H, dtype=pts.dtype, device=pts.device)
        hom = pts @ Ht[:2, :2].T + Ht[:2, 2]
        z = pts @ Ht[2, :2] + Ht[2, 2]
        z = torch.where(z > 0, z, torch.full_like(z, float("nan")))
        return hom / z[..., None]
    pts = np.asarray(pts, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    hom = pts @ H[:2, :2].T + H[:2, 2]
    z = pts @ H[2, :2] + H[2, 2]
    z = np.where(z > 0, z, np.nan)
    return hom / z[..., None]


def correspondence_mask(
    H_0to1: np.ndarray | torch.Tensor, size0: tuple[int, int], size1: tuple[int, int]
) -> np.ndarray | torch.Tensor:
    """Boolean (h1, w1) mask of the image1 pixels whose pre-image lies inside image0.

    "Inside" means within [0, w0 - 1] x [0, h0 - 1] (pixel centres at integers), the area
    where bilinear interpolation of image0 needs no padding. Torch in, torch out.
    """
    as_torch = isinstance(H_0to1, torch.Tensor)
    H = H_0to1.detach().cpu().double().numpy() if as_torch else np.asarray(H_0to1, np.float64)
    inv = np.linalg.inv(H)
    h0, w0 = int(size0[0]), int(size0[1])
    xs = np.arange(int(size1[1]), dtype=np.float64)[None, :]
    ys = np.arange(int(size1[0]), dtype=np.float64)[:, None]
    z = inv[2, 0] * xs + inv[2, 1] * ys + inv[2, 2]
    ok = z > 0
    z = np.where(ok, z, 1.0)
    x = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]) / z
    y = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]) / z
    mask = ok & (x >= 0) & (x <= w0 - 1) & (y >= 0) & (y <= h0 - 1)
    return torch.from_numpy(mask) if as_torch else mask


def warp_image(
    image: torch.Tensor, H: np.ndarray | torch.Tensor, size: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Warp ``image`` (B, C, h, w) by H (source -> target pixels) to a target of ``size`` (h, w).

    Target pixels whose pre-image falls outside the source are 0.
    """
    M = torch.as_tensor(np.asarray(H, np.float64) if not isinstance(H, torch.Tensor) else H)
    M = M.to(image.device, torch.float32).reshape(1, 3, 3).expand(image.shape[0], 3, 3)
    return warp_perspective(image, M, (int(size[0]), int(size[1])), mode=mode, align_corners=True)


def local_scale(H: np.ndarray, pt: tuple[float, float]) -> float:
    """Linear zoom of H at the source point ``pt``: sqrt(|det J|) (> 1: magnified in the target)."""
    x, y = pt
    z = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    u = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / z
    v = (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / z
    J = np.array(
        [[H[0, 0] - u * H[2, 0], H[0, 1] - u * H[2, 1]], [H[1, 0] - v * H[2, 0], H[1, 1] - v * H[2, 1]]]
    ) / z
    return float(math.sqrt(abs(np.linalg.det(J))))
