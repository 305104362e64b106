"""Small reusable blocks shared by the model families."""

from __future__ import annotations

from wsiseg.models.layers.norm import NORM_NAMES, make_norm

__all__ = ["NORM_NAMES", "make_norm"]
