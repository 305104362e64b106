"""Strip reading: same pixels as read_region, each stored tile decoded once, one strip in memory."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsiseg.errors import SlideError
from wsiseg.slide import open_slide
from wsiseg.slide.strips import StripReader, TileLayout, tile_layout
from wsiseg.testing.synthetic import make_slide
from wsiseg.tiling.geometry import window_grid
from wsiseg.tiling.window import WindowReader, plan_reads, read_window, row_chunks

TILE = 256


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2048 x 1536, levels at downsample 1 and exactly 4 (512 x 384), 256 px JPEG tiles."""
    path = tmp_path_factory.mktemp("strips") / "even.svs"
    make_slide(path, width=2048, height=1536, seed=5)
    return path


@pytest.fixture(scope="module")
def odd_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2050 x 1539: level 1 is 513 x 385, downsample 3.9968, so level-0 origins fall between level pixels."""
    path = tmp_path_factory.mktemp("strips") / "odd.svs"
    make_slide(path, width=2050, height=1539, seed=6)
    return path


def _layout(slide: object, level: int) -> TileLayout:
    found = tile_layout(slide, level)  # type: ignore[arg-type]
    assert isinstance(found, TileLayout), found
    return found


def _distinct_tiles(layout: TileLayout, origins: list[tuple[int, int]], read: int) -> set[tuple[int, int]]:
    """Tiles under the windows, computed independently of the reader (integer downsample only)."""
    tiles = set()
    for x, y in origins:
        lx, ly = int(x / layout.downsample), int(y / layout.downsample)
        for row in range(ly // TILE, (min(ly + read, layout.height) - 1) // TILE + 1):
            for col in range(lx // TILE, (min(lx + read, layout.width) - 1) // TILE + 1):
                tiles.add((col, row))
    return tiles


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize(("level", "window0", "read"), [(0, 256, 256), (1, 1000, 250)])
def test_strip_windows_equal_read_region_and_decode_each_tile_once(
    svs: Path, backend: str, level: int, window0: int, read: int
) -> None:
    with open_slide(svs, backend) as slide:
        layout = _layout(slide, level)
        origins = window_grid(slide.dimensions, window0, window0 // 2)  # stride = window / 2, raster order
        reader = StripReader(layout, origins, read)
        for i, origin in enumerate(origins):
            np.testing.assert_array_equal(reader.read(i), slide.read_region(origin, level, (read, read)))
    tiles = _distinct_tiles(layout, origins, read)
    assert reader.decodes == len(tiles)  # every tile under a window exactly once
    assert reader.decodes / len(origins) <= 1.2
    assert reader.tiles_touched() > 2 * reader.decodes  # what per-window reads would decode
    assert reader.reads == len(origins)


def test_memory_is_one_strip(svs: Path) -> None:
    with open_slide(svs) as slide:
        layout = _layout(slide, 0)
        origins = window_grid(slide.dimensions, 256, 128)
        reader = StripReader(layout, origins, 256)
        for _ in reader:
            pass
    # a window row spans 2 tile rows and the next row shares one: 3 rows of 8 tiles at most, not all 48
    assert layout.tiles_across * layout.tiles_down == 48
    assert reader.peak_tiles <= 3 * layout.tiles_across
    assert reader.decodes == 48


def test_subpixel_origins_follow_openslide_and_tiffslide(odd_svs: Path) -> None:
    origins = window_grid((2050, 1539), 1000, 500)
    with open_slide(odd_svs, "openslide") as slide:
        layout = _layout(slide, 1)
        assert layout.subpixel
        assert not math.isclose(layout.downsample, 4.0)
        reader = StripReader(layout, origins, 250)
        diffs = [
            np.abs(reader.read(i).astype(int) - slide.read_region(o, 1, (250, 250))) for i, o in enumerate(origins)
        ]
    worst = max(int(d.max()) for d in diffs)
    mean = float(np.mean([d.mean() for d in diffs]))
    assert worst <= 3  # openslide's own bilinear shift (and its tile seams) vs ours in 7-bit fixed point
    assert mean < 0.5
    with open_slide(odd_svs, "tiffslide") as slide:
        reader = StripReader(_layout(slide, 1), origins, 250)
        for i, origin in enumerate(origins):  # tiffslide truncates to whole level pixels: exact
            np.testing.assert_array_equal(reader.read(i), slide.read_region(origin, 1, (250, 250)))


def test_truncating_instead_of_shifting_would_be_wrong(odd_svs: Path) -> None:
    """The agreement above is not trivial: whole-pixel crops differ from openslide by tens of grey levels."""
    with open_slide(odd_svs, "openslide") as slide, open_slide(odd_svs, "tiffslide") as other:
        ref = slide.read_region((500, 500), 1, (250, 250)).astype(int)
        whole = other.read_region((500, 500), 1, (250, 250)).astype(int)
    assert np.abs(ref - whole).max() > 10


def test_random_access_and_edges(svs: Path) -> None:
    with open_slide(svs) as slide:
        layout = _layout(slide, 0)
        # past the right and bottom edges (white), off the tile grid, and not in raster order
        origins = [(1900, 1400), (0, 0), (777, 333), (1900, 1400), (1024, 1024)]
        reader = StripReader(layout, origins, 300, max_tiles=2)
        for i in (4, 2, 0, 3, 1, 2):
            np.testing.assert_array_equal(reader.read(i), slide.read_region(origins[i], 0, (300, 300)))
    assert reader.peak_tiles <= 2
    edge = reader.read(0)
    assert (edge[148:, :] == 255).all()
    assert (edge[:, 148:] == 255).all()
    with pytest.raises(IndexError, match="not planned"):
        reader.read(5)


def test_reader_pickles_without_handle_or_tiles(svs: Path) -> None:
    import pickle

    with open_slide(svs) as slide:
        reader = StripReader(_layout(slide, 0), [(0, 0), (128, 0)], 256)
        first = reader.read(0)
        clone = pickle.loads(pickle.dumps(reader))
        assert clone._file is None
        assert not clone._cache
        np.testing.assert_array_equal(clone.read(0), first)
        reader.close()


def test_fallback_reasons_and_one_log_line(tmp_path: Path, svs: Path, caplog: pytest.LogCaptureFixture) -> None:
    png = tmp_path / "plain.png"
    from PIL import Image

    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(png)
    stripped = tmp_path / "stripped.tif"
    tifffile.imwrite(stripped, np.full((600, 500, 3), 90, np.uint8), photometric="rgb")
    with open_slide(png) as slide:
        assert tile_layout(slide, 0) == "pillow images are not read by strips"
    with open_slide(stripped, "tiffslide") as slide:
        assert tile_layout(slide, 0) == "level 0 is not tiled"
        with caplog.at_level(logging.INFO, logger="wsiseg.slide"):
            reader = WindowReader(slide, [(0, 0), (100, 100)], 0, 200, 64, "bilinear")
        assert reader.mode == "per-window"
        assert reader.decodes is None
        assert np.asarray(reader.read(1)).shape == (64, 64, 3)
    assert len(caplog.records) == 1
    assert "one window at a time (level 0 is not tiled)" in caplog.messages[0]
    with open_slide(svs) as slide:
        assert plan_reads(slide, 0, strips=False).mode == "per-window"
        assert plan_reads(slide, 1).mode == "strips"


def test_corrupt_tile_is_one_line_slide_error(tmp_path: Path, svs: Path) -> None:
    bad = tmp_path / "bad.svs"
    shutil.copy(svs, bad)
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[9], page.databytecounts[9]  # tile (1, 1) of level 0
    with bad.open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * count)
    with open_slide(bad, "tiffslide") as slide:
        reader = StripReader(_layout(slide, 0), [(300, 300)], 100)
        with pytest.raises(SlideError, match=r"decoding tile \(1, 1\) of level 0 .* re-copy it") as info:
            reader.read(0)
    assert "\n" not in str(info.value)


def test_row_chunks_cut_at_row_ends() -> None:
    origins = [(x, y) for y in (0, 10, 20) for x in (0, 5, 9)] + [(0, 30)]
    assert row_chunks(origins, 4) == [(0, 6), (6, 10)]
    assert row_chunks(origins, 1) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert row_chunks([], 4) == []


def test_real_slides_agree_with_their_backend(slides_root: Path) -> None:
    # (relative path, level, read size, tolerance against the default backend's read_region)
    cases = [
        ("aperio_svs/CMU-1-Small-Region.svs", 0, 500, 0),  # JPEG, Aperio RGB colour space
        ("aperio_svs/tcga-cr-7395-01a-01-ts1.svs", 0, 500, 0),  # JPEG 2000 (33003)
        ("aperio_svs/tcga-cr-7395-01a-01-ts1.svs", 1, 250, 3),  # downsample 2.0005: sub-pixel shift
        ("ome_tiff/OS-1-detail.ome.tif", 0, 300, 0),  # tiffslide
    ]
    for rel, level, read, tol in cases:
        path = slides_root / rel
        if not path.exists():
            continue
        with open_slide(path) as slide:
            layout = _layout(slide, level)
            window0 = round(read * slide.level_downsamples[level])
            grid = window_grid(slide.dimensions, window0, window0 // 2)
            origins = [o for o in grid if o[1] <= grid[0][1] + window0 // 2][:12]  # two rows: seams both ways
            reader = StripReader(layout, origins, read)
            worst = 0
            for i, origin in enumerate(origins):
                ref = slide.read_region(origin, level, (read, read)).astype(int)
                worst = max(worst, int(np.abs(reader.read(i) - ref).max()))
        assert worst <= tol, (rel, level, worst)
        assert reader.decodes == len({k for s in reader._spans for k in reader._tiles_of(s)})


@pytest.mark.parametrize("rel", ["hamamatsu_ndpi/test3-TRITC 2 (560).ndpi", "dicom_wsi/cmu-1-small-region"])
def test_real_slides_without_strips_fall_back(slides_root: Path, rel: str) -> None:
    path = slides_root / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    with open_slide(path) as slide:
        reader = WindowReader(slide, [(0, 0)], 0, 128, 64, "bilinear")
        assert reader.mode == "per-window"
        assert "layout is not read by strips" in reader.plan.reason
        expected = read_window(slide, (0, 0), 0, 128, 64, "bilinear")
        np.testing.assert_array_equal(np.asarray(reader.read(0)), np.asarray(expected))
