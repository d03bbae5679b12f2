"""Synthetic HPatches-style sequences made from real photos that are not training photos.

Each photo gives up to two sequences in HPatches' layout (``1.ppm`` .. ``6.ppm``,
``H_1_2`` .. ``H_1_6``), image ``1`` being the photo (clipped to a maximum side):

- viewpoint (``v_<stem>``): image ``k`` is the photo warped by a random homography of
  grade ``k - 1`` (1 to 5). A homography is a virtual camera tilt of the photo's plane
  (perspective), then an in-plane rotation, a scale change and a small shift, each drawn
  in a band that grows with the grade (:data:`ROTATION_DEG`, :data:`TILT_DEG`,
  :data:`LOG2_SCALE`; grade 5 rotates by 90 to 180 degrees). Draws are repeated until at
  least :data:`MIN_OVERLAP` of each image sees the other. No photometric change.
- illumination (``i_<stem>``): ``H = identity``; images 2 to 5 get photometric changes of
  grades 1 to 4 (:func:`photometric_series`: exposure, colour cast, vignetting, a smooth
  illumination gradient, soft shadows, contrast, gamma, sensor noise; their common strength
  is set so the mean absolute difference to the reference falls in the grade's band
  :data:`SEVERITY`), image 6 a synthetic night (:func:`render_night`).

Ground truth is exact for keypoints in hloc's convention (pixel centres at integer
coordinates): :func:`warp_image` samples the source at ``H^-1 p`` for every target pixel
``p``, computed in float64 with bilinear interpolation (so the result does not depend on
OpenCV's interpolation internals: its 4.x ``warpPerspective`` rounds coordinates to 1/32 px).
Against aliasing, the source is blurred first by a Gaussian sized to the median minification (a symmetric blur moves no
content). Pixels whose source falls outside the photo are black.

Night model (so that training can use a different one): in linear light (sRGB gamma 2.2),
the photo's colours are treated as albedo and relit by a dim bluish ambient light plus 2 to
5 Gaussian pools of sodium-orange or white-LED lamp light; lit windows (small warm
rectangles, soft edges) and lamp glows (Gaussian cores with wider halos) are added; then
the relit scene is scaled to 4 to 12 % of the day's mean linear light
(:data:`NIGHT_LEVEL`); Poisson-Gaussian sensor noise, a gamma-2.4 tone curve with crushed
blacks, a Gaussian blur and a JPEG round trip (quality 55 to 80). It is a hand-made
rendering model, not a learnt day-to-night translation, and nothing here learns from or
imitates real night photos.

Every random draw comes from a ``numpy.random.Generator``; :func:`sequence_rng` derives one
per (seed, kind, photo) so the same seed gives byte-identical files and adding a photo does
not change the others. Photos under a ``train_natural`` folder are refused
(:class:`TrainingPhotoError`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..io import IMAGE_SUFFIXES, read_image
from .datasets import evenly_spaced
from .splits import SplitError
from .splits import check_not_training as check_paths_not_training

#: folders (relative to the data root) whose photos may be used: not training data.
SOURCE_FOLDERS: tuple[str, ...] = ("phototourism_sample/images", "lightglue_pairs", "scannet_sample/images")
#: folder names whose photos are training photos and are refused.
#: images per sequence (the reference and 5 targets).
SEQUENCE_LENGTH = 6
#: viewpoint bands per grade 1..5: |in-plane rotation| (degrees), tilt (degrees), |log2 scale|.
ROTATION_DEG: tuple[tuple[float, float], ...] = ((0, 10), (10, 25), (25, 45), (45, 90), (90, 180))
TILT_DEG: tuple[tuple[float, float], ...] = ((5, 15), (15, 25), (25, 35), (35, 45), (45, 55))
LOG2_SCALE: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.35), (0.35, 0.5), (0.5, 0.65))
#: maximal shift of the warped centre per grade, as a fraction of the shorter side.
SHIFT = (0.02, 0.04, 0.06, 0.08, 0.1)
#: least fraction of each image covered by the other one.
MIN_OVERLAP = 0.3
#: illumination severity per grade 1..4: band of the mean absolute difference to the
#: reference, as a fraction of the largest difference all draws reach (see :func:`photometric_series`).
SEVERITY: tuple[tuple[float, float], ...] = ((0.12, 0.2), (0.3, 0.4), (0.5, 0.65), (0.8, 1.0))
#: bisection of the photometric strength: largest strength (exposure up to 2 EV, noise
#: sigma 0.024, ... see :func:`apply_photometric`) and number of halvings.
MAX_STRENGTH = 2.0
BISECTIONS = 10
#: mean linear light of the night scene (before lamps' glows and windows) over that of the day.
NIGHT_LEVEL = (0.04, 0.12)
SRGB_GAMMA = 2.2


#: a photo of the training set was given to the evaluation-sequence generator.
TrainingPhotoError = SplitError


@dataclass
class SyntheticSequence:
    """RGB uint8 images (the reference first; six in the HPatches layout), the homographies
    ``H_1_k`` and the parameters drawn per target."""

    name: str
    images: list[np.ndarray]
    homographies: list[np.ndarray]
    params: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- photos


def check_not_training(path: str | Path) -> None:
    """Raise :class:`TrainingPhotoError` if ``path`` lies under a training folder."""
    check_paths_not_training([path], f"evaluation sequences (use e.g. {', '.join(SOURCE_FOLDERS)})")


def list_photos(folders: list[str | Path], count: int | None = None) -> list[Path]:
    """The photos of ``folders`` (not recursive), each folder sorted, at most ``count`` of them
    evenly spaced; training folders refused."""
    photos = []
    for folder in folders:
        folder = Path(folder)
        check_not_training(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder")
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"{folder}: no image inside")
        photos += found
    for photo in photos:
        check_not_training(photo)
    return evenly_spaced(photos, count)


def load_photo(path: str | Path, max_side: int | None = 800) -> np.ndarray:
    """An RGB uint8 (H, W, 3) photo, downscaled (area interpolation) to ``max_side``."""
    check_not_training(path)
    image = np.round(read_image(path) * 255).astype(np.uint8)
    h, w = image.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return image


def sequence_rng(seed: int, kind: str, stem: str) -> np.random.Generator:
    """The generator of one sequence: a function of the seed, the kind and the photo stem only."""
    return np.random.default_rng([int(seed), ord(kind), zlib.crc32(stem.encode())])


# --------------------------------------------------------------------------- geometry


def _uniform_band(rng: np.random.Generator, band: tuple[float, float]) -> float:
    return float(rng.uniform(*band))


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def tilt_homography(size: tuple[int, int], tilt_deg: float, axis_deg: float, focal: float | None = None) -> np.ndarray:
    """The image of a plane seen fronto-parallel, after the plane turns by ``tilt_deg`` about
    an in-plane axis through the image centre (direction ``axis_deg``), for a pinhole of
    focal ``focal`` px (default: the longer side). The centre stays fixed."""
    w, h = size
    f = float(focal or max(w, h))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a = math.radians(axis_deg)
    axis = np.array([math.cos(a), math.sin(a), 0.0])
    rot, _ = cv2.Rodrigues(axis * math.radians(tilt_deg))
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    plane_to_camera = np.stack([rot[:, 0], rot[:, 1], np.array([0.0, 0.0, f])], 1)
    return k @ plane_to_camera @ _translation(-cx, -cy)


def similarity_about_centre(
    size: tuple[int, int], angle_deg: float, scale: float, shift: tuple[float, float]
) -> np.ndarray:
    """Rotation by ``angle_deg`` (clockwise on screen, y down) and scaling about the centre, then a shift."""
    w, h = size
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    rs = np.array([[scale * c, -scale * s, 0], [scale * s, scale * c, 0], [0, 0, 1]])
    return _translation(cx + shift[0], cy + shift[1]) @ rs @ _translation(-cx, -cy)


def _rect(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float64)


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ h.T
    return p[:, :2] / p[:, 2:]


def overlap(h: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """(fraction of the reference seen in the target, fraction of the target covered) for
    same-sized images; (0, 0) when the reference crosses the line at infinity."""
    rect = _rect(size)
    for m in (h, np.linalg.inv(h)):
        if np.any((np.concatenate([rect, np.ones((4, 1))], 1) @ m.T)[:, 2] <= 0):
            return 0.0, 0.0
    area = float(size[0] * size[1])
    rect32 = rect.astype(np.float32)
    covered, _ = cv2.intersectConvexConvex(_apply(h, rect).astype(np.float32), rect32)
    seen, _ = cv2.intersectConvexConvex(_apply(np.linalg.inv(h), rect).astype(np.float32), rect32)
    return float(seen) / area, float(covered) / area


def viewpoint_homography(
    size: tuple[int, int], grade: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """A random homography of ``grade`` (1..5) for a ``(width, height)`` image, and its parameters.

    Draws are repeated (from the same ``rng``) until both overlaps reach :data:`MIN_OVERLAP`.
    """
    if not 1 <= grade <= len(ROTATION_DEG):
        raise ValueError(f"grade must be in 1..{len(ROTATION_DEG)}, got {grade}")
    w, h = size
    for _ in range(200):
        rotation = _uniform_band(rng, ROTATION_DEG[grade - 1]) * rng.choice([-1.0, 1.0])
        tilt = _uniform_band(rng, TILT_DEG[grade - 1])
        axis = float(rng.uniform(0, 180))
        log2_scale = _uniform_band(rng, LOG2_SCALE[grade - 1]) * rng.choice([-1.0, 1.0])
        radius, direction = SHIFT[grade - 1] * min(w, h) * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        shift = (radius * math.cos(direction), radius * math.sin(direction))
        hom = similarity_about_centre(size, rotation, 2.0**log2_scale, shift) @ tilt_homography(size, tilt, axis)
        hom = hom / hom[2, 2]
        seen, covered = overlap(hom, size)
        if min(seen, covered) >= MIN_OVERLAP:
            params = dict(rotation=rotation, tilt=tilt, axis=axis, log2_scale=log2_scale, shift=radius)
            return hom, params | dict(seen=seen, covered=covered)
    raise RuntimeError(f"no homography of grade {grade} keeps {MIN_OVERLAP} overlap for a {w}x{h} image")


def minification(h: np.ndarray, size: tuple[int, int], grid: int = 16) -> float:
    """Median over the target of the source area per target pixel (sqrt of |det| of d(H^-1 p)/dp)."""
    w, h_ = size
    hinv = np.linalg.inv(h)
    xs, ys = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h_ - 1, grid))
    p = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 1) @ hinv.T
    src = p[:, :2] / p[:, 2:]
    inside = (p[:, 2] > 0) & (src[:, 0] >= 0) & (src[:, 0] <= w - 1) & (src[:, 1] >= 0) & (src[:, 1] <= h_ - 1)
    if not inside.any():
        return 1.0
    # for x' = (A x + b) / (c.x + d): det J of the inverse map = det(Hinv) / z^3
    det = abs(np.linalg.det(hinv)) / np.abs(p[inside, 2]) ** 3
    return float(np.sqrt(np.median(det)))


def warp_image(
    image: np.ndarray, h: np.ndarray, size: tuple[int, int] | None = None, antialias: bool = True
) -> np.ndarray:
    """``image`` (H, W[, C]) seen through ``h``: target pixel ``p`` takes the source at ``h^-1 p``.

    Pixel centres are at integer coordinates in both images; sampling is bilinear with
    float64 coordinates; targets whose source is outside ``[0, W-1] x [0, H-1]`` are 0.
    Returns float64 for float64 input, float32 otherwise (same value range as the input).
    """
    src = np.asarray(image)
    src = src.astype(np.float64 if src.dtype == np.float64 else np.float32)
    squeeze = src.ndim == 2
    if squeeze:
        src = src[..., None]
    sh, sw = src.shape[:2]
    w, h_ = size or (sw, sh)
    if antialias:
        m = minification(h, (sw, sh)) if (w, h_) == (sw, sh) else 1.0
        sigma = 0.5 * math.sqrt(max(m * m - 1.0, 0.0))
        if sigma > 0.05:
            blurred = cv2.GaussianBlur(src, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            src = blurred.reshape(src.shape)
    hinv = np.linalg.inv(np.asarray(h, np.float64))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h_, dtype=np.float64))
    z = hinv[2, 0] * xs + hinv[2, 1] * ys + hinv[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        sx = (hinv[0, 0] * xs + hinv[0, 1] * ys + hinv[0, 2]) / z
        sy = (hinv[1, 0] * xs + hinv[1, 1] * ys + hinv[1, 2]) / z
    valid = (z > 0) & (sx >= 0) & (sx <= sw - 1) & (sy >= 0) & (sy <= sh - 1)
    sx, sy = np.where(valid, sx, 0.0), np.where(valid, sy, 0.0)
    x0 = np.minimum(np.floor(sx).astype(np.int64), max(sw - 2, 0))
    y0 = np.minimum(np.floor(sy).astype(np.int64), max(sh - 2, 0))
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x1, y1 = np.minimum(x0 + 1, sw - 1), np.minimum(y0 + 1, sh - 1)
    top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
    bottom = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
    out = (top * (1 - fy) + bottom * fy).astype(src.dtype)
    out[~valid] = 0
    return out[..., 0] if squeeze else out


def rotation_homography(size: tuple[int, int], angle_deg: float) -> tuple[np.ndarray, tuple[int, int]]:
    """In-plane rotation of a ``(width, height)`` image by ``angle_deg`` (clockwise on screen)
    onto a canvas that holds all of it; returns ``H`` and the canvas ``(width, height)``."""
    # cos/sin snapped to exact -1, 0, 1 so that right angles move pixels onto pixels
    c, s = (float(np.round(v, 12)) for v in (math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))))
    w, h = size
    width = int(math.ceil(abs(c) * w + abs(s) * h - 1e-6))
    height = int(math.ceil(abs(s) * w + abs(c) * h - 1e-6))
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return _translation((width - 1) / 2, (height - 1) / 2) @ rot @ _translation(-(w - 1) / 2, -(h - 1) / 2), (width, height)


def make_rotation_sequence(
    image: np.ndarray, angles: tuple[float, ...], name: str = "r_"
) -> SyntheticSequence:
    """The photo followed by its in-plane rotations by ``angles`` (degrees), each on a canvas
    that holds the whole rotated photo (black outside it); no other change."""
    size = (image.shape[1], image.shape[0])
    images, homographies, params = [image.copy()], [], []
    for angle in angles:
        hom, canvas = rotation_homography(size, angle)
        images.append(_to_uint8(warp_image(image, hom, canvas, antialias=False)))
        homographies.append(hom)
        params.append({"rotation": float(angle)})
    return SyntheticSequence(name, images, homographies, params)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_viewpoint_sequence(image: np.ndarray, rng: np.random.Generator, name: str = "v_") -> SyntheticSequence:
    """A viewpoint sequence of an RGB uint8 photo: grades 1..5 for images 2..6."""
    size = (image.shape[1], image.shape[0])
    images, homographies, params = [image.copy()], [], []
    for grade in range(1, SEQUENCE_LENGTH):
        hom, p = viewpoint_homography(size, grade, rng)
        images.append(_to_uint8(warp_image(image, hom)))
        homographies.append(hom)
        params.append(p | dict(grade=grade))
    return SyntheticSequence(name, images, homographies, params)


# --------------------------------------------------------------------------- photometry


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB-like -> linear float64 in [0, 1] (gamma 2.2)."""
    return (np.asarray(image, np.float64) / 255.0) ** SRGB_GAMMA


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return xs, ys


@dataclass
class PhotometricDraw:
    """The random part of one illumination change, at strength 1 (see :func:`apply_photometric`)."""

    exposure: float
    log_contrast: float
    log_gamma: float
    log_cast: np.ndarray
    vignette_centre: np.ndarray
    gradient_direction: float
    shadow_mask: np.ndarray
    noise: np.ndarray


def draw_photometric(shape: tuple[int, int], rng: np.random.Generator) -> PhotometricDraw:
    """Random directions of every photometric effect for an (H, W) image."""
    h, w = shape
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        centre = rng.uniform([0, 0], [w, h])
        radius = rng.uniform(0.15, 0.4) * min(w, h)
        angles = np.sort(rng.uniform(0, 2 * math.pi, 4))
        quad = centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(0.6, 1.4, (4, 1))
        cv2.fillConvexPoly(mask, np.round(quad * 16).astype(np.int32), 1.0, lineType=cv2.LINE_AA, shift=4)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.03 * min(w, h)).astype(np.float64)
    return PhotometricDraw(
        exposure=float(rng.uniform(0.5, 1.0) * rng.choice([-1.0, 1.0])),
        log_contrast=float(rng.uniform(0.1, 0.3) * rng.choice([-1.0, 1.0])),
        log_gamma=float(rng.uniform(0.1, 0.3) * rng.choice([-1.0, 1.0])),
        log_cast=rng.normal(0, 0.08, 3),
        vignette_centre=rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h]),
        gradient_direction=float(rng.uniform(0, 2 * math.pi)),
        shadow_mask=mask,
        noise=rng.normal(0, 1, (h, w, 3)),
    )


def apply_photometric(image: np.ndarray, draw: PhotometricDraw, strength: float) -> np.ndarray:
    """``image`` (RGB uint8) under the effects of ``draw`` scaled by ``strength`` (0: unchanged).

    In linear light: exposure ``2^(s e)``, colour gains ``exp(s c)`` (luminance kept),
    vignetting ``1 - 0.4 s r^2``, a log2 illumination ramp of amplitude ``0.8 s`` across
    the diagonal, shadows darkening by up to ``0.5^s``; then, in display space, contrast
    ``exp(s k)`` about mid-grey, gamma ``exp(s g)`` and Gaussian noise of sigma ``0.012 s``.
    """
    h, w = image.shape[:2]
    xs, ys = _grid((h, w))
    diag = math.hypot(w, h)
    cast = np.exp(strength * draw.log_cast)
    cast = cast / (cast @ np.array([0.2126, 0.7152, 0.0722]))
    cx, cy = draw.vignette_centre
    vignette = np.clip(1.0 - 0.4 * strength * ((xs - cx) ** 2 + (ys - cy) ** 2) / (0.5 * diag) ** 2, 0.05, 1.0)
    d = draw.gradient_direction
    ramp = ((xs - w / 2) * math.cos(d) + (ys - h / 2) * math.sin(d)) / diag
    shadows = 1.0 - (1.0 - 0.5**strength) * draw.shadow_mask
    light = 2.0 ** (strength * (draw.exposure + 0.8 * ramp)) * vignette * shadows
    out = np.clip(srgb_to_linear(image) * light[..., None] * cast, 0, 1) ** (1 / SRGB_GAMMA)
    out = np.clip(0.5 + math.exp(strength * draw.log_contrast) * (out - 0.5), 0, 1)
    out = out ** math.exp(strength * draw.log_gamma)
    return _to_uint8((out + 0.012 * strength * draw.noise) * 255.0)


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in grey levels."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _strength_for(image: np.ndarray, draw: PhotometricDraw, target: float) -> float:
    """Bisected strength in [0, MAX_STRENGTH] at which the difference to ``image`` reaches ``target``."""
    low, high = 0.0, MAX_STRENGTH
    for _ in range(BISECTIONS):
        mid = 0.5 * (low + high)
        if mean_abs_difference(apply_photometric(image, draw, mid), image) < target:
            low = mid
        else:
            high = mid
    return high


def photometric_series(image: np.ndarray, rng: np.random.Generator) -> list[tuple[np.ndarray, dict[str, float]]]:
    """Illumination changes of grades 1..4 of an RGB uint8 image, with their parameters.

    Each grade draws its own effects (:func:`draw_photometric`); their common strength is
    then bisected so that the mean absolute difference to ``image`` hits a target drawn in
    the grade's band :data:`SEVERITY`, as a fraction of the photo's scale: the smallest
    difference any of the draws reaches at :data:`MAX_STRENGTH`. So severity grows with the
    grade whatever the draws (brightening and darkening effects may partly cancel) and
    adapts to the photo (a dark photo cannot be darkened by as many grey levels).
    """
    draws = [draw_photometric(image.shape[:2], rng) for _ in SEVERITY]
    scale = min(mean_abs_difference(apply_photometric(image, d, MAX_STRENGTH), image) for d in draws)
    out = []
    for grade, (draw, band) in enumerate(zip(draws, SEVERITY), start=1):
        target = _uniform_band(rng, band) * scale
        strength = _strength_for(image, draw, target)
        changed = apply_photometric(image, draw, strength)
        params = dict(
            grade=grade, target=target, strength=strength, difference=mean_abs_difference(changed, image),
            exposure=strength * draw.exposure, log_contrast=strength * draw.log_contrast,
            log_gamma=strength * draw.log_gamma,
        )
        out.append((changed, params))
    return out


def _gaussian(xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma * sigma))


def render_night(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic night version of an RGB uint8 (H, W, 3) photo (model in the module docstring)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    xs, ys = _grid((h, w))
    diag = math.hypot(w, h)
    albedo = srgb_to_linear(image)
    # relighting: dim bluish ambient plus pools of lamp light, scaled to a fraction of the day
    light = np.broadcast_to(np.array([0.55, 0.7, 1.0]) * rng.uniform(0.1, 0.3), (h, w, 3)).copy()
    lamps = rng.uniform([0, 0], [w, 0.8 * h], (int(rng.integers(2, 6)), 2))
    colours = [
        np.array([1.0, 0.55, 0.2]) if rng.uniform() < 0.6 else np.array([0.95, 0.9, 0.85]) for _ in lamps
    ]
    for lamp, colour in zip(lamps, colours):
        pool = _gaussian(xs, ys, lamp, rng.uniform(0.06, 0.2) * diag) * rng.uniform(0.5, 2.0)
        light += pool[..., None] * colour
    lit = albedo * light
    lit *= rng.uniform(*NIGHT_LEVEL) * albedo.mean() / max(float(lit.mean()), 1e-6)
    # lit windows: small warm rectangles with soft edges
    windows = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(5, 25))):
        ww, wh = rng.uniform(0.008, 0.025, 2) * max(w, h)
        x0, y0 = rng.uniform([0, 0], [w - ww, 0.85 * h - wh])
        cv2.rectangle(windows, (int(x0), int(y0)), (int(x0 + ww), int(y0 + wh)), float(rng.uniform(0.1, 0.5)), -1)
    windows = cv2.GaussianBlur(windows, (0, 0), 0.8).astype(np.float64)
    lit = lit + windows[..., None] * np.array([1.0, 0.75, 0.4])
    # lamp glows: bright core and a wide halo
    for lamp, colour in zip(lamps, colours):
        core = rng.uniform(0.003, 0.008) * diag
        glow = 1.5 * _gaussian(xs, ys, lamp, core) + 0.05 * _gaussian(xs, ys, lamp, 4 * core)
        lit = lit + glow[..., None] * colour
    # sensor: shot and read noise, tone curve with crushed blacks
    lit = lit + np.sqrt(np.clip(lit, 0, None) * 0.002) * rng.normal(0, 1, lit.shape) + rng.normal(0, 0.002, lit.shape)
    tone = np.clip(lit - 0.002, 0, 1) ** (1 / 2.4)
    out = cv2.GaussianBlur(tone.astype(np.float32), (0, 0), rng.uniform(0.6, 1.0))
    quality = int(rng.integers(55, 81))
    ok, data = cv2.imencode(".jpg", _to_uint8(out * 255.0)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


def make_illumination_sequence(image: np.ndarray, rng: np.random.Generator, name: str = "i_") -> SyntheticSequence:
    """An illumination sequence of an RGB uint8 photo: grades 1..4 for images 2..5, night as 6."""
    images, params = [image.copy()], []
    for changed, p in photometric_series(image, rng):
        images.append(changed)
        params.append(p)
    images.append(render_night(image, rng))
    params.append(dict(grade=SEQUENCE_LENGTH - 1, night=1.0))
    return SyntheticSequence(name, images, [np.eye(3) for _ in range(SEQUENCE_LENGTH - 1)], params)


# --------------------------------------------------------------------------- files


def write_sequence(sequence: SyntheticSequence, folder: str | Path, suffix: str = ".ppm") -> Path:
    """Write ``1<suffix>`` .. ``n<suffix>`` and ``H_1_2`` .. ``H_1_n`` (17 significant digits)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(sequence.images, start=1):
        if not cv2.imwrite(str(folder / f"{k}{suffix}"), np.ascontiguousarray(image[..., ::-1])):
            raise OSError(f"{folder / f'{k}{suffix}'}: could not write the image")
    for k, hom in enumerate(sequence.homographies, start=2):
        rows = "\n".join(" ".join(f"{v:.17g}" for v in row) for row in hom)
        (folder / f"H_1_{k}").write_text(rows + "\n")
    return folder


def generate_sequences(
    photos: list[str | Path],
    out: str | Path,
    seed: int = 0,
    max_side: int | None = 800,
    kinds: tuple[str, ...] = ("i", "v"),
    suffix: str = ".ppm",
) -> list[Path]:
    """One sequence per photo and kind under ``out`` (``<kind>_<stem>``); returns the folders."""
    unknown = set(kinds) - {"i", "v"}
    if unknown:
        raise ValueError(f"unknown sequence kind(s) {sorted(unknown)}; known: i, v")
    for photo in photos:
        check_not_training(photo)
    stems = [Path(p).stem for p in photos]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"photos with the same name would share a sequence folder: {duplicates}")
    folders = []
    for photo, stem in zip(photos, stems):
        image = load_photo(photo, max_side)
        for kind in kinds:
            rng = sequence_rng(seed, kind, stem)
            make = make_illumination_sequence if kind == "i" else make_viewpoint_sequence
            sequence = make(image, rng, f"{kind}_{stem}")
            folders.append(write_sequence(sequence, Path(out) / sequence.name, suffix))
    return folders
