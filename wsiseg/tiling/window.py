"""Read one window the way every tile and every prediction input is read.

A window is a region at one pyramid level, resized to the model's input with the one kernel recorded in the
manifest. ``wsiseg tile`` and ``wsiseg predict`` both call :func:`read_window`, so training and prediction see the
same pixels for the same window.
"""

from __future__ import annotations

from PIL import Image

from wsiseg.slide import Slide
from wsiseg.tiling.geometry import RESIZE_KERNELS

__all__ = ["RESAMPLING", "read_window"]

#: Pillow filter of every kernel name ``TilingConfig.resize`` accepts.
RESAMPLING = {name: Image.Resampling[name.upper()] for name in RESIZE_KERNELS}


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
    img = Image.fromarray(slide.read_region(origin, level, (read_size, read_size)))
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLING[resize])
    return img
