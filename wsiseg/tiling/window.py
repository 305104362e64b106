"""Read windows the way every tile and every prediction input is read.

A window is a region at one pyramid level, resized to the model's input with the one kernel recorded in the
manifest. ``wsiseg tile`` and ``wsiseg predict`` both read through :class:`WindowReader` (or, one at a time,
:func:`read_window`), so training and prediction see the same pixels for the same window.

When the window origins are known in advance, :class:`WindowReader` reads tiled TIFF/SVS levels in strips
(:mod:`wsiseg.slide.strips`): each stored tile is decoded once per pass instead of once per overlapping
window. Other slides keep one ``read_region`` per window. :func:`plan_reads` makes that choice and logs it once
per slide and level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from wsiseg.slide import Slide
from wsiseg.slide.protocol import RGBArray
from wsiseg.slide.strips import StripReader, TileLayout, tile_layout
from wsiseg.tiling.geometry import RESIZE_KERNELS

__all__ = ["RESAMPLING", "ReadPlan", "WindowReader", "plan_reads", "read_window", "row_chunks"]

_log = logging.getLogger("wsiseg.slide")

#: Pillow filter of every kernel name ``TilingConfig.resize`` accepts.
RESAMPLING = {name: Image.Resampling[name.upper()] for name in RESIZE_KERNELS}


def _resize(pixels: RGBArray, size: int, resize: str) -> Image.Image:
    """The one resize every window goes through."""
    img = Image.fromarray(pixels)
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLING[resize])
    return img


def read_window(
    slide: Slide, origin: tuple[int, int], level: int, read_size: int, size: int, resize: str
) -> Image.Image:
    """Read the ``read_size`` square at level-0 ``origin`` from ``level`` and resize it to ``size``.

    Args:
        slide: The slide (its handle opens lazily in the calling process).
        origin: Level-0 ``(x, y)`` of the window.
        level: Pyramid level to read.
        read_size: Window side at that level.
        size: Output side in pixels.
        resize: Kernel name, one of ``RESIZE_KERNELS``.

    Returns:
        An RGB image of ``size`` x ``size``.
    """
    return _resize(slide.read_region(origin, level, (read_size, read_size)), size, resize)


@dataclass(frozen=True)
class ReadPlan:
    """How a slide level is read: in strips (``layout`` set) or one ``read_region`` per window.

    Attributes:
        layout: The level's tile layout, or None for per-window reads.
        reason: Why per-window reads were chosen (``""`` for strips).
        decoder: The strip reader's tile decoder (``"cpu"``: imagecodecs; ``"torch-cpu"`` / ``"cuda"``:
            ``decode_jpeg`` batches, see :mod:`wsiseg.slide.jpeg_batch`).
    """

    layout: TileLayout | None
    reason: str = ""
    decoder: str = "cpu"

    @property
    def mode(self) -> str:
        """``"strips"`` or ``"per-window"``."""
        return "strips" if self.layout is not None else "per-window"


def plan_reads(slide: Slide, level: int, *, strips: bool = True) -> ReadPlan:
    """Choose strip or per-window reading for ``level`` of ``slide`` and log the choice.

    Args:
        slide: The open slide.
        level: Pyramid level the windows are read from.
        strips: False forces per-window reads.

    Returns:
        The plan; a worker process reuses it without probing the file again.
    """
    if not strips:
        plan = ReadPlan(None, "strip reading turned off")
    elif not isinstance(slide, Slide):
        plan = ReadPlan(None, f"{type(slide).__name__} is not a wsiseg Slide")
    else:
        found = tile_layout(slide, level)
        plan = ReadPlan(found) if isinstance(found, TileLayout) else ReadPlan(None, found)
    name = getattr(slide, "path", "slide")
    if plan.layout is not None:
        _log.info("%s: reading %s in strips (each tile decoded once)", name, plan.layout.describe())
    else:
        _log.info("%s: reading level %d one window at a time (%s)", name, level, plan.reason)
    return plan


class WindowReader:
    """The planned windows of one slide, resized, by index or in order.

    Strip-read when ``plan.layout`` is set, else one ``read_region`` per window; both give the same pixels
    (see :mod:`wsiseg.slide.strips` for the tolerance) and the same resize. The reader is picklable: each process
    opens its own file handle, so it can live in a torch ``Dataset`` read by DataLoader workers, where each worker
    decodes the tiles its own windows need.

    Args:
        slide: The slide.
        origins: Level-0 window origins in reading order (raster order for one tile decode per pass).
        level: Pyramid level to read.
        read_size: Window side at that level.
        size: Output side.
        resize: Kernel name, one of ``RESIZE_KERNELS``.
        plan: From :func:`plan_reads` (None plans here).
    """

    def __init__(
        self,
        slide: Slide,
        origins: Sequence[tuple[int, int]],
        level: int,
        read_size: int,
        size: int,
        resize: str,
        plan: ReadPlan | None = None,
    ) -> None:
        if resize not in RESAMPLING:
            msg = f"unknown resize kernel {resize!r}; use one of {', '.join(RESAMPLING)}"
            raise ValueError(msg)
        self.slide = slide
        self.origins = [(int(x), int(y)) for x, y in origins]
        self.level, self.read_size, self.size, self.resize = level, read_size, size, resize
        self.plan = plan if plan is not None else plan_reads(slide, level)
        layout = self.plan.layout
        self.strips = (
            None if layout is None else StripReader(layout, self.origins, read_size, decoder=self.plan.decoder)
        )

    @property
    def mode(self) -> str:
        """``"strips"`` or ``"per-window"``."""
        return self.plan.mode

    @property
    def decodes(self) -> int | None:
        """Tiles decoded by this process so far (None for per-window reads, which the backend does)."""
        return None if self.strips is None else self.strips.decodes

    def read_pixels(self, index: int) -> RGBArray:
        """Window ``index`` before the resize: ``(read_size, read_size, 3)`` RGB."""
        if self.strips is not None:
            return self.strips.read(index)
        side = self.read_size
        return self.slide.read_region(self.origins[index], self.level, (side, side))

    def read(self, index: int) -> Image.Image:
        """Window ``index`` resized to ``size`` x ``size``."""
        return _resize(self.read_pixels(index), self.size, self.resize)

    def __len__(self) -> int:
        return len(self.origins)

    def __iter__(self) -> Iterator[Image.Image]:
        """Yield every window in order."""
        for i in range(len(self.origins)):
            yield self.read(i)

    def close(self) -> None:
        """Release the strip reader's file and tiles (the slide stays open)."""
        if self.strips is not None:
            self.strips.close()


def row_chunks(origins: Sequence[tuple[int, int]], target: int) -> list[tuple[int, int]]:
    """Cut raster-ordered origins into ``(start, stop)`` runs of whole grid rows, each about ``target`` long.

    Strip readers in different processes then share only the tiles at chunk borders.

    Args:
        origins: Window origins in raster order.
        target: Wanted windows per chunk (a chunk holds at least one whole row).

    Returns:
        Consecutive ``(start, stop)`` index ranges covering every origin.
    """
    chunks: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(origins) + 1):
        row_ends = i == len(origins) or origins[i][1] != origins[i - 1][1]
        if row_ends and i - start >= max(1, target):
            chunks.append((start, i))
            start = i
    if start < len(origins):
        chunks.append((start, len(origins)))
    return chunks
