from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import tiffslide
from PIL import Image

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.errors import DataError
from wsiseg.export.overlay import overlay_palette, render_overlay, write_overlay_png, write_overlay_pyramid_tiff

# Typical H&E colours: haematoxylin-rich tumour, eosin-pink stroma (sampled from WSSS4LUAD patches).
HAEMATOXYLIN = (96, 58, 140)
EOSIN = (226, 150, 196)


@pytest.mark.parametrize("tissue", [HAEMATOXYLIN, EOSIN])
def test_overlay_colours_stand_out_on_h_and_e(tissue: tuple[int, int, int]) -> None:
    # at the default alpha every class must move the tissue colour visibly and stay apart from the others;
    # the WSSS4LUAD tumour colour (0, 64, 128) moved haematoxylin by only about 39 RGB units
    thumb = np.full((40, 40, 3), tissue, dtype=np.uint8)
    blended = []
    for cid in (1, 2, 3):
        out = render_overlay(thumb, np.full((40, 40), cid, dtype=np.uint8), DEFAULT_CLASSES, legend=False)
        blended.append(out[20, 20].astype(float))
        assert np.linalg.norm(blended[-1] - np.array(tissue, dtype=float)) > 60, DEFAULT_CLASSES.names[cid]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.linalg.norm(blended[i] - blended[j]) > 40


def _thumb(h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels() -> np.ndarray:
    lab = np.zeros((60, 80), dtype=np.uint8)  # half the thumbnail size
    lab[30:60, 40:80] = 2  # stroma, bottom-right quarter
    lab[30:40, 0:10] = 3
    return lab


def test_blend_formula_and_unchanged_background() -> None:
    thumb, alpha = _thumb(), 0.4
    out = render_overlay(thumb, _labels(), DEFAULT_CLASSES, alpha=alpha, legend=False)
    assert out.shape == thumb.shape
    assert out.dtype == np.uint8
    y, x = 100, 130  # label (50, 65) = stroma (64, 128, 0)
    expected = np.rint((1 - alpha) * thumb[y, x].astype(float) + alpha * np.array([64, 128, 0]))
    assert out[y, x].tolist() == expected.astype(int).tolist()
    region = np.rint(0.6 * thumb[60:120, 80:160].astype(float) + 0.4 * np.array([64, 128, 0]))
    assert np.array_equal(out[60:120, 80:160], region.astype(np.uint8))
    assert np.array_equal(out[:60], thumb[:60])  # background rows untouched
    assert np.array_equal(
        out[60:80, 0:20],
        np.rint(0.6 * thumb[60:80, 0:20].astype(float) + 0.4 * np.array([243, 152, 0])).astype(np.uint8),
    )


def test_legend_shows_every_class_colour() -> None:
    thumb = np.full((120, 160, 3), 128, dtype=np.uint8)
    labels = np.zeros((60, 80), dtype=np.uint8)
    plain = render_overlay(thumb, labels, DEFAULT_CLASSES, legend=False)
    assert np.array_equal(plain, thumb)
    out = render_overlay(thumb, labels, DEFAULT_CLASSES, legend=True)
    changed = np.nonzero((out != thumb).any(-1))
    assert changed[0].max() < 60  # the box sits in the top-left corner
    assert changed[1].max() < 100
    for c in DEFAULT_CLASSES.classes[1:]:
        hits = (out == overlay_palette(DEFAULT_CLASSES)[c.id]).all(-1)
        assert hits.sum() >= 20, c.name
    assert (out == 255).all(-1).sum() > 100  # white legend background


def test_png_written_and_alpha_validated(tmp_path: Path) -> None:
    path = write_overlay_png(tmp_path / "ov.png", _thumb(), _labels(), DEFAULT_CLASSES, alpha=1.0)
    back = np.asarray(Image.open(path))
    assert back[100, 130].tolist() == [64, 128, 0]
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(_thumb(), _labels(), DEFAULT_CLASSES, alpha=1.5)
    with pytest.raises(DataError, match="class table"):
        render_overlay(_thumb(), _labels() + 4, DEFAULT_CLASSES)


def test_pyramid_tiff_opens_with_levels_and_mpp(tmp_path: Path) -> None:
    lab = np.zeros((600, 520), dtype=np.uint8)
    lab[100:300, 40:240] = 1
    lab[400:, 300:] = 2
    path = write_overlay_pyramid_tiff(tmp_path / "ov.tif", lab, DEFAULT_CLASSES, 2.0, min_level_size=256)
    slide = tiffslide.TiffSlide(path)
    assert slide.level_count == 3
    assert slide.level_dimensions == ((520, 600), (260, 300), (130, 150))
    assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(2.0)
    tile = slide.read_region((100, 150), 0, (20, 20), as_array=True)
    assert np.abs(tile.astype(int) - [0, 64, 128]).max() <= 6  # tumor colour after JPEG
    low = slide.read_region((0, 0), 2, (130, 150), as_array=True)
    assert np.abs(low[120, 100].astype(int) - [64, 128, 0]).max() <= 6  # stroma at (480, 400) L0
    slide.close()
    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        assert [p.subfiletype for p in pages] == [0, 1, 1]
        assert all(p.is_tiled and p.tilewidth == 256 for p in pages)
        assert pages[0].compression == tifffile.COMPRESSION.JPEG
        assert pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
