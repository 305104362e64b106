"""Read label masks back (TIFF pyramid level or PNG) and write output files atomically.

``read_label_mask`` loads what ``wsiseg predict`` wrote (or any single-channel label TIFF/PNG): the pixels of
one pyramid level, its microns per pixel from the TIFF resolution tags, and the class table and level-0
downsample from the JSON metadata when present (level-0 ImageDescription, the OME ``Description``, or the
``<stem>.json`` sidecar written by ``wsiseg.export.tiff``). Masks written with a ``label_offset`` are
turned back into class ids, with unanalysed pixels as background (0).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.fileio import pixel_budget_problem
from wsiseg.tiling.label_images import DECODE_ERRORS, palette_to_ids, read_label_file

__all__ = ["LabelMask", "mask_level_shapes", "read_label_mask"]

_UM_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_DOWNSAMPLE_KEYS = ("downsample_to_level0", "scale_to_level0", "downsample")


@dataclass(frozen=True)
class LabelMask:
    """A label mask with what is known about its geometry.

    Attributes:
        labels: ``(H, W)`` uint8 class ids.
        mpp: Microns per pixel of ``labels``, or ``None`` when the file has no usable resolution tags.
        downsample_to_level0: Slide level-0 pixels per ``labels`` pixel, or ``None`` when unknown.
        classes: Class table stored in the file, or ``None``.
    """

    labels: np.ndarray
    mpp: float | None
    downsample_to_level0: float | None
    classes: ClassTable | None


def _page_mpp(page: tifffile.TiffPage) -> float | None:
    """Microns per pixel from XResolution/ResolutionUnit, or ``None``."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    num, den = tags["XResolution"].value
    if unit not in _UM_PER_UNIT or num <= 0 or den <= 0:
        return None
    return _UM_PER_UNIT[unit] * den / num


def _tiff_metadata(tif: tifffile.TiffFile, path: Path) -> Any:
    """Our JSON metadata: level-0 ImageDescription, else OME ``Description``, else the sidecar JSON."""
    desc = tif.pages.first.description or ""
    texts = [desc]
    if tif.is_ome:
        with suppress(ET.ParseError):
            texts += [e.text or "" for e in ET.fromstring(desc).iter() if e.tag.endswith("Description")]
    side = path.with_suffix(".json")
    if side.is_file():
        texts.append(side.read_text(encoding="utf-8"))
    for text in texts:
        if text.lstrip().startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                continue
    return None


def _parse_metadata(meta: Any) -> tuple[ClassTable | None, float | None]:
    """Class table and level-0 downsample from parsed metadata (``None`` where absent)."""
    items = meta if isinstance(meta, list) else meta.get("classes") if isinstance(meta, dict) else None
    classes = None
    if isinstance(items, list) and items:
        try:
            classes = ClassTable.from_list(items)
        except (KeyError, TypeError, ValueError):
            classes = None
    downsample = None
    if isinstance(meta, dict):
        for key in _DOWNSAMPLE_KEYS:
            if isinstance(meta.get(key), int | float) and meta[key] > 0:
                downsample = float(meta[key])
                break
    return classes, downsample


def _decode_labels(stored: np.ndarray, meta: Any, path: Path) -> np.ndarray:
    """Undo the writer's label convention: ids = stored - ``label_offset``; unanalysed -> 0."""
    if not isinstance(meta, dict):
        return stored
    if meta.get("kind") == "probability":
        msg = f"{path} is a probability map, not a label mask; pass the labels TIFF (mask.tif)"
        raise DataError(msg)
    offset = int(meta.get("label_offset") or 0)
    if offset == 0:
        return stored
    unanalysed = int(meta.get("unanalysed_value") or 0)
    ids = stored.astype(np.int16) - offset
    ids[stored == unanalysed] = 0
    if ids.size and int(ids.min()) < 0:
        msg = f"{path} holds values below its label_offset {offset}; the mask metadata is inconsistent"
        raise DataError(msg)
    return ids.astype(np.uint8)


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Check a decoded image is a single-channel integer mask with ids <= 255; return uint8."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.dtype.kind not in "biu":
        msg = (
            f"{path} is not a single-channel integer label mask (shape {array.shape}, dtype {array.dtype}); "
            "pass the mask written by 'wsiseg predict' or a palette/greyscale PNG"
        )
        raise DataError(msg)
    if array.size and (int(array.max()) > 255 or int(array.min()) < 0):
        msg = f"{path} holds label ids outside 0..255; label masks must be uint8"
        raise DataError(msg)
    return array.astype(np.uint8, copy=False)


def _read_tiff(path: Path, level: int) -> LabelMask:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        levels = list(series.levels)
        if not 0 <= level < len(levels):
            msg = f"{path} has {len(levels)} pyramid level(s); choose a level in 0..{len(levels) - 1}"
            raise DataError(msg)
        base_page = levels[0].keyframe
        meta = _tiff_metadata(tif, path)
        shape = levels[level].shape
        problem = pixel_budget_problem(shape[1], shape[0], channels=1) if len(shape) >= 2 else None
        if problem:
            msg = f"mask {path} level {level} {problem} (or pick a coarser level)"
            raise DataError(msg)
        labels = _decode_labels(_as_labels(levels[level].asarray(), path), meta, path)
        classes, downsample = _parse_metadata(meta)
        factor = base_page.imagewidth / labels.shape[1]
        mpp = _page_mpp(levels[level].keyframe)
        base_mpp = _page_mpp(base_page)
        if base_mpp is None and isinstance(meta, dict) and isinstance(meta.get("mpp"), int | float):
            base_mpp = float(meta["mpp"])
        if mpp is None and base_mpp is not None:
            mpp = base_mpp * factor
    return LabelMask(
        labels=labels,
        mpp=mpp,
        downsample_to_level0=downsample * factor if downsample is not None else None,
        classes=classes,
    )


def _existing_mask(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or ``DataError`` naming it when there is no such file."""
    path = Path(path)
    if not path.is_file():
        msg = f"label mask {path} does not exist; check the path"
        raise DataError(msg)
    return path


def read_label_mask(path: str | os.PathLike[str], *, level: int = 0) -> LabelMask:
    """Load a label mask from a TIFF (one pyramid level) or a PNG.

    Args:
        path: ``.tif``/``.tiff`` (e.g. ``mask.tif`` from ``wsiseg predict``) or ``.png``.
        level: Pyramid level index for TIFFs (0 = full resolution of the mask); must be 0 for PNGs.

    Returns:
        The labels with mpp (from resolution tags in cm or inch), the level-0 downsample and the
        class table (from a JSON ImageDescription), each ``None`` when absent.

    Raises:
        DataError: If the file is missing, unreadable, not a single-channel mask, or the level is absent.
    """
    path = _existing_mask(path)
    try:
        if path.suffix.lower() in {".tif", ".tiff"}:
            return _read_tiff(path, level)
        if level != 0:
            msg = f"{path} is not a pyramid; use level 0"
            raise DataError(msg)
        array, colors = read_label_file(path)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        # the palette rule of `wsiseg tile`: a WSSS4LUAD palette PNG holds its indices, not our class ids
        return LabelMask(_as_labels(palette_to_ids(array, colors, path, classes=None), path), None, None, None)
    except DECODE_ERRORS as err:
        msg = f"cannot read label mask {path}: {err}; pass a TIFF or PNG label image"
        raise DataError(msg) from err


def mask_level_shapes(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """Return ``(height, width)`` of every pyramid level of a mask file without decoding pixels.

    Raises:
        DataError: If the file is missing or unreadable.
    """
    path = _existing_mask(path)
    try:
        if path.suffix.lower() in {".tif", ".tiff"}:
            with tifffile.TiffFile(path) as tif:
                return [tuple(int(v) for v in lvl.shape[:2]) for lvl in tif.series[0].levels]  # type: ignore[misc]
        with Image.open(path) as img:
            return [(img.height, img.width)]
    except DECODE_ERRORS as err:
        msg = f"cannot read label mask {path}: {err}; pass a TIFF or PNG label image"
        raise DataError(msg) from err
