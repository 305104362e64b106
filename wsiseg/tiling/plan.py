"""One window plan for a slide: the grid, the pyramid level to read and the tissue windows.

Training tiles (:func:`wsiseg.tiling.writer.tile_slide`) and prediction
(:func:`wsiseg.inference.predictor.plan_prediction`) lay the same grid over a slide with this one function,
so a model always sees at prediction the windows it was trained on: same level-0 window and stride (physical
when the settings give mpp), same level and read size, same tissue detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsiseg.errors import ConfigError
from wsiseg.slide import Slide
from wsiseg.tiling.geometry import TilingConfig, choose_level, window_grid, window_level0
from wsiseg.tiling.tissue import TISSUE_THUMBNAIL, stain_check, tissue_fractions, tissue_mask

__all__ = ["ForcedMpp", "WindowPlan", "mpp_in_use", "plan_windows"]


class ForcedMpp(float):
    """A ``--slide-mpp`` the user insists on (``--override-mpp``): it replaces even an mpp the slide records.

    A plain float given as ``slide_mpp`` is only a fallback for slides without mpp.
    """


def mpp_in_use(own: float | None, given: float | None) -> tuple[float | None, str]:
    """The level-0 um/px to use and where it comes from: ``slide``, ``assumed``, ``override`` or ``unknown``.

    Args:
        own: The mpp the slide records (None when it has none).
        given: ``--slide-mpp`` (None when not given); a :class:`ForcedMpp` replaces ``own``.

    >>> mpp_in_use(0.227, 1.0)
    (0.227, 'slide')
    >>> mpp_in_use(None, 1.0)
    (1.0, 'assumed')
    >>> mpp_in_use(0.227, ForcedMpp(1.0))
    (1.0, 'override')
    """
    if given is not None and (own is None or isinstance(given, ForcedMpp)):
        return float(given), "assumed" if own is None else "override"
    return own, "slide" if own is not None else "unknown"


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one slide.

    Attributes:
        window0: Window size in level-0 pixels.
        stride0: Stride in level-0 pixels.
        level: Pyramid level the windows are read from.
        read: Window size at that level.
        mpp: The slide's um/px used (None when unknown).
        grid: Every window origin (level-0 x, y) in raster order.
        fractions: Tissue fraction of each grid window.
        threshold: Tissue fraction a window needs to be kept.
        thumb: The tissue-detection thumbnail (RGB).
        tissue: Its tissue mask.
        thumb_downsample: Level-0 pixels per thumbnail pixel.
        stain_note: A warning when the slide does not look like H&E (see :func:`stain_check`), else ``""``.
        mpp_source: Where ``mpp`` comes from (see :func:`mpp_in_use`).
    """

    window0: int
    stride0: int
    level: int
    read: int
    mpp: float | None
    grid: list[tuple[int, int]]
    fractions: list[float]
    threshold: float
    thumb: np.ndarray
    tissue: np.ndarray
    thumb_downsample: float
    stain_note: str = ""
    mpp_source: str = "unknown"

    @property
    def kept(self) -> list[tuple[int, int, float]]:
        """The tissue windows: ``(x, y, tissue fraction)`` in raster order."""
        return [(x, y, f) for (x, y), f in zip(self.grid, self.fractions, strict=True) if f >= self.threshold]


def plan_windows(
    slide: Slide, config: TilingConfig, *, slide_mpp: float | None = None, min_tissue: float | None = None
) -> WindowPlan:
    """Lay the grid of ``config`` over ``slide`` and measure the tissue of every window.

    Args:
        slide: An open slide.
        config: Window, stride, tile size, optional physical mpp and the tissue threshold.
        slide_mpp: um/px for a slide without mpp; a :class:`ForcedMpp` replaces the slide's own.
        min_tissue: Threshold instead of ``config.min_tissue``.

    Returns:
        The plan (an empty :attr:`WindowPlan.kept` when no window has enough tissue).

    Raises:
        ConfigError: The settings define windows in um and the slide has no mpp, or ``slide_mpp`` is not positive.
    """
    if slide_mpp is not None and not 0 < slide_mpp < float("inf"):
        msg = f"--slide-mpp must be a positive number of um per pixel (about 0.25 at 40x), got {slide_mpp}"
        raise ConfigError(msg)
    mpp, mpp_source = mpp_in_use(slide.mpp[0] if slide.mpp else None, slide_mpp)
    window0, stride0 = window_level0(config, mpp)
    level, read = choose_level(slide.level_downsamples, window0, config.size)
    thumb = slide.get_thumbnail(TISSUE_THUMBNAIL)
    tissue = tissue_mask(thumb)
    ds = slide.dimensions[0] / thumb.shape[1]
    grid = window_grid(slide.dimensions, window0, stride0)
    fractions = [float(f) for f in tissue_fractions(tissue, ds, grid, window0)]
    threshold = config.min_tissue if min_tissue is None else min_tissue
    return WindowPlan(window0, stride0, level, read, mpp, list(grid), fractions, threshold, thumb, tissue, ds,
                      stain_check(thumb, tissue), mpp_source)  # fmt: skip
