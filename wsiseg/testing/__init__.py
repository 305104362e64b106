"""Test helpers: a synthetic H&E cohort generator with exact ground truth (``make_cohort``)."""

from __future__ import annotations

from wsiseg.testing.synthetic import (
    WSSS4LUAD_COLORS,
    SyntheticSlide,
    make_cohort,
    make_patch_image,
    make_slide,
    render_level0,
    write_cohort_csv,
    write_wsss4luad_palette_mask,
)

__all__ = [
    "WSSS4LUAD_COLORS",
    "SyntheticSlide",
    "make_cohort",
    "make_patch_image",
    "make_slide",
    "render_level0",
    "write_cohort_csv",
    "write_wsss4luad_palette_mask",
]
