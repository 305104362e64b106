"""Strip reading: decode each stored tile of a pyramid level once per pass and cut the windows from memory.

With 50 % window overlap every stored JPEG tile under a window is decoded again by up to four windows when each
window calls ``read_region``. A :class:`StripReader` is given the whole list of window origins up front: it
reads the compressed tiles of the level straight from the TIFF (tifffile), decodes each one the first time a
window needs it, keeps it while a later window still needs it, and drops it after the last one. In raster order
that holds about one strip of tiles: a band of the level as tall as a window plus a stride.

Pixels follow the backend's ``read_region`` contract, so windows match the per-window path:

- the decode is the same libjpeg-turbo / OpenJPEG decode openslide and tiffslide use, so level reads at whole
  level pixels are identical;
- openslide places a level-0 origin that falls between level pixels (downsample not a whole number) with a
  bilinear shift; the strip reader does the same shift in 7-bit fixed point (openslide's pixels differ by at
  most a few grey levels there); tiffslide truncates to whole level pixels and so does the reader;
- pixels outside the level, and tiles that are not stored, are white.

:func:`tile_layout` says whether a slide level can be read this way; when it cannot (not a TIFF, stripped
pages, a vendor layout with overlapping tiles, a codec imagecodecs lacks), callers keep per-window reads.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from wsiseg.errors import SlideError
from wsiseg.slide.protocol import RGBArray
from wsiseg.slide.tile_layout import TileLayout, tile_layout

__all__ = ["StripReader", "TileLayout", "tile_layout"]
#: Fraction bits of openslide's (cairo/pixman) bilinear weights.
_BITS = 7
_ONE = 1 << _BITS


class StripReader:
    """Windows of one level, cut from tiles that are each decoded once per pass.

    The reader is planned over ``origins`` and serves ``read(i)`` for any index, but it is built for increasing
    indices (a raster pass, or one DataLoader worker's share of it): a tile is dropped once the current index
    is past the last planned window that uses it. Any other order stays correct (a dropped tile is decoded
    again) and memory stays bounded by ``max_tiles``. The file is opened lazily in the reading process and
    not pickled, so the reader can be handed to worker processes; it is not thread-safe.

    Args:
        layout: The level's tiles (from :func:`tile_layout`).
        origins: Level-0 ``(x, y)`` window origins, in the order windows will be read.
        read_size: Window side in pixels of the level.
        max_tiles: Most decoded tiles kept (default: two strips of the plan).
        decoder: ``"cpu"`` (default): imagecodecs, one call per tile. ``"torch-cpu"`` / ``"cuda"``: on a miss,
            every tile of the missing tiles' rows that a window at or after the current one still needs is
            decoded in one ``torchvision.io.decode_jpeg`` batch (:mod:`wsiseg.slide.jpeg_batch`); check the
            layout with :func:`~wsiseg.slide.jpeg_batch.choose_decoder` first. Batches assume one process
            reads the plan in order (the main process), not DataLoader workers sharing it.

    Attributes:
        decodes: Tiles decoded so far by this process (the count the tests and benchmarks report).
        reads: Windows returned so far.
        peak_tiles: Most decoded tiles held at once.
        batches: ``decode_jpeg`` calls made (batch decoders only).
    """

    def __init__(
        self,
        layout: TileLayout,
        origins: Sequence[tuple[int, int]],
        read_size: int,
        *,
        max_tiles: int | None = None,
        decoder: str = "cpu",
    ) -> None:
        from wsiseg.slide.jpeg_batch import DECODERS, gpu_decode_problem

        if decoder not in DECODERS:
            msg = f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}"
            raise ValueError(msg)
        problem = None if decoder == "cpu" else gpu_decode_problem(layout, "cuda" if decoder == "cuda" else "cpu")
        if problem:
            msg = f"decoder {decoder!r} cannot read {layout.describe()}: {problem}"
            raise ValueError(msg)
        self.decoder = decoder
        if read_size <= 0:
            msg = f"read_size must be positive, got {read_size}"
            raise ValueError(msg)
        self.layout = layout
        self.origins = [(int(x), int(y)) for x, y in origins]
        self.read_size = int(read_size)
        self._spans = [self._span(x, y) for x, y in self.origins]
        self._last_use: dict[tuple[int, int], int] = {}
        for i, span in enumerate(self._spans):
            for key in self._tiles_of(span):
                self._last_use[key] = i
        band = -(-(self.read_size + 1) // layout.tile_height) + 1
        self.max_tiles = max_tiles or max(16, 2 * layout.tiles_across * band)
        self._cache: OrderedDict[tuple[int, int], RGBArray | None] = OrderedDict()
        self._file: Any = None
        self._pid: int | None = None
        self.decodes = 0
        self.reads = 0
        self.peak_tiles = 0
        self.batches = 0

    # -- geometry ------------------------------------------------------------------------------

    def _span(self, x: int, y: int) -> tuple[int, int, int, int, int]:
        """``(x0, y0, side, wx, wy)``: the level-pixel square to cut and the bilinear weights (0 = none)."""
        fx, fy = x / self.layout.downsample, y / self.layout.downsample
        if not self.layout.subpixel:
            return int(fx), int(fy), self.read_size, 0, 0
        ix, iy = math.floor(fx), math.floor(fy)
        # pixman's weight: the 16.16 fixed-point fraction cut to _BITS bits
        wx = (round((fx - ix) * 65536) >> (16 - _BITS)) & (_ONE - 1)
        wy = (round((fy - iy) * 65536) >> (16 - _BITS)) & (_ONE - 1)
        side = self.read_size + (1 if wx or wy else 0)
        return ix, iy, side, wx, wy

    def _tiles_of(self, span: tuple[int, int, int, int, int]) -> Iterator[tuple[int, int]]:
        """The stored tiles ``(col, row)`` under a span (only those inside the level)."""
        x0, y0, side = span[:3]
        lay = self.layout
        c0, c1 = max(x0, 0) // lay.tile_width, min(x0 + side, lay.width) - 1
        r0, r1 = max(y0, 0) // lay.tile_height, min(y0 + side, lay.height) - 1
        if c1 < max(x0, 0) or r1 < max(y0, 0):
            return
        for row in range(r0, r1 // lay.tile_height + 1):
            for col in range(c0, c1 // lay.tile_width + 1):
                yield col, row

    def tiles_touched(self) -> int:
        """Tile reads a per-window path makes without a cache: the sum over windows of tiles under each."""
        return sum(sum(1 for _ in self._tiles_of(span)) for span in self._spans)

    # -- decoding ------------------------------------------------------------------------------

    def _open(self) -> Any:
        """This process's tifffile page and file handle, opened on first use (and after fork)."""
        import tifffile

        if self._file is None or self._pid != os.getpid():
            self._cache.clear()
            try:
                tif = tifffile.TiffFile(self.layout.path)
                page = tif.series[self.layout.series].levels[self.layout.series_level].keyframe
            except Exception as err:
                msg = f"cannot reopen {self.layout.path} for strip reading ({type(err).__name__}: {err})"
                raise SlideError(msg) from err
            # decode and the tags may read the file: fetch them before any tile seek
            self._file = (tif, page.decode, page.dataoffsets, page.databytecounts, page.jpegtables)
            self._pid = os.getpid()
        return self._file

    def _decode(self, col: int, row: int) -> RGBArray | None:
        """Decode one stored tile to ``(tile_h, tile_w, 3)``; None when the tile is not stored."""
        tif, decode, offsets, counts, tables = self._open()
        index = row * self.layout.tiles_across + col
        if index >= len(offsets) or counts[index] == 0:
            return None
        try:
            tif.filehandle.seek(offsets[index])
            data = tif.filehandle.read(counts[index])
            arr = decode(data, index, jpegtables=tables, _fullsize=True)[0]
            tile = np.asarray(arr).reshape(self.layout.tile_height, self.layout.tile_width, -1)
        except Exception as err:
            msg = (
                f"decoding tile ({col}, {row}) of level {self.layout.level} of {self.layout.path} failed "
                f"({type(err).__name__}: {err}); the file may be truncated or corrupt, re-copy it"
            )
            raise SlideError(msg) from err
        self.decodes += 1
        if tile.shape[2] == 1:
            tile = np.repeat(tile, 3, axis=2)
        return np.ascontiguousarray(tile[..., :3])

    def _decode_rows(self, index: int, missing: list[tuple[int, int]]) -> None:
        """Batch-decode the tiles of ``missing``'s rows still needed at or after window ``index`` into the cache."""
        from wsiseg.slide.jpeg_batch import decode_batch, jpeg_stream

        tif, _, offsets, counts, tables = self._open()
        across, last = self.layout.tiles_across, self._last_use
        wanted = dict.fromkeys(missing)  # ordered set: the missing tiles, then the rest of their rows still needed
        for row in sorted({r for _, r in missing}):
            wanted.update(dict.fromkeys((c, row) for c in range(across) if last.get((c, row), -1) >= index))
        keys = [k for k in wanted if k not in self._cache]
        stored, streams = [], []
        rgb = self.layout.photometric == 2
        try:
            for col, row in keys:
                i = row * across + col
                if i >= len(offsets) or counts[i] == 0:
                    self._cache[(col, row)] = None
                    continue
                tif.filehandle.seek(offsets[i])
                streams.append(jpeg_stream(tif.filehandle.read(counts[i]), tables, rgb=rgb))
                stored.append((col, row))
            device = "cuda" if self.decoder == "cuda" else "cpu"
            tiles = decode_batch(streams, device)
        except Exception as err:
            msg = (
                f"batch-decoding {len(streams)} tiles of level {self.layout.level} of {self.layout.path} on "
                f"{self.decoder} failed ({type(err).__name__}: {err}); decoder='cpu' reads them one by one"
            )
            raise SlideError(msg) from err
        shape = (self.layout.tile_height, self.layout.tile_width, 3)
        for key, tile in zip(stored, tiles, strict=True):
            if tile.shape != shape:
                msg = f"tile {key} of {self.layout.path} decoded to {tile.shape}, expected {shape}"
                raise SlideError(msg)
            self._cache[key] = tile
        self.decodes += len(stored)
        self.batches += 1
        while len(self._cache) > self.max_tiles:
            self._cache.popitem(last=False)
        self.peak_tiles = max(self.peak_tiles, len(self._cache))

    def _tile(self, key: tuple[int, int]) -> RGBArray | None:
        """A decoded tile from the cache, decoding (and evicting the oldest past ``max_tiles``) on a miss."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        tile = self._decode(*key)
        self._cache[key] = tile
        while len(self._cache) > self.max_tiles:
            self._cache.popitem(last=False)
        self.peak_tiles = max(self.peak_tiles, len(self._cache))
        return tile

    def _evict(self, index: int) -> None:
        """Drop tiles no window at or after ``index`` needs."""
        last = self._last_use
        for key in [k for k in self._cache if last.get(k, -1) < index]:
            del self._cache[key]

    # -- windows -------------------------------------------------------------------------------

    def read(self, index: int) -> RGBArray:
        """Return window ``index`` as ``(read_size, read_size, 3)`` RGB, white outside the level.

        Raises:
            IndexError: If ``index`` is not a planned window.
        """
        if not 0 <= index < len(self._spans):
            msg = f"window {index} is not planned (the reader has {len(self._spans)} windows)"
            raise IndexError(msg)
        self._open()
        self._evict(index)
        span = self._spans[index]
        x0, y0, side, wx, wy = span
        lay = self.layout
        out = np.full((side, side, 3), 255, dtype=np.uint8)
        if self.decoder != "cpu":
            missing = [k for k in self._tiles_of(span) if k not in self._cache]
            if missing:
                self._decode_rows(index, missing)
        for col, row in self._tiles_of(span):
            tile = self._tile((col, row))
            if tile is None:
                continue
            tx, ty = col * lay.tile_width, row * lay.tile_height
            sx0, sy0 = max(x0, tx), max(y0, ty)
            sx1 = min(x0 + side, tx + lay.tile_width, lay.width)
            sy1 = min(y0 + side, ty + lay.tile_height, lay.height)
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        self.reads += 1
        if side == self.read_size:
            return out
        return _shift(out, wx, wy)

    def __len__(self) -> int:
        return len(self._spans)

    def __iter__(self) -> Iterator[RGBArray]:
        """Yield every planned window in order."""
        for i in range(len(self._spans)):
            yield self.read(i)

    def close(self) -> None:
        """Close the file and drop the decoded tiles (a later read reopens)."""
        if self._file is not None and self._pid == os.getpid():
            self._file[0].close()
        self._file = None
        self._cache.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_file=None, _pid=None, _cache=OrderedDict())
        return state


def _shift(pixels: RGBArray, wx: int, wy: int) -> RGBArray:
    """Bilinear sub-pixel shift by ``(wx, wy) / 128``: ``(n+1)^2`` pixels in, ``n^2`` out, rounded."""
    a = pixels.astype(np.uint32)
    top = a[:-1, :-1] * (_ONE - wx) + a[:-1, 1:] * wx
    bottom = a[1:, :-1] * (_ONE - wx) + a[1:, 1:] * wx
    total = top * (_ONE - wy) + bottom * wy + (1 << (2 * _BITS - 1))
    return (total >> (2 * _BITS)).astype(np.uint8)
