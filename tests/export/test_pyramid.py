"""Block majority / mean reduction of mask pyramid levels, on hand-computed cases and against the writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.export.pyramid import BlockPyramid, reduce_rows
from wsiseg.export.tiff import MaskTiffWriter, read_mask_level, read_mask_tiff


def test_majority_keeps_what_covers_the_block_not_its_corner() -> None:
    rows = np.array([[1, 2, 0, 0],
                     [2, 2, 0, 3]], dtype=np.uint8)  # fmt: skip
    # nearest decimation would give [1, 0]; the majorities are 2 and 0
    np.testing.assert_array_equal(reduce_rows(rows, 2, "majority"), [[2, 0]])
    tie = np.array([[3, 1], [1, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(reduce_rows(tie, 2, "majority"), [[1]])  # ties go to the lower id


def test_partial_edge_blocks_count_only_real_pixels() -> None:
    # 3 x 5 with step 2: the last block column has 1 column, the last block row 1 row. Padding is zero, so
    # without the correction the 2-pixel edge blocks of 3s would lose to the padding's label 0.
    rows = np.array([[1, 1, 2, 2, 3],
                     [1, 0, 2, 2, 3],
                     [0, 0, 1, 2, 3]], dtype=np.uint8)  # fmt: skip
    np.testing.assert_array_equal(reduce_rows(rows, 2, "majority"), [[1, 2, 3], [0, 1, 3]])
    probs = np.array([[10, 20, 255],
                      [30, 41, 255]], dtype=np.uint8)  # fmt: skip
    np.testing.assert_array_equal(reduce_rows(probs, 2, "mean"), [[25, 255]])  # 25.25 -> 25; edge 255 stays
    with pytest.raises(ValueError, match="reduction"):
        reduce_rows(rows, 2, "median")


def test_writer_levels_are_block_majorities(tmp_path: Path) -> None:
    # Stripes one pixel wide every 4 px vanish entirely under nearest decimation at level 2 when the grid
    # misses them; a stripe 3 px wide of every 4 must dominate level 2.
    lab = np.zeros((2100, 1300), dtype=np.uint8)
    lab[:, 1::4] = 2
    lab[:, 2::4] = 2
    lab[:, 3::4] = 2
    with MaskTiffWriter(tmp_path / "m.tif", 1300, 2100, mpp=1.0, classes=DEFAULT_CLASSES, min_level_size=500) as w:
        for start in range(0, 2100, 64):
            w.write_rows(start, lab[start : start + 64])
    lvl2 = read_mask_level(tmp_path / "m.tif", 2)
    assert lvl2.shape == (525, 325)
    assert (lvl2 == 2).all()
    assert not (lab[::4, ::4] == 2).any()  # what nearest decimation would have written
    _, meta = read_mask_tiff(tmp_path / "m.tif")
    assert meta["downsampling"] == "majority"


@pytest.mark.parametrize("how", ["majority", "mean"])
def test_streamed_pyramid_equals_the_direct_definition(how: str) -> None:
    rng = np.random.default_rng(8)
    img = rng.integers(0, 4 if how == "majority" else 256, size=(301, 1111), dtype=np.uint8)
    img[100:120, 7:9] = 6 if how == "majority" else 255  # a label that first appears mid-stream
    pyramid = BlockPyramid(1111, 4, how)
    parts: list[list[np.ndarray]] = [[] for _ in range(4)]
    start = 0
    for n in (7, 64, 64, 1, 64, 101):
        for k, rows in enumerate(pyramid.push(img[start : start + n], last=start + n == 301)):
            parts[k].append(rows)
        start += n
    for k in range(4):
        np.testing.assert_array_equal(np.concatenate(parts[k]), reduce_rows(img, 2 ** (k + 1), how))
