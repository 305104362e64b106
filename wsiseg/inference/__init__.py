"""Whole-slide prediction: window reading, model calls and the streaming band stitcher.

Modules import only from lower layers (slide, tiling, data, models); ``weights`` and ``stitching``
are pure NumPy and can be used without torch.
"""
