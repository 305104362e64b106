"""Label images (palette or greyscale PNG, one-page TIFF) -> class ids: the one palette rule.

``wsiseg tile`` (training masks) and ``wsiseg export`` (masks to report) both read label images here, so a
WSSS4LUAD palette PNG (indices 0 tumor, 1 stroma, 2 normal, 3 background) means the same everywhere. Every
decode checks the header's size against the pixel budget (:func:`wsiseg.fileio.pixel_budget_problem`) first.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image

from wsiseg.classes import DEFAULT_CLASSES, WSSS4LUAD_PALETTE_REMAP, ClassTable
from wsiseg.errors import DataError
from wsiseg.fileio import pixel_budget_problem

__all__ = ["DECODE_ERRORS", "LabelPalette", "load_label_image", "palette_to_ids", "read_label_file"]

#: Label image conventions of ``load_label_image``.
LabelPalette = Literal["auto", "wsss4luad", "ids"]
_WSSS4LUAD_COLORS = [(0, 64, 128), (64, 128, 0), (243, 152, 0)]
#: What Pillow and tifffile raise on a truncated or damaged image (struct.error: a TIFF cut inside its header).
DECODE_ERRORS = (OSError, ValueError, EOFError, struct.error, tifffile.TiffFileError, Image.DecompressionBombError)


def _read_label_file(path: Path) -> tuple[np.ndarray, list[tuple[int, int, int]] | None]:
    """Decode a label PNG/TIFF: ``(array, first palette colours or None)``, refusing sizes over the budget.

    Raises:
        DataError: The header declares more pixels than the budget (checked before decoding).
    """
    if path.suffix.lower() in {".tif", ".tiff"}:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            _check_budget(path, page.imagewidth, page.imagelength)
            return page.asarray(), None
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # label images of whole slides are legitimately huge: our budget applies
    try:
        with Image.open(path) as img:
            _check_budget(path, *img.size)
            colors = None
            if img.mode == "P":
                pal = img.getpalette() or []
                colors = [(pal[i], pal[i + 1], pal[i + 2]) for i in range(0, min(len(pal), 9), 3)]
            return np.asarray(img), colors
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _check_budget(path: Path, width: int, height: int) -> None:
    problem = pixel_budget_problem(width, height, channels=1)
    if problem:
        msg = f"label image {path} {problem}"
        raise DataError(msg)


def read_label_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[tuple[int, int, int]] | None]:
    """Decode a label PNG/TIFF (pixel budget checked first): ``(values, first 3 palette colours or None)``.

    Raises:
        DataError: Unreadable file, or more pixels than the budget.
    """
    path = Path(path)
    try:
        return _read_label_file(path)
    except DECODE_ERRORS as err:
        msg = f"cannot read label image {path}: {err}; pass a PNG or TIFF label image"
        raise DataError(msg) from err


def palette_to_ids(
    array: np.ndarray,
    colors: list[tuple[int, int, int]] | None,
    path: str | os.PathLike[str],
    *,
    palette: LabelPalette = "auto",
    classes: ClassTable | None = DEFAULT_CLASSES,
) -> np.ndarray:
    """Turn label values into our class ids: the one palette rule of ``tile`` and ``export``.

    Args:
        array: Decoded label values ``(H, W)``.
        colors: The PNG palette's first colours (``read_label_file``), or None.
        path: The file, for messages.
        palette: ``"wsss4luad"``, ``"ids"`` or ``"auto"`` (WSSS4LUAD when the palette starts with its colours).
        classes: Class table the ids must fit, or None to keep any values as they are (a mask of unknown table).

    Raises:
        DataError: Not a single-channel integer image, or values outside the convention.
    """
    if array.ndim != 2 or array.dtype.kind not in "biu":
        msg = (
            f"label image {path} has shape {array.shape} and dtype {array.dtype}; it must be a "
            "single-channel integer image (palette or greyscale PNG, one-page TIFF)"
        )
        raise DataError(msg)
    if array.dtype == np.bool_:  # a 1-bit image: 0 and 1, never a boolean index
        array = array.astype(np.uint8)
    wsss = palette == "wsss4luad" or (palette == "auto" and colors == _WSSS4LUAD_COLORS)
    values = np.unique(array)
    if wsss:
        if values.min() < 0 or values.max() >= len(WSSS4LUAD_PALETTE_REMAP):
            msg = f"WSSS4LUAD label image {path} holds values {values.tolist()}; expected 0..3"
            raise DataError(msg)
        return WSSS4LUAD_PALETTE_REMAP[array]
    if classes is None:
        return array
    bad = values[(values < 0) | (values >= len(classes))]
    if bad.size:
        msg = (
            f"label image {path} holds ids {bad.tolist()} outside the class table 0..{len(classes) - 1} "
            f"({', '.join(classes.names)}); use palette='wsss4luad' or remap the image"
        )
        raise DataError(msg)
    return array.astype(np.uint8)


def _check_downsample(path: Path, shape: tuple[int, ...], level0_size: tuple[int, int]) -> float:
    lh, lw = shape[:2]
    w, h = (int(v) for v in level0_size)
    d = round(w / lw) if lw else 0
    fits = d >= 1 and lw in {w // d, -(-w // d)} and lh in {h // d, -(-h // d)}
    if not fits:
        msg = (
            f"label image {path} is {lw}x{lh} px, not an integer downsample of the slide's {w}x{h} level 0; "
            f"save it at the slide size divided by 1, 2, 4, ..."
        )
        raise DataError(msg)
    return float(d)


def load_label_image(
    path: str | os.PathLike[str],
    *,
    level0_size: tuple[int, int],
    palette: LabelPalette = "auto",
    classes: ClassTable = DEFAULT_CLASSES,
) -> tuple[np.ndarray, float]:
    """Load a label PNG/TIFF whose size is an integer downsample of the slide.

    Args:
        path: Single-channel label image (palette ``P``, greyscale, or a one-page TIFF).
        level0_size: Slide level-0 ``(width, height)``.
        palette: ``"wsss4luad"``: values are WSSS4LUAD indices (0 tumor, 1 stroma, 2 normal,
            3 background), remapped with ``WSSS4LUAD_PALETTE_REMAP``; ``"ids"``: values are our class ids;
            ``"auto"``: WSSS4LUAD when the PNG palette starts with its colours, else ids.
        classes: Class table the ids must fit.

    Returns:
        ``(labels, downsample)``: uint8 class ids and level-0 pixels per label pixel.

    Raises:
        DataError: If the file is unreadable, not single-channel, not an integer downsample of the
            slide, or holds ids outside the class table.
    """
    path = Path(path)
    array, colors = read_label_file(path)
    ids = palette_to_ids(array, colors, path, palette=palette, classes=classes)
    return ids, _check_downsample(path, ids.shape, level0_size)
