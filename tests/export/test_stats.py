from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from wsiseg.classes import DEFAULT_CLASSES, ClassInfo, ClassTable
from wsiseg.errors import DataError
from wsiseg.export.stats import NO_MPP_NOTE, class_areas, write_areas_csv


def _mask() -> np.ndarray:
    m = np.zeros((10, 10), dtype=np.uint8)  # 100 px: 40 background
    m[0:3, :] = 1  # 30 tumor
    m[3:5, :] = 2  # 20 stroma
    m[5:6, :] = 3  # 10 normal
    return m


def test_hand_computed_areas_and_ratios() -> None:
    rows = class_areas(_mask(), classes=DEFAULT_CLASSES, mpp_level0=0.5, scale_to_level0=4, slide="s")
    assert [r.class_name for r in rows] == ["background", "tumor", "stroma", "normal", "tissue"]
    by = {r.class_name: r for r in rows}
    # one mask pixel = 16 level-0 px = 16 * 0.25 = 4 um^2
    assert by["tumor"].pixels == 30
    assert by["tumor"].area_px_level0 == 480
    assert by["tumor"].area_um2 == pytest.approx(120)
    assert by["tumor"].area_mm2 == pytest.approx(120e-6)
    assert by["stroma"].area_um2 == pytest.approx(80)
    assert by["tumor"].tissue_fraction == pytest.approx(0.5)
    assert by["normal"].tissue_fraction == pytest.approx(10 / 60)
    assert by["background"].tissue_fraction is None
    assert by["background"].area_um2 == pytest.approx(160)
    tissue = by["tissue"]
    assert tissue.class_id is None
    assert tissue.pixels == 60
    assert tissue.area_um2 == pytest.approx(240)
    assert tissue.tumor_stroma_ratio == pytest.approx(1.5)
    assert tissue.stroma_fraction == pytest.approx(0.4)
    assert all(r.note == "" and r.slide == "s" for r in rows)


def test_missing_mpp_leaves_um_columns_empty(tmp_path: Path) -> None:
    rows = class_areas(_mask(), classes=DEFAULT_CLASSES, mpp_level0=None, scale_to_level0=2)
    assert all(r.area_um2 is None and r.area_mm2 is None for r in rows)
    assert all(r.note == NO_MPP_NOTE for r in rows)
    assert rows[1].area_px_level0 == 120
    path = write_areas_csv(tmp_path / "areas.csv", rows)
    with path.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["class_name"] for t in table] == ["background", "tumor", "stroma", "normal", "tissue"]
    assert table[1]["area_um2"] == ""
    assert table[1]["area_px_level0"] == "120"
    assert table[4]["class_id"] == ""
    assert float(table[4]["tumor_stroma_ratio"]) == pytest.approx(1.5)
    assert table[1]["note"] == NO_MPP_NOTE


def test_csv_values_with_mpp(tmp_path: Path) -> None:
    rows = class_areas(_mask(), classes=DEFAULT_CLASSES, mpp_level0=0.25, scale_to_level0=1)
    path = write_areas_csv(tmp_path / "areas.csv", rows)
    with path.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert float(table[2]["area_um2"]) == pytest.approx(20 * 0.0625)
    assert float(table[4]["stroma_fraction"]) == pytest.approx(0.4)


def test_no_stroma_gives_empty_ratio_and_bad_ids_raise() -> None:
    m = np.zeros((4, 4), dtype=np.uint8)
    m[0, :] = 1
    rows = class_areas(m, classes=DEFAULT_CLASSES, mpp_level0=1.0, scale_to_level0=1)
    assert rows[-1].tumor_stroma_ratio is None
    assert rows[-1].stroma_fraction == 0.0
    m[1, 1] = 6
    with pytest.raises(DataError, match=r"\[6\]"):
        class_areas(m, classes=DEFAULT_CLASSES, mpp_level0=1.0, scale_to_level0=1)


def test_table_without_tumor_has_no_ratios() -> None:
    table = ClassTable((ClassInfo(0, "bg", (0, 0, 0)), ClassInfo(1, "fat", (9, 9, 9))))
    rows = class_areas(np.ones((3, 3), np.uint8), classes=table, mpp_level0=None, scale_to_level0=1)
    assert rows[-1].tumor_stroma_ratio is None
    assert rows[-1].stroma_fraction is None
    assert rows[1].tissue_fraction == 1.0
