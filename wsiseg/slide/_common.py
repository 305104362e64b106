"""Pixel and metadata helpers shared by the slide backends."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from wsiseg.slide.protocol import RGBArray

__all__ = [
    "BackendOpenError",
    "OpenFailure",
    "crop_padded",
    "mpp_from_properties",
    "pil_to_rgb",
    "positive_float",
    "str_properties",
    "to_rgb",
]

#: Why a backend failed to open a file.
OpenFailure = Literal["unknown", "corrupt", "unsupported"]


def positive_float(value: Any) -> float | None:
    """Return ``value`` as a finite float > 0, or None (missing, zero, NaN, text...).

    Args:
        value: A property value of any type.

    Returns:
        The float, or None when it is not a usable positive number.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def mpp_from_properties(props: Mapping[str, Any], prefix: str) -> tuple[float, float] | None:
    """Read ``<prefix>.mpp-x`` / ``<prefix>.mpp-y``; a missing axis copies the other.

    Args:
        props: Library properties.
        prefix: ``"openslide"`` or ``"tiffslide"``.

    Returns:
        ``(mpp_x, mpp_y)`` in µm per level-0 pixel, or None when neither is usable.
    """
    mpp_x = positive_float(props.get(f"{prefix}.mpp-x"))
    mpp_y = positive_float(props.get(f"{prefix}.mpp-y"))
    if mpp_x is None and mpp_y is None:
        return None
    return (mpp_x or mpp_y, mpp_y or mpp_x)  # type: ignore[return-value]


def str_properties(props: Mapping[str, Any]) -> dict[str, str]:
    """Return ``props`` with every non-None value converted to ``str``."""
    return {str(key): str(value) for key, value in props.items() if value is not None}


def to_rgb(arr: npt.NDArray[Any]) -> RGBArray:
    """Convert grey, grey+alpha, RGB or RGBA ``uint8`` pixels to RGB, compositing alpha on white.

    Args:
        arr: ``(h, w)`` or ``(h, w, c)`` array with c in 1..4.

    Returns:
        A new contiguous ``(h, w, 3)`` ``uint8`` array.

    Raises:
        ValueError: If the dtype is not ``uint8`` or the channel count is not 1-4.
    """
    if arr.dtype != np.uint8:
        msg = f"expected uint8 pixels, got {arr.dtype}"
        raise ValueError(msg)
    if arr.ndim == 2:
        arr = arr[..., np.newaxis]
    channels = arr.shape[2]
    if channels not in (1, 2, 3, 4):
        msg = f"expected 1-4 channels, got {channels}"
        raise ValueError(msg)
    if channels in (2, 4):
        colour, alpha = arr[..., : channels - 1], arr[..., channels - 1 :]
        if alpha.min(initial=255) == 255:
            arr = colour
        else:
            a = alpha.astype(np.uint16)
            blended = (colour.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
            arr = blended.astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def pil_to_rgb(image: Image.Image) -> RGBArray:
    """Convert a PIL image of any 8-bit mode to RGB on white (transparency becomes white).

    Args:
        image: The PIL image.

    Returns:
        ``(h, w, 3)`` ``uint8`` array.
    """
    if image.mode in ("RGB", "L", "RGBA", "LA"):
        return to_rgb(np.asarray(image))
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return to_rgb(np.asarray(image.convert("RGBA" if has_alpha else "RGB")))


def crop_padded(pixels: RGBArray, x0: int, y0: int, width: int, height: int, fill: int = 255) -> RGBArray:
    """Cut ``width`` x ``height`` pixels at ``(x0, y0)`` from ``pixels``, padding outside with ``fill``.

    Args:
        pixels: ``(H, W, 3)`` source image.
        x0: Left column, may be negative or past the edge.
        y0: Top row, may be negative or past the edge.
        width: Output width (> 0).
        height: Output height (> 0).
        fill: Value of padded pixels (255 is white).

    Returns:
        ``(height, width, 3)`` ``uint8`` array.
    """
    out = np.full((height, width, 3), fill, dtype=np.uint8)
    src_h, src_w = pixels.shape[:2]
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + width, src_w), min(y0 + height, src_h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = pixels[sy0:sy1, sx0:sx1, :3]
    return out


class BackendOpenError(Exception):
    """A backend could not open a file; :func:`wsiseg.slide.open_slide` turns it into ``SlideError``.

    Args:
        backend: Backend name.
        reason: Short lower-case reason, without the path.
        kind: ``"unknown"`` (the library does not recognise the file), ``"corrupt"`` (it
            recognises the format but the file is broken or truncated) or ``"unsupported"`` (a
            valid file of a format or pixel type wsiseg does not read).
    """

    def __init__(self, backend: str, reason: str, *, kind: OpenFailure) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason
        self.kind = kind
