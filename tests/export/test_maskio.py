from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.errors import DataError
from wsiseg.export.maskio import read_label_mask
from wsiseg.export.pyramid import reduce_rows
from wsiseg.export.sinks import write_label_pyramid
from wsiseg.fileio import atomic_output


def _mask() -> np.ndarray:
    m = np.zeros((300, 400), dtype=np.uint8)
    m[20:120, 40:240] = 1
    m[200:, 300:] = 3
    return m


def _write_flat(path: Path, mask: np.ndarray, mpp: float, unit: str, description: str | None) -> None:
    per_unit = (1e4 if unit == "CENTIMETER" else 25_400.0) / mpp
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 2, 4)):
            tif.write(
                mask[::f, ::f],
                tile=(64, 64),
                compression="zlib",
                resolution=(per_unit / f, per_unit / f),
                resolutionunit=unit,
                subfiletype=1 if i else 0,
                description=description if i == 0 else None,
                metadata=None,
            )


def test_flat_pyramid_cm_with_class_table_and_levels(tmp_path: Path) -> None:
    mask = _mask()
    desc = json.dumps({"classes": DEFAULT_CLASSES.to_list(), "downsample_to_level0": 4.0, "mpp": 1.0})
    path = tmp_path / "mask.tif"
    _write_flat(path, mask, 1.0, "CENTIMETER", desc)
    m0 = read_label_mask(path)
    assert m0.labels.dtype == np.uint8
    assert np.array_equal(m0.labels, mask)
    assert m0.mpp == pytest.approx(1.0)
    assert m0.downsample_to_level0 == 4.0
    assert m0.classes == DEFAULT_CLASSES
    m2 = read_label_mask(path, level=2)
    assert np.array_equal(m2.labels, mask[::4, ::4])
    assert m2.mpp == pytest.approx(4.0)
    assert m2.downsample_to_level0 == 16.0
    with pytest.raises(DataError, match="3 pyramid level"):
        read_label_mask(path, level=3)


def test_inch_units_and_plain_description(tmp_path: Path) -> None:
    path = tmp_path / "mask.tiff"
    _write_flat(path, _mask(), 0.5, "INCH", "made by something else")
    m = read_label_mask(path, level=1)
    assert m.mpp == pytest.approx(1.0)
    assert m.classes is None
    assert m.downsample_to_level0 is None


def test_subifd_pyramid_and_no_resolution(tmp_path: Path) -> None:
    mask = _mask()
    path = tmp_path / "sub.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            mask,
            tile=(64, 64),
            subifds=1,
            metadata=None,
            description=json.dumps(DEFAULT_CLASSES.to_list()),
        )
        tif.write(mask[::2, ::2], tile=(64, 64), subfiletype=1, metadata=None)
    m = read_label_mask(path, level=1)
    assert np.array_equal(m.labels, mask[::2, ::2])
    assert m.mpp is None
    assert m.classes == DEFAULT_CLASSES


def test_png_palette_and_errors(tmp_path: Path) -> None:
    mask = _mask()
    img = Image.fromarray(mask, mode="P")
    img.putpalette(DEFAULT_CLASSES.palette().ravel().tolist())
    path = tmp_path / "m.png"
    img.save(path)
    m = read_label_mask(path)
    assert np.array_equal(m.labels, mask)
    assert (m.mpp, m.downsample_to_level0, m.classes) == (None, None, None)
    with pytest.raises(DataError, match="not a pyramid"):
        read_label_mask(path, level=1)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match="single-channel"):
        read_label_mask(rgb)
    with pytest.raises(DataError, match="does not exist"):
        read_label_mask(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match="cannot read"):
        read_label_mask(bad)


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"

    def fail() -> None:
        with atomic_output(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("ome", [False, True])
def test_reads_masks_from_the_wsiseg_tiff_writer(tmp_path: Path, ome: bool) -> None:
    ids = np.zeros((1100, 900), dtype=np.uint8)
    ids[100:600, 200:700] = 2
    ids[700:900, 50:300] = 1
    stored = ids + 1  # label_offset=1: stored = id + 1, 0 = not analysed
    stored[:50, :50] = 0
    path = tmp_path / "mask.tif"
    write_label_pyramid(
        path,
        stored,
        mpp=2.0,
        classes=DEFAULT_CLASSES,
        label_offset=1,
        unanalysed_value=0,
        downsample_to_level0=8.0,
        ome=ome,
    )
    m = read_label_mask(path, level=1)
    expected = ids.copy()
    expected[:50, :50] = 0
    assert np.array_equal(m.labels, reduce_rows(expected, 2, "majority"))
    assert m.mpp == pytest.approx(4.0)
    assert m.downsample_to_level0 == pytest.approx(16.0)
    assert m.classes == DEFAULT_CLASSES
