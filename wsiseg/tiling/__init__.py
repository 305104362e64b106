"""Tiling: tissue detection, the window grid, label masks and the tile-dataset manifest."""

from __future__ import annotations

from wsiseg.tiling.geometry import TilingConfig, choose_level, grid_positions, window_grid, window_level0
from wsiseg.tiling.manifest import Manifest, SlideEntry, TileRecord, load_manifest

__all__ = [
    "Manifest",
    "SlideEntry",
    "TileRecord",
    "TilingConfig",
    "choose_level",
    "grid_positions",
    "load_manifest",
    "window_grid",
    "window_level0",
]
