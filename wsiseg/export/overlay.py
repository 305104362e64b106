"""Visual outputs of a label mask: a blended thumbnail PNG with a legend, and an RGB pyramid TIFF.

``render_overlay`` blends class colours into a slide thumbnail: for every pixel whose (nearest-resized) label
is not in ``skip_ids``, ``out = round((1 - alpha) * rgb + alpha * colour)``; other pixels are unchanged. A
legend (white box, one colour swatch and class name per non-background class, Pillow's default font) is
drawn in the top-left corner.

Blended overlays draw each class in :func:`overlay_palette`: its class-table colour, except colours that
vanish on H&E. The WSSS4LUAD tumour colour (0, 64, 128) blended at alpha 0.4 into haematoxylin-rich tumour is within
about 40 RGB units of the tissue under it, so blended overlays draw tumour in bright cyan (0, 229, 255) instead.
Masks, GeoJSON, class tables and the colourised-mask pyramid (nothing under it) keep the class-table colours.

``write_overlay_pyramid_tiff`` writes the colourised mask (background in its class colour) as a tiled
256 px JPEG pyramid: level 0 at the mask's resolution, then halvings (nearest) until the longest side is
below ``min_level_size``; reduced levels are top-level IFDs with ``SubFileType = 1`` and every level carries
its resolution in pixels per cm, the layout openslide (generic-tiff), tiffslide and ASAP open.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFont

from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.fileio import atomic_output

__all__ = [
    "OVERLAY_REPLACEMENTS",
    "overlay_palette",
    "render_overlay",
    "write_overlay_png",
    "write_overlay_pyramid_tiff",
]

#: Class-table colours that are unreadable on H&E, and the colour overlays draw instead.
OVERLAY_REPLACEMENTS: dict[tuple[int, int, int], tuple[int, int, int]] = {(0, 64, 128): (0, 229, 255)}


def overlay_palette(classes: ClassTable) -> np.ndarray:
    """The ``(n, 3)`` uint8 colours overlays draw, in id order (see :data:`OVERLAY_REPLACEMENTS`)."""
    return np.array([OVERLAY_REPLACEMENTS.get(c.color, c.color) for c in classes.classes], dtype=np.uint8)


_PAD = 4
_MARGIN = 4


def _check_labels(labels: np.ndarray, classes: ClassTable) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        msg = f"label mask must be 2-D (H, W), got shape {labels.shape}"
        raise DataError(msg)
    if labels.size and (int(labels.max()) >= len(classes) or int(labels.min()) < 0):
        msg = (
            f"label mask holds ids up to {int(labels.max())}, outside the class table "
            f"0..{len(classes) - 1}; pass the class table the mask was made with"
        )
        raise DataError(msg)
    return labels.astype(np.uint8, copy=False)


def _draw_legend(image: Image.Image, classes: ClassTable, skip: set[int]) -> None:
    """Draw a white legend box with swatches and names of the classes not in ``skip``."""
    entries = [c for c in classes.classes if c.id not in skip]
    if not entries:
        return
    colours = overlay_palette(classes)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    boxes = [draw.textbbox((0, 0), c.name, font=font) for c in entries]
    line = max(12, *(b[3] for b in boxes)) + 2
    text_w = max(b[2] for b in boxes)
    width = _PAD + line + _PAD + text_w + _PAD
    height = _PAD + line * len(entries) + _PAD
    x0 = y0 = _MARGIN
    draw.rectangle([x0, y0, x0 + width, y0 + height], fill=(255, 255, 255), outline=(0, 0, 0))
    for i, c in enumerate(entries):
        top = y0 + _PAD + i * line
        fill = tuple(int(v) for v in colours[c.id])
        draw.rectangle([x0 + _PAD, top + 1, x0 + _PAD + line - 2, top + line - 1], fill=fill, outline=(0, 0, 0))
        draw.text((x0 + 2 * _PAD + line, top + 1), c.name, fill=(0, 0, 0), font=font)


def render_overlay(
    thumbnail_rgb: np.ndarray,
    labels: np.ndarray,
    classes: ClassTable,
    *,
    alpha: float = 0.4,
    legend: bool = True,
    skip_ids: Iterable[int] = (0,),
) -> np.ndarray:
    """Blend class colours into a thumbnail.

    Args:
        thumbnail_rgb: ``(h, w, 3)`` (or RGBA, alpha dropped) uint8 slide thumbnail.
        labels: ``(H, W)`` label mask covering the same area; resized to ``(h, w)`` with nearest.
        classes: Class table with the colours.
        alpha: Weight of the class colour, in ``[0, 1]``.
        legend: Draw the class legend in the top-left corner.
        skip_ids: Ids left unblended (background).

    Returns:
        ``(h, w, 3)`` uint8 RGB.

    Raises:
        DataError: If the thumbnail is not RGB(A) or labels hold ids outside the class table.
        ValueError: If ``alpha`` is outside ``[0, 1]``.
    """
    if not 0.0 <= alpha <= 1.0:
        msg = f"alpha must be in [0, 1], got {alpha}"
        raise ValueError(msg)
    thumb = np.asarray(thumbnail_rgb)
    if thumb.ndim != 3 or thumb.shape[2] not in (3, 4) or thumb.dtype != np.uint8:
        msg = f"thumbnail must be (h, w, 3) uint8 RGB, got shape {thumb.shape} dtype {thumb.dtype}"
        raise DataError(msg)
    thumb = thumb[..., :3]
    labels = _check_labels(labels, classes)
    h, w = thumb.shape[:2]
    if labels.shape != (h, w):
        labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))
    skip = set(skip_ids)
    out = thumb.copy()
    blend = ~np.isin(labels, list(skip))
    colours = overlay_palette(classes).astype(np.float64)[labels[blend]]
    mixed = (1.0 - alpha) * thumb[blend].astype(np.float64) + alpha * colours
    out[blend] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    if legend:
        image = Image.fromarray(out)
        _draw_legend(image, classes, skip)
        out = np.asarray(image).copy()
    return out


def write_overlay_png(
    path: str | os.PathLike[str],
    thumbnail_rgb: np.ndarray,
    labels: np.ndarray,
    classes: ClassTable,
    *,
    alpha: float = 0.4,
    legend: bool = True,
    skip_ids: Iterable[int] = (0,),
) -> Path:
    """Render an overlay (see ``render_overlay``) and save it as PNG atomically.

    Returns:
        The written path.

    Raises:
        DataError: As ``render_overlay``, or if the destination folder does not exist.
    """
    rgb = render_overlay(thumbnail_rgb, labels, classes, alpha=alpha, legend=legend, skip_ids=skip_ids)
    with atomic_output(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=6)
    return Path(path)


def _tiles(labels: np.ndarray, palette: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Yield colourised ``(tile, tile, 3)`` tiles in row-major order, edge tiles padded."""
    h, w = labels.shape
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = palette[labels[y : y + tile, x : x + tile]]
            if block.shape[:2] != (tile, tile):
                padded = np.full((tile, tile, 3), 255, dtype=np.uint8)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def write_overlay_pyramid_tiff(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    classes: ClassTable,
    mpp: float | None,
    *,
    tile: int = 256,
    quality: int = 90,
    min_level_size: int = 1024,
) -> Path:
    """Write the colourised mask as a tiled JPEG RGB pyramid TIFF, atomically.

    Args:
        path: Destination ``.tif``; its folder must exist.
        labels: ``(H, W)`` label mask (level 0 of the pyramid).
        classes: Class table with the colours.
        mpp: Microns per pixel of ``labels``; ``None`` writes no resolution tags.
        tile: Tile side in pixels (multiple of 16).
        quality: JPEG quality 1..100.
        min_level_size: Stop adding halved levels once the longest side is below this.

    Returns:
        The written path.

    Raises:
        DataError: If labels hold ids outside the class table or the destination folder is missing.
    """
    labels = _check_labels(labels, classes)
    if labels.size == 0:
        msg = "label mask is empty; nothing to write"
        raise DataError(msg)
    palette = classes.palette()
    h, w = labels.shape
    levels = [1]
    while max(math.ceil(h / levels[-1]), math.ceil(w / levels[-1])) >= min_level_size:
        levels.append(levels[-1] * 2)
    description = json.dumps({"wsiseg": "overlay", "classes": classes.to_list()})
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=h * w * 4 > 2**31) as tif:
        for i, factor in enumerate(levels):
            level = labels[::factor, ::factor]
            res: dict[str, Any] = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * factor)
                res = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tif.write(
                _tiles(level, palette, tile),
                shape=(*level.shape, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=1 if i else 0,
                description=description if i == 0 else None,
                metadata=None,
                **res,
            )
    return Path(path)
