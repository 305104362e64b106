"""``make_large_slide``: a big Aperio pyramid from repeated tiles that openslide and the strip reader read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from wsiseg.errors import ConfigError
from wsiseg.slide import open_slide
from wsiseg.slide.strips import TileLayout, tile_layout
from wsiseg.testing.large import make_large_slide
from wsiseg.tiling.tissue import tissue_mask


def test_large_slide_is_an_aperio_pyramid_with_tissue(tmp_path: Path) -> None:
    path = make_large_slide(tmp_path / "big.svs", width=20_000, height=12_000, seed=2, tissue=0.3)
    osr = openslide.OpenSlide(str(path))
    assert osr.properties["openslide.vendor"] == "aperio"
    assert osr.level_dimensions == ((20_000, 12_000), (5000, 3000), (1250, 750))
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    thumb = np.asarray(osr.get_thumbnail((1024, 1024)).convert("RGB"))
    frac = tissue_mask(thumb).mean()
    assert 0.15 < frac < 0.45  # about the asked-for 30 %
    assert path.stat().st_size < 60e6  # repeated tile bytes, not a rendered 720 MB image
    with open_slide(path) as slide:
        layout = tile_layout(slide, 1)
        assert isinstance(layout, TileLayout)
        region = slide.read_region((0, 0), 1, (256, 256))
    assert (region == region[0, 0]).all()  # a corner is plain glass


def test_large_slide_needs_valid_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tile a multiple of 16"):
        make_large_slide(tmp_path / "x.svs", width=1000, height=1000, tile=100)
    with pytest.raises(ConfigError, match="0 < tissue"):
        make_large_slide(tmp_path / "x.svs", width=1000, height=1000, tissue=0)
