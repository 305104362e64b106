"""Training: losses (CE + Dice with deep supervision), segmentation metrics, the local loop, checkpoints."""

from __future__ import annotations
