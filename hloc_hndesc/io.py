"""Reading images from disk robustly: every failure names the file and the problem.

Images are decoded with OpenCV from the file's bytes, so EXIF orientation is
applied, 16-bit images are scaled to [0, 1] by their full range, grey images stay
single-channel, alpha is dropped, and truncated JPEG/PNG files (which OpenCV
would otherwise decode half-grey with only a warning) are refused.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
#: largest image, in pixels, that is decoded at all (OpenCV's own default cap is 2^30).
MAX_DECODE_PIXELS = 1 << 28


class ImageReadError(ValueError):
    """An image file cannot be used; the message names the file and the problem."""


def _check_complete(path: Path, data: bytes) -> None:
    """Refuse truncated JPEG and PNG files by checking their end markers."""
    head = data[:8]
    if head[:3] == b"\xff\xd8\xff":
        if b"\xff\xd9" not in data[-64:]:
            raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
    elif head == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk)")


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h = int.from_bytes(data[i + 5 : i + 7], "big")
                w = int.from_bytes(data[i + 7 : i + 9], "big")
                return w, h
            i += 2 + length
    return None


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Read an image as float32 in [0, 1]: (H, W) if ``grayscale`` else (H, W, 3) RGB.

    Raises :class:`ImageReadError` for missing, empty, corrupt, truncated, oversized
    or unsupported files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read file ({err.strerror})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file")
    _check_complete(path, data)
    size = _header_size(data)
    if size is not None and size[0] * size[1] > MAX_DECODE_PIXELS:
        raise ImageReadError(
            f"{path}: image of {size[0]}x{size[1]} px exceeds the {MAX_DECODE_PIXELS} pixel limit"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as err:
        raise ImageReadError(f"{path}: cannot decode image ({err.msg.strip()})") from None
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    return to_float(image, path, grayscale)


def to_float(image: np.ndarray, path: str | Path, grayscale: bool) -> np.ndarray:
    """Convert a decoded OpenCV array (any depth, 1/3/4 channels, BGR) to float32 [0, 1]."""
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    elif image.dtype in (np.float32, np.float64):
        scale = 1.0
    else:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}")
    image = image.astype(np.float32) / scale
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        if not grayscale:
            image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = image[..., ::-1]
        if grayscale:
            image = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        raise ImageReadError(f"{path}: unsupported image shape {image.shape}")
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def resize_max(image: np.ndarray, max_size: int | None, force: bool = False) -> np.ndarray:
    """Downscale (or, with ``force``, rescale) so the longer side equals ``max_size``."""
    h, w = image.shape[:2]
    if not max_size or (max(h, w) <= max_size and not force):
        return image
    scale = max_size / max(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def list_images(root: str | Path) -> list[str]:
    """Relative posix names of all images under ``root`` (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image directory not found")
    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise FileNotFoundError(
            f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)"
        )
    return names


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] -> uint8 (clipped, rounded half up)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 or float (H, W, 3) RGB -> float32 (1, 3, H, W) in [0, 1]."""
    arr = np.asarray(image)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    return torch.from_numpy(np.ascontiguousarray(arr, np.float32) / scale).permute(2, 0, 1)[None]


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> uint8 (H, W, 3) RGB (rounded half up)."""
    return (image[0].permute(1, 2, 0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
