"""Window geometry in level-0 pixels: the grid, the level to read from and physical window sizes.

Coordinates follow openslide's ``read_region`` contract: level-0 ``(x, y)`` of the top-left corner and
``(w, h)`` sizes. Conversion to numpy ``(row, col)`` happens only at array boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from wsiseg.errors import ConfigError

__all__ = [
    "RESIZE_KERNELS",
    "TilingConfig",
    "choose_level",
    "grid_positions",
    "window_grid",
    "window_level0",
    "window_memory_mb",
]

#: Resize kernels by name (Pillow filters). The name is stored in every manifest and checkpoint card.
RESIZE_KERNELS = ("bilinear", "bicubic", "box", "lanczos", "nearest")


@dataclass(frozen=True)
class TilingConfig:
    """How slides are cut into windows.

    Attributes:
        window: Window side in level-0 pixels, or in pixels at ``mpp`` when ``mpp`` is set (paper: 1000).
        stride: Step between windows, same unit as ``window`` (paper: 500).
        size: Output tile side in pixels (paper: 224).
        mpp: Reference resolution in um/px that defines ``window`` and ``stride`` physically, or None to use
            level-0 pixels of each slide as they are.
        min_tissue: Minimum tissue fraction of a window to keep it.
        resize: Resize kernel for images (masks always use nearest).
        image_format: ``"jpg"`` (quality 90) or ``"png"``.
    """

    window: int = 1000
    stride: int = 500
    size: int = 224
    mpp: float | None = None
    min_tissue: float = 0.1
    resize: str = "bilinear"
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1 or self.size < 1:
            msg = f"window ({self.window}), stride ({self.stride}) and size ({self.size}) must be positive"
            raise ConfigError(msg)
        if self.stride > self.window:
            msg = f"stride {self.stride} exceeds the window {self.window}: parts of slides would be skipped"
            raise ConfigError(msg)
        if not 0.0 <= self.min_tissue <= 1.0:
            msg = f"--min-tissue must be in [0, 1], got {self.min_tissue}"
            raise ConfigError(msg)
        if self.resize not in RESIZE_KERNELS:
            msg = f"unknown resize kernel {self.resize!r}; use one of {', '.join(RESIZE_KERNELS)}"
            raise ConfigError(msg)
        if self.image_format not in {"jpg", "png"}:
            msg = f"unknown tile format {self.image_format!r}; use jpg or png"
            raise ConfigError(msg)
        if self.mpp is not None and self.mpp <= 0:
            msg = f"--mpp must be positive, got {self.mpp}"
            raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TilingConfig:
        """Build from ``to_dict`` output, ignoring unknown keys."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def window_level0(config: TilingConfig, slide_mpp: float | None) -> tuple[int, int]:
    """Return ``(window, stride)`` in level-0 pixels of a slide.

    Args:
        config: Tiling settings.
        slide_mpp: The slide's level-0 resolution in um/px (None if unknown).

    Raises:
        ConfigError: If ``config.mpp`` is set but the slide has no mpp.
    """
    if config.mpp is None:
        return config.window, config.stride
    if slide_mpp is None:
        msg = "the slide has no mpp but --mpp defines windows physically; pass --slide-mpp or drop --mpp"
        raise ConfigError(msg)
    factor = config.mpp / slide_mpp
    return max(1, round(config.window * factor)), max(1, round(config.stride * factor))


def grid_positions(length: int, window: int, stride: int) -> list[int]:
    """Return window start positions along one axis.

    Windows start at 0 and step by ``stride``; the last one starts where a window first reaches the end, so
    the whole extent is covered and windows past the edge are padded (white image, background mask). An
    extent shorter than the window gives exactly one padded window.

    >>> grid_positions(4096, 1000, 500)
    [0, 500, 1000, 1500, 2000, 2500, 3000, 3500]
    >>> grid_positions(600, 1000, 500)
    [0]
    """
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [i * stride for i in range(count)]


def window_grid(dimensions: tuple[int, int], window: int, stride: int) -> list[tuple[int, int]]:
    """Return ``(x, y)`` level-0 window origins in raster order (rows top to bottom, left to right)."""
    xs = grid_positions(dimensions[0], window, stride)
    ys = grid_positions(dimensions[1], window, stride)
    return [(x, y) for y in ys for x in xs]


def choose_level(downsamples: Sequence[float], window: int, size: int) -> tuple[int, int]:
    """Pick the coarsest pyramid level that still has at least the output resolution.

    Args:
        downsamples: The slide's level downsamples (level 0 first).
        window: Window side in level-0 pixels.
        size: Output tile side in pixels.

    Returns:
        ``(level, read_size)``: the level to read and the window side in that level's pixels
        (``>= size`` unless the window itself is smaller than the output).
    """
    target = window / size
    best = 0
    for level, ds in enumerate(downsamples):
        if ds <= target * (1 + 1e-3) and ds >= downsamples[best]:  # level downsamples are rounded
            best = level
    read = max(1, round(window / downsamples[best]))
    return best, read


def window_memory_mb(config: TilingConfig, workers: int = 1) -> float:
    """Estimate the memory of one window in flight per worker, in MB, for a refusal before a huge job.

    A window is read at up to twice the tile size (the level read before resizing), then resized and encoded
    as an RGB tile; each worker holds about three such RGB buffers (read, resized, encoded) at a time.
    """
    read = 2 * config.size
    per_worker = (read * read + 2 * config.size * config.size) * 3
    return per_worker * max(1, workers) / 1e6
