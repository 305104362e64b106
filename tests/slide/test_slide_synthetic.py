"""Reading a generated Aperio-style pyramid through openslide, tiffslide and the Slide API."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from wsiseg.slide import Slide, open_slide
from wsiseg.slide._common import to_rgb

if TYPE_CHECKING:
    from conftest import SyntheticSlide


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_metadata(aperio_slide: SyntheticSlide, backend: str) -> None:
    with open_slide(aperio_slide.path, backend=backend) as slide:
        assert slide.backend == ("openslide" if backend == "auto" else backend)
        assert slide.path == aperio_slide.path
        assert slide.dimensions == (2048, 1536)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((2048, 1536), (512, 384), (128, 96))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert slide.mpp == pytest.approx((0.5, 0.5))
        assert slide.objective_power == pytest.approx(20.0)
        assert slide.vendor == "aperio"
        assert set(slide.associated_image_names) == {"label", "macro", "thumbnail"}
        assert all(isinstance(v, str) for v in slide.properties.values())
        assert f"{slide.backend}.mpp-x" in slide.properties


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize(("level", "loc"), [(0, (300, 200)), (1, (400, 800)), (2, (16, 32))])
def test_read_region_matches_written(
    aperio_slide: SyntheticSlide, backend: str, level: int, loc: tuple[int, int]
) -> None:
    ds = aperio_slide.downsamples[level]
    with open_slide(aperio_slide.path, backend=backend) as slide:
        got = slide.read_region(loc, level, (100, 60))
    assert got.dtype == np.uint8
    assert got.shape == (60, 100, 3)
    x, y = loc[0] // ds, loc[1] // ds
    want = aperio_slide.levels[level][y : y + 60, x : x + 100]
    diff = _diff(got, want)
    assert diff.mean() < 2.0  # JPEG q95
    assert diff.max() < 40


@pytest.mark.parametrize(("level", "loc"), [(0, (123, 457)), (1, (400, 800)), (2, (0, 0))])
def test_openslide_and_tiffslide_agree(aperio_slide: SyntheticSlide, level: int, loc: tuple[int, int]) -> None:
    with (
        open_slide(aperio_slide.path, backend="openslide") as a,
        open_slide(aperio_slide.path, backend="tiffslide") as b,
    ):
        pa = a.read_region(loc, level, (96, 80))
        pb = b.read_region(loc, level, (96, 80))
    assert _diff(pa, pb).max() <= 2


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_out_of_bounds_is_white(aperio_slide: SyntheticSlide, backend: str) -> None:
    base = aperio_slide.levels[0]
    with open_slide(aperio_slide.path, backend=backend) as slide:
        # straddles the bottom-right corner: 48x48 inside, the rest outside
        edge = slide.read_region((2000, 1488), 0, (100, 80))
        outside = slide.read_region((5000, -900), 0, (30, 20))
        negative = slide.read_region((-20, -10), 0, (50, 40))
    assert edge.shape == (80, 100, 3)
    assert (edge[:, 48:] == 255).all()
    assert (edge[48:, :] == 255).all()
    assert _diff(edge[:48, :48], base[1488:, 2000:]).mean() < 2.0
    assert (outside == 255).all()
    assert outside.shape == (20, 30, 3)
    assert (negative[:10] == 255).all()
    assert (negative[:, :20] == 255).all()
    assert _diff(negative[10:, 20:], base[:30, :30]).mean() < 2.0


def test_openslide_rgba_composited_on_white(aperio_slide: SyntheticSlide) -> None:
    import openslide

    with openslide.OpenSlide(aperio_slide.path) as raw:
        rgba = np.asarray(raw.read_region((2000, 1488), 0, (100, 80)))
    assert rgba.shape[2] == 4
    assert (rgba[:, 48:, 3] == 0).all()  # openslide: transparent (black RGB) outside the slide
    with open_slide(aperio_slide.path, backend="openslide") as slide:
        rgb = slide.read_region((2000, 1488), 0, (100, 80))
    np.testing.assert_array_equal(rgb[:48, :48], rgba[:48, :48, :3])
    assert (rgb[:, 48:] == 255).all()


def test_to_rgb_alpha_blending() -> None:
    rgba = np.array([[[0, 0, 0, 0], [100, 50, 0, 255], [0, 0, 0, 128], [200, 100, 0, 51]]], np.uint8)
    rgb = to_rgb(rgba)
    assert rgb.tolist() == [[[255, 255, 255], [100, 50, 0], [127, 127, 127], [244, 224, 204]]]
    grey = to_rgb(np.array([[7, 9]], np.uint8))
    assert grey.tolist() == [[[7, 7, 7], [9, 9, 9]]]


def test_best_level(aperio_slide: SyntheticSlide) -> None:
    with open_slide(aperio_slide.path) as slide:
        picks = [slide.best_level_for_downsample(d) for d in (0.5, 1, 3.99, 3.97, 4, 4.46, 15.9, 100)]
    # 3.97 * 1.01 >= 4 (tolerance), 3.95 would not be
    assert picks == [0, 0, 1, 1, 1, 1, 2, 2]
    with open_slide(aperio_slide.path) as slide:
        assert slide.best_level_for_downsample(3.9) == 0


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_thumbnail(aperio_slide: SyntheticSlide, backend: str) -> None:
    with open_slide(aperio_slide.path, backend=backend) as slide:
        thumb = slide.get_thumbnail(200)
        small = slide.get_thumbnail(32)
        big = slide.get_thumbnail(5000)
    assert thumb.shape == (150, 200, 3)
    assert small.shape == (24, 32, 3)
    assert big.shape == (1536, 2048, 3)  # never upscaled
    want = np.asarray(Image.fromarray(aperio_slide.levels[1]).resize((200, 150), Image.BOX))
    assert _diff(thumb, want).mean() < 3.0


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_associated_images(aperio_slide: SyntheticSlide, backend: str) -> None:
    with open_slide(aperio_slide.path, backend=backend) as slide:
        label = slide.read_associated("label")
        macro = slide.read_associated("macro")
        thumb = slide.read_associated("thumbnail")
    assert label.shape == (60, 100, 3)
    assert (label == aperio_slide.label_rgb).all()
    assert macro.shape == (80, 200, 3)
    assert (macro == aperio_slide.macro_rgb).all()
    assert thumb.shape == (96, 128, 3)


def test_errors_on_bad_reads(aperio_slide: SyntheticSlide) -> None:
    from wsiseg.slide import SlideError

    with open_slide(aperio_slide.path) as slide:
        with pytest.raises(SlideError, match=r"level 3 does not exist .*levels 0-2"):
            slide.read_region((0, 0), 3, (10, 10))
        with pytest.raises(ValueError, match="positive"):
            slide.read_region((0, 0), 0, (0, 10))
        with pytest.raises(SlideError, match="no associated image 'barcode'"):
            slide.read_associated("barcode")


def test_info_dict(aperio_slide: SyntheticSlide) -> None:
    with open_slide(aperio_slide.path) as slide:
        info = slide.info()
    assert info["path"] == str(aperio_slide.path)
    assert info["backend"] == "openslide"
    assert info["vendor"] == "aperio"
    assert info["dimensions"] == [2048, 1536]
    assert info["level_count"] == 3
    assert [lv["downsample"] for lv in info["levels"]] == [1.0, 4.0, 16.0]
    assert info["levels"][2]["dimensions"] == [128, 96]
    assert info["mpp"] == [0.5, 0.5]
    assert info["objective_power"] == 20.0


def test_slide_is_lazy_and_reopens(aperio_slide: SyntheticSlide) -> None:
    slide = Slide(aperio_slide.path)
    assert slide._handle is None  # nothing opened yet
    assert "auto" in repr(slide)
    assert slide.dimensions == (2048, 1536)
    assert slide._handle is not None
    assert slide.backend == "openslide"
    slide.close()
    assert slide._handle is None
    assert slide.read_region((0, 0), 2, (8, 8)).shape == (8, 8, 3)  # reopened on demand
    slide.close()
