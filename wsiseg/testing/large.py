"""Very large synthetic slides in seconds: an Aperio-style JPEG pyramid built from a few repeated tiles.

:func:`make_large_slide` writes a 100k x 100k slide (or any size) without rendering it: a handful of distinct
256 px tissue tiles and one background tile are JPEG-encoded once, and every stored tile of every level is one
of those byte strings. Tissue sits in a few blobs laid out by ``seed`` (about ``tissue`` of the area), the rest
is near-white glass, so tissue detection, window planning and prediction behave as on a real slide, while the
file stays small (a 100k slide with 30 % tissue is about 1 GB). The pixels are not a ground truth: use
:func:`wsiseg.testing.make_slide` when a test needs a known mask. Memory and speed benchmarks use this one.

The layout matches ``make_slide``: page 0 is level 0, page 1 a stripped thumbnail, then levels at downsample
4, 16, ... while their longer side is at least ``min_level_size``; MPP and AppMag are in the Aperio
ImageDescription, so openslide reads it as ``aperio`` and tifffile sees one pyramid series.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsiseg.errors import ConfigError
from wsiseg.testing._texture import build_scene, label_mask, render_scene
from wsiseg.testing.synthetic import _describe

__all__ = ["make_large_slide"]

_BACKGROUND = 242  # glass, as scanners record it
_DISTINCT = 12  # distinct tissue tiles
_RENDERED = 16  # levels at this downsample and coarser are rendered (small), finer ones repeat tile bytes


def _tissue_grid(cols: int, rows: int, seed: int, tissue: float) -> np.ndarray:
    """Boolean ``(rows, cols)`` map of level-0 tiles that hold tissue: a few elliptic blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    out = np.zeros((rows, cols), dtype=bool)
    blobs = 5
    # each blob covers about tissue / blobs of the slide (overlaps make it a little less)
    area = tissue * rows * cols / blobs
    for _ in range(blobs):
        cy, cx = rng.uniform(0.2, 0.8) * rows, rng.uniform(0.2, 0.8) * cols
        ratio = rng.uniform(0.6, 1.6)
        ry, rx = math.sqrt(area / math.pi * ratio), math.sqrt(area / math.pi / ratio)
        out |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return out


def _tile_images(tile: int, seed: int) -> list[np.ndarray]:
    """``_DISTINCT`` tiles that are almost all tissue, cut from one rendered synthetic scene."""
    side = tile * 8
    scene = build_scene(side, side, seed, 0, tissue_frac=(0.85, 0.95))
    labels = label_mask(scene, 1)
    rgb = render_scene(scene, labels, 1, 0, 0, side, side)
    cuts = [((labels[y : y + tile, x : x + tile] > 0).mean(), y, x) for y in range(0, side, tile)
            for x in range(0, side, tile)]  # fmt: skip
    cuts.sort(key=lambda c: -c[0])
    return [rgb[y : y + tile, x : x + tile].copy() for _, y, x in cuts[:_DISTINCT]]


def _encoded(images: list[np.ndarray], quality: int, opts: dict[str, Any]) -> list[bytes]:
    """The stored tile bytes tifffile writes for each image (same encoder and tags as the big file)."""
    import tifffile

    tile = images[0].shape[0]
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        tw.write(np.concatenate(images, axis=1), tile=(tile, tile), compression="jpeg",
                 compressionargs={"level": quality}, **opts)  # fmt: skip
    buf.seek(0)
    with tifffile.TiffFile(buf) as tif:
        page = tif.pages[0]
        if page.jpegtables is not None:  # pragma: no cover - tifffile writes whole JPEG streams per tile
            msg = "tifffile wrote shared JPEG tables; cannot reuse tile bytes"
            raise RuntimeError(msg)
        out = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            buf.seek(offset)
            out.append(buf.read(count))
    return out


def _level_tiles(grid: np.ndarray, ds: int, cols: int, rows: int, codes: list[bytes]) -> Iterator[bytes]:
    """Tile bytes of a level at downsample ``ds`` of level 0: tissue where most level-0 tiles under it are."""
    background, tissue = codes[0], codes[1:]
    for r in range(rows):
        for c in range(cols):
            block = grid[r * ds : (r + 1) * ds, c * ds : (c + 1) * ds]
            if block.size and block.mean() >= 0.5:
                yield tissue[(r * 7 + c * 3) % len(tissue)]
            else:
                yield background


def make_large_slide(
    path: str | Path,
    *,
    width: int,
    height: int,
    seed: int = 0,
    mpp: float = 0.5,
    tissue: float = 0.3,
    tile: int = 256,
    quality: int = 85,
    min_level_size: int = 512,
) -> Path:
    """Write an Aperio-style tiled JPEG pyramid of ``width`` x ``height`` from a few repeated tiles.

    Args:
        path: Output ``.svs`` path (parent folders are created).
        width: Level-0 width in pixels.
        height: Level-0 height in pixels.
        seed: Layout and texture seed.
        mpp: Microns per pixel of level 0.
        tissue: About this fraction of the slide is tissue (0..1).
        tile: Stored tile side (multiple of 16).
        quality: JPEG quality.
        min_level_size: Levels at downsample 4, 16, ... are written while their longer side is at least this.

    Returns:
        The path written.

    Raises:
        ConfigError: A size, tile or fraction is out of range.
    """
    import tifffile

    if width < tile or height < tile or tile < 16 or tile % 16 or not 0 < tissue <= 1 or not mpp > 0:
        msg = (f"make_large_slide needs width and height >= tile, tile a multiple of 16, 0 < tissue <= 1 and "
               f"mpp > 0; got {width}x{height}, tile {tile}, tissue {tissue}, mpp {mpp}")  # fmt: skip
        raise ConfigError(msg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {"photometric": "rgb", "metadata": None, "software": "wsiseg.testing"}
    images = [np.full((tile, tile, 3), _BACKGROUND, dtype=np.uint8), *_tile_images(tile, seed)]
    codes = _encoded(images, quality, opts)
    cols0, rows0 = -(-width // tile), -(-height // tile)
    grid = _tissue_grid(cols0, rows0, seed, tissue)
    tail = f"AppMag = {10 / mpp:g}|ScanScope ID = WSISEG-LARGE|Filename = {path.stem}|MPP = {mpp}"
    jpeg: dict[str, Any] = {"compression": "jpeg", "compressionargs": {"level": quality}}
    levels = [1]
    while max(width, height) // (levels[-1] * 4) >= min_level_size:
        levels.append(levels[-1] * 4)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate(levels):
            w, h = -(-width // ds), -(-height // ds)
            cols, rows = -(-w // tile), -(-h // tile)
            head = f"({tile}x{tile}) JPEG/RGB Q={quality}"
            desc = _describe(width, height, tail, head=head) if ds == 1 else _describe(width, height, tail, size=(w, h))
            if ds < _RENDERED:
                data: Any = _level_tiles(grid, ds, cols, rows, codes)
                tw.write(data, shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), description=desc, **jpeg, **opts)
            else:
                tw.write(_render_level(grid, images, ds, w, h), tile=(tile, tile), description=desc, **jpeg, **opts)
            if i == 0:
                thumb = _thumbnail(grid, width, height)
                desc = _describe(width, height, tail, size=(thumb.shape[1], thumb.shape[0]))
                tw.write(thumb, rowsperstrip=16, description=desc, **jpeg, **opts)
    return path


def _render_level(grid: np.ndarray, images: list[np.ndarray], ds: int, w: int, h: int) -> np.ndarray:
    """A coarse level drawn from the tissue map: each level-0 tile cell gets its tile reduced by ``ds``."""
    tile = images[0].shape[0]
    cell = max(1, tile // ds)
    small = [np.asarray(Image.fromarray(im).resize((cell, cell), Image.Resampling.BOX)) for im in images]
    rows, cols = grid.shape
    out = np.full((rows * cell, cols * cell, 3), _BACKGROUND, dtype=np.uint8)
    tissue = small[1:]
    for r, c in zip(*np.nonzero(grid), strict=True):
        out[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tissue[(r * 7 + c * 3) % len(tissue)]
    if out.shape[0] < h or out.shape[1] < w:
        out = np.pad(out, ((0, max(0, h - out.shape[0])), (0, max(0, w - out.shape[1])), (0, 0)), mode="edge")
    return out[:h, :w]


def _thumbnail(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """A small RGB picture of the tissue map (the stripped thumbnail page of an Aperio file)."""
    img = Image.fromarray(np.where(grid, 200, _BACKGROUND).astype(np.uint8)).convert("RGB")
    scale = 768 / max(width, height)
    return np.asarray(img.resize((max(1, round(width * scale)), max(1, round(height * scale)))))
