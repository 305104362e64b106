"""Slide-level outputs: pyramidal mask TIFFs, RGB overlays, QuPath GeoJSON and per-class statistics.

Nothing here imports openslide or tiffslide; files are written with tifffile and read back with it.
"""
