import itertools

import numpy as np
import pytest

from wsiseg.errors import ConfigError
from wsiseg.tiling.geometry import TilingConfig, choose_level, grid_positions, window_grid, window_level0
from wsiseg.tiling.tissue import otsu_threshold, tissue_fractions, tissue_mask


@pytest.mark.parametrize(
    ("length", "window", "stride", "expected"),
    [
        (4096, 1000, 500, [0, 500, 1000, 1500, 2000, 2500, 3000, 3500]),
        (2000, 1000, 500, [0, 500, 1000]),  # exact fit: last window ends at 2000
        (2001, 1000, 500, [0, 500, 1000, 1500]),  # one pixel over: one more, padded, window
        (1000, 1000, 500, [0]),
        (600, 1000, 500, [0]),  # smaller than the window: one padded window
    ],
)
def test_grid_positions_cover_extent(length, window, stride, expected):
    pos = grid_positions(length, window, stride)
    assert pos == expected
    assert pos[-1] + window >= length
    assert all(b - a == stride for a, b in itertools.pairwise(pos))


def test_window_grid_is_raster_order():
    grid = window_grid((2100, 1600), 1000, 500)
    assert len(grid) == 4 * 3
    assert grid[:4] == [(0, 0), (500, 0), (1000, 0), (1500, 0)]
    assert grid == sorted(grid, key=lambda p: (p[1], p[0]))


def test_choose_level_picks_coarsest_with_enough_resolution():
    # 1000 px window -> 224 px needs downsample <= 4.46: level 1 (4x) reads 250 px
    assert choose_level([1.0, 4.0, 16.0], 1000, 224) == (1, 250)
    # 500 px window needs <= 2.23: only level 0
    assert choose_level([1.0, 4.0, 16.0], 500, 224) == (0, 500)
    # level downsamples like 4.0003 from rounding are still accepted when within range
    assert choose_level([1.0, 2.0001, 4.0002, 8.0004], 1792, 224) == (3, 224)


def test_window_level0_physical():
    cfg = TilingConfig(window=1000, stride=500, mpp=0.5)
    assert window_level0(cfg, 0.25) == (2000, 1000)
    assert window_level0(TilingConfig(), None) == (1000, 500)
    with pytest.raises(ConfigError, match="no mpp"):
        window_level0(cfg, None)


@pytest.mark.parametrize(
    "kwargs", [{"stride": 2000}, {"min_tissue": 1.5}, {"resize": "cubic-ish"}, {"image_format": "gif"}]
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        TilingConfig(**kwargs)


def test_otsu_separates_two_modes():
    values = np.array([20] * 100 + [180] * 100, dtype=np.uint8)
    t = otsu_threshold(values)
    assert 20 <= t < 180


def test_tissue_mask_and_fractions():
    thumb = np.full((100, 200, 3), 245, dtype=np.uint8)
    thumb[20:80, 10:110] = (200, 80, 160)  # saturated pink-purple tissue block
    mask = tissue_mask(thumb)
    assert mask[50, 50]
    assert not mask[50, 150]
    assert abs(mask.sum() - 60 * 100) < 300
    # thumbnail downsample 10: windows of 500 level-0 px = 50 mask px
    fr = tissue_fractions(mask, 10.0, [(100, 200), (1500, 200), (800, 200)], 500)
    assert fr[0] > 0.95
    assert fr[1] == 0.0
    assert abs(fr[2] - 0.6) < 0.02  # cols 80..130 with tissue to 110: 30 of 50
