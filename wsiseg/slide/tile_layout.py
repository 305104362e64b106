"""Tile layouts: whether a slide level is a plain tiled TIFF page that can be read tile by tile, and where.

:func:`tile_layout` answers for one level of an open slide; the :class:`TileLayout` it returns is small and
picklable, so reader processes can reopen the file themselves (:class:`wsiseg.slide.strips.StripReader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wsiseg.slide import Slide
from wsiseg.slide._tiffslide import is_tiff

__all__ = ["TileLayout", "tile_layout"]

#: openslide vendors whose levels are plain tiled TIFF pages with tiles on a regular grid.
_GRID_VENDORS = frozenset({"aperio", "generic-tiff"})
#: MINISBLACK, RGB, YCbCr.
_PHOTOMETRIC_OK = frozenset({1, 2, 6})


@dataclass(frozen=True)
class TileLayout:
    """Where one slide level's tiles are and how windows map onto them (small and picklable).

    Attributes:
        path: The TIFF file.
        series: tifffile series index of the slide image.
        series_level: Index of the level in that series.
        level: The slide's level index.
        width: Level width in pixels.
        height: Level height in pixels.
        tile_width: Stored tile width.
        tile_height: Stored tile height.
        downsample: The slide's downsample of the level (level-0 px per level px).
        subpixel: True for openslide's bilinear placement of fractional origins, False to truncate (tiffslide).
        codec: Compression name, for messages.
        compression: TIFF compression code (7 = JPEG), for :func:`~wsiseg.slide.jpeg_batch.gpu_decode_problem`.
        photometric: TIFF photometric (1 grey, 2 RGB, 6 YCbCr).
        subsampling: tifffile's ``(h, v)`` YCbCr chroma subsampling, None when it reports none.
    """

    path: str
    series: int
    series_level: int
    level: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    downsample: float
    subpixel: bool
    codec: str
    compression: int = 0
    photometric: int = 2
    subsampling: tuple[int, int] | None = None

    @property
    def tiles_across(self) -> int:
        """Number of tile columns."""
        return -(-self.width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        """Number of tile rows."""
        return -(-self.height // self.tile_height)

    def describe(self) -> str:
        """One line for logs: level, size, tile and codec."""
        return (
            f"level {self.level} ({self.width}x{self.height}, {self.tile_width}x{self.tile_height} {self.codec} tiles)"
        )


def tile_layout(slide: Slide, level: int) -> TileLayout | str:
    """Return the tile layout of ``slide``'s ``level``, or the reason it cannot be strip-read.

    Args:
        slide: An open slide.
        level: The pyramid level the windows are read from.

    Returns:
        A :class:`TileLayout`, or a short reason (``"not a TIFF file"``, ``"level 0 is not tiled"``...).
    """
    import tifffile

    backend, vendor = slide.backend, slide.vendor
    if backend == "openslide" and vendor not in _GRID_VENDORS:
        return f"openslide {vendor} layout is not read by strips"
    if backend == "tiffslide" and vendor not in (None, "aperio", "svs"):
        return f"tiffslide {vendor} layout is not read by strips"
    if backend not in ("openslide", "tiffslide"):
        return f"{backend} images are not read by strips"
    if not 0 <= level < slide.level_count:
        return f"level {level} does not exist"
    if not is_tiff(slide.path):
        return "not a TIFF file"
    width, height = slide.level_dimensions[level]
    try:
        with tifffile.TiffFile(slide.path) as tif:
            found = _find_level(tif, width, height)
            if isinstance(found, str):
                return f"level {level}: {found}"
            series, index, page = found
            problem = _page_problem(page)
            if problem:
                return f"level {level} {problem}"
            codec = _codec_name(page)
            if not _decodes(tif, page):
                return f"level {level}: {codec} tiles do not decode here (codec missing)"
            tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
            compression, photometric = int(page.compression), int(page.photometric)
            sub = page.subsampling
            subsampling = (int(sub[0]), int(sub[1])) if sub else None
    except Exception as err:  # any tifffile failure means: use the backend
        return f"tifffile cannot read it ({type(err).__name__}: {err})"
    return TileLayout(
        str(slide.path), series, index, level, width, height, tile_w, tile_h,
        float(slide.level_downsamples[level]), backend == "openslide", codec, compression, photometric, subsampling,
    )  # fmt: skip


def _find_level(tif: Any, width: int, height: int) -> tuple[int, int, Any] | str:
    """The first series level whose page has the slide level's size, as ``(series, level, page)``."""
    for s, series in enumerate(tif.series[:1]):  # the slide image is series 0 for svs, ome and generic
        for i, lvl in enumerate(series.levels):
            page = lvl.keyframe
            if int(page.imagewidth) == width and int(page.imagelength) == height:
                return s, i, page
    return f"no TIFF page is {width}x{height}"


def _page_problem(page: Any) -> str:
    """Why a page cannot be strip-read, or ``""``."""
    if not page.is_tiled:
        return "is not tiled"
    if int(getattr(page, "imagedepth", 1)) != 1 or int(getattr(page, "tiledepth", 1)) != 1:
        return "is a volume"
    if page.dtype != np.uint8:
        return f"has {page.dtype} pixels"
    if int(page.samplesperpixel) not in (1, 3) or (int(page.samplesperpixel) == 3 and int(page.planarconfig) != 1):
        return f"has {page.samplesperpixel} planar={int(page.planarconfig)} samples (alpha or separate planes)"
    if int(page.photometric) not in _PHOTOMETRIC_OK:
        return f"has photometric {int(page.photometric)}"
    return ""


def _codec_name(page: Any) -> str:
    """Compression name of a page (``JPEG``, ``APERIO_JP2000_RGB``, ``33003``...)."""
    comp = page.compression
    return str(getattr(comp, "name", comp))


def _decodes(tif: Any, page: Any) -> bool:
    """True when the first stored tile of ``page`` decodes to the tile shape."""
    for i, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=False)):
        if count > 0:
            decode, tables = page.decode, page.jpegtables  # both may read tags: before the seek
            tif.filehandle.seek(offset)
            data = tif.filehandle.read(count)
            try:
                arr = decode(data, i, jpegtables=tables, _fullsize=True)[0]
            except Exception:
                return False
            return arr is not None and int(arr.size) == page.tilelength * page.tilewidth * page.samplesperpixel
    return True  # nothing stored: every tile is white
