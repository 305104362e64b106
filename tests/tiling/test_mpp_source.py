"""Which mpp a window plan uses: the slide's own unless it has none, or the user insists (--override-mpp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsiseg.slide import open_slide
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.plan import ForcedMpp, mpp_in_use, plan_windows


def test_mpp_in_use() -> None:
    assert mpp_in_use(0.25, 1.0) == (0.25, "slide")
    assert mpp_in_use(None, 1.0) == (1.0, "assumed")
    assert mpp_in_use(0.25, ForcedMpp(1.0)) == (1.0, "override")
    assert mpp_in_use(None, None) == (None, "unknown")


def test_plan_keeps_the_slides_own_mpp(cohort: Path) -> None:
    config = TilingConfig(window=100, stride=100, size=64, mpp=1.0)
    with open_slide(cohort / "slide_000.svs") as slide:  # records 0.5 um/px
        kept = plan_windows(slide, config, slide_mpp=2.0)
        forced = plan_windows(slide, config, slide_mpp=ForcedMpp(2.0))
    assert (kept.mpp, kept.mpp_source, kept.window0) == (pytest.approx(0.5), "slide", 200)
    assert (forced.mpp, forced.mpp_source, forced.window0) == (2.0, "override", 50)
