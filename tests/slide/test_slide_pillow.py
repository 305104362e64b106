"""Plain images through Pillow: PNG/JPEG/TIFF as one-level slides, mpp from resolution tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsiseg.slide import open_slide


def _pattern(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)


def test_png_rgba_with_phys(tmp_path: Path) -> None:
    rgb = _pattern(300, 200)
    alpha = np.full((200, 300, 1), 255, np.uint8)
    alpha[:, 250:] = 0  # transparent strip -> white
    png = tmp_path / "tile (a).png"
    Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(png, dpi=(25400 / 0.5,) * 2)
    with open_slide(png) as slide:
        assert slide.backend == "pillow"
        assert slide.dimensions == (300, 200)
        assert slide.level_count == 1
        assert slide.level_downsamples == (1.0,)
        assert slide.mpp is None  # a PNG's DPI is a print setting, never read as microscope mpp (issue 18)
        assert slide.vendor is None
        assert slide.objective_power is None
        assert slide.associated_image_names == ()
        assert slide.properties["pillow.format"] == "PNG"
        assert slide.best_level_for_downsample(8) == 0
        region = slide.read_region((240, 150), 0, (20, 60))
        thumb = slide.get_thumbnail(60)
    np.testing.assert_array_equal(region[:50, :10], rgb[150:, 240:250])
    assert (region[:, 10:] == 255).all()  # transparent in the file
    assert (region[50:] == 255).all()  # below the image
    assert thumb.shape == (40, 60, 3)


def test_png_without_phys_has_no_mpp(tmp_path: Path) -> None:
    png = tmp_path / "plain.png"
    Image.fromarray(_pattern(40, 30)).save(png)
    with open_slide(png) as slide:
        assert slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (40, 30)), _pattern(40, 30))


@pytest.mark.parametrize("dpi", [72, 96, 10160])
def test_png_and_jpeg_dpi_is_never_mpp(tmp_path: Path, dpi: int) -> None:
    """Issue 18: a 96 dpi PNG patch read as 264.58 um/px gave 11,784 mm^2 of tissue for 512 px."""
    for name in ("x.JPG", "x.png"):
        path = tmp_path / name
        Image.fromarray(_pattern(64, 64)).save(path, dpi=(dpi, dpi))
        with open_slide(path) as slide:
            assert slide.backend == "pillow"
            assert slide.mpp is None


def test_tiff_print_resolution_is_not_mpp(tmp_path: Path) -> None:
    tif = tmp_path / "editor.tif"
    tifffile.imwrite(tif, _pattern(50, 40), resolution=(96, 96), resolutionunit="INCH")
    with open_slide(tif, backend="pillow") as slide:
        assert slide.mpp is None


@pytest.mark.parametrize(
    ("resolution", "unit", "mpp"),
    [((20000, 20000), "CENTIMETER", (0.5, 0.5)), ((101600, 50800), "INCH", (0.25, 0.5))],
)
def test_tiff_resolution_tags_with_pillow(
    tmp_path: Path, resolution: tuple[int, int], unit: str, mpp: tuple[float, float]
) -> None:
    tif = tmp_path / "flat.tif"
    tifffile.imwrite(tif, _pattern(50, 40), resolution=resolution, resolutionunit=unit)
    with open_slide(tif, backend="pillow") as slide:
        assert slide.mpp == pytest.approx(mpp)


def test_tiff_without_resolution_has_no_mpp(tmp_path: Path) -> None:
    tif = tmp_path / "nores.tif"
    Image.fromarray(_pattern(20, 10)).save(tif)  # Pillow reports dpi (1, 1) here; not an mpp
    with open_slide(tif, backend="pillow") as slide:
        assert slide.mpp is None


def test_palette_tiff_falls_back_to_pillow(tmp_path: Path) -> None:
    image = Image.fromarray(_pattern(32, 16)).convert("P", palette=Image.Palette.ADAPTIVE)
    tif = tmp_path / "palette.tif"
    image.save(tif)
    with open_slide(tif) as slide:  # openslide: no tiles; tiffslide: palette unsupported
        assert slide.backend == "pillow"
        got = slide.read_region((0, 0), 0, (32, 16))
    np.testing.assert_array_equal(got, np.asarray(image.convert("RGB")))


def test_stripped_rgb_tiff_reads_exactly(tmp_path: Path) -> None:
    tif = tmp_path / "strips.tif"
    tifffile.imwrite(tif, _pattern(70, 50), photometric="rgb")
    with open_slide(tif) as slide:
        assert slide.backend == "tiffslide"  # openslide's generic-tiff needs tiles
        np.testing.assert_array_equal(slide.read_region((10, 5), 0, (60, 45)), _pattern(70, 50)[5:, 10:])


def test_pixel_limit_lifted_only_inside(tmp_path: Path) -> None:
    png = tmp_path / "big.png"
    Image.new("RGB", (6000, 5000), (10, 20, 30)).save(png, compress_level=1)
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # a limit the image exceeds
    try:
        with open_slide(png) as slide:
            assert slide.read_region((5990, 4990), 0, (20, 20))[0, 0].tolist() == [10, 20, 30]
        assert Image.MAX_IMAGE_PIXELS == 1000
    finally:
        Image.MAX_IMAGE_PIXELS = saved
