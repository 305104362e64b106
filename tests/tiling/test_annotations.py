from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import Polygon

from wsiseg.classes import DEFAULT_CLASSES, ClassInfo, ClassTable
from wsiseg.errors import DataError
from wsiseg.tiling.annotation_io import (
    fill_polygon,
    label_shape,
    load_label_image,
    rasterize_asap_xml,
    rasterize_geojson,
)

WSSS_PALETTE = [0, 64, 128, 64, 128, 0, 243, 152, 0, 255, 255, 255]


def _feature(coords: list, name: str | None, kind: str = "Polygon") -> dict:
    props: dict = {"objectType": "annotation"}
    if name is not None:
        props["classification"] = {"name": name, "color": [1, 2, 3]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_square_at_downsample_4_is_exact() -> None:
    # level-0 square 400x200 px at (100, 60) -> label pixels 25..124 x 15..64 at downsample 4
    fc = {"type": "FeatureCollection", "features": [_feature([_square(100, 60, 500, 260)], "Tumor")]}
    out = rasterize_geojson(fc, level0_size=(1001, 803), downsample=4, classes=DEFAULT_CLASSES)
    assert out.shape == (201, 251)  # ceil(803/4), ceil(1001/4)
    assert out.dtype == np.uint8
    assert int((out == 1).sum()) == 100 * 50
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (15, 64, 25, 124)


def test_unaligned_square_count_within_boundary_tolerance() -> None:
    fc = [_feature([_square(101, 61, 503, 259)], "stroma")]
    out = rasterize_geojson(fc, level0_size=(1000, 800), downsample=4)
    area = (503 - 101) * (259 - 61) / 16
    perimeter = 2 * ((503 - 101) + (259 - 61)) / 4
    assert abs(int((out == 2).sum()) - area) <= perimeter / 2 + 1


def test_random_polygon_matches_pixel_centre_containment() -> None:
    rng = np.random.default_rng(3)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = rng.uniform(20, 60, 40)
    xy = np.stack([70 + radii * np.cos(angles), 65 + radii * np.sin(angles)], 1)
    poly = shapely.make_valid(Polygon(xy))
    assert poly.geom_type == "Polygon"
    filled = fill_polygon([np.asarray(poly.exterior.coords)], (140, 150))
    assert filled is not None
    r0, c0, mask = filled
    full = np.zeros((140, 150), bool)
    full[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]] = mask
    yy, xx = np.mgrid[0:140, 0:150] + 0.5
    truth = shapely.contains_xy(poly, xx, yy)
    assert np.array_equal(full, truth)


def test_hole_is_respected_and_later_features_paint_over() -> None:
    outer = _square(0, 0, 80, 80)
    hole = _square(20, 20, 60, 60)
    fc = {
        "type": "FeatureCollection",
        "features": [
            _feature([_square(0, 0, 100, 100)], "normal"),
            _feature([outer, hole], "TUMOR"),
        ],
    }
    out = rasterize_geojson(fc, level0_size=(100, 100), downsample=2)
    assert out.shape == (50, 50)
    assert int((out == 1).sum()) == 40 * 40 - 20 * 20
    assert (out[10:30, 10:30] == 3).all()  # the hole shows the earlier "normal" feature
    assert out[5, 5] == 1
    assert int((out == 3).sum()) == 50 * 50 - (40 * 40 - 20 * 20)


def test_multipolygon_and_file_path(tmp_path: Path) -> None:
    geom = [[_square(0, 0, 8, 8)], [_square(16, 16, 24, 24)]]
    fc = {"type": "FeatureCollection", "features": [_feature(geom, "stroma", "MultiPolygon")]}
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(fc))
    out = rasterize_geojson(path, level0_size=(32, 32), downsample=1)
    assert int((out == 2).sum()) == 128
    assert out[20, 20] == 2
    assert out[10, 10] == 0


def test_unknown_class_raises_listing_known_names_unless_mapped() -> None:
    fc = [_feature([_square(0, 0, 8, 8)], "Tumour")]
    with pytest.raises(DataError, match=r"'Tumour'.*'normal'.*'stroma'.*'tumor'"):
        rasterize_geojson(fc, level0_size=(16, 16), downsample=1)
    out = rasterize_geojson(fc, level0_size=(16, 16), downsample=1, class_map={"tumour": 1})
    assert int((out == 1).sum()) == 64
    with pytest.raises(DataError, match="unclassified"):
        rasterize_geojson([_feature([_square(0, 0, 8, 8)], None)], level0_size=(16, 16), downsample=1)


ASAP = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="A1" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="40" Y="40"/>
        <Coordinate Order="0" X="0" Y="0"/>
        <Coordinate Order="3" X="0" Y="40"/>
        <Coordinate Order="1" X="40" Y="0"/>
      </Coordinates>
    </Annotation>
    <Annotation Name="A2" Type="Rectangle" PartOfGroup="stroma" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="20" Y="20"/>
        <Coordinate Order="1" X="60" Y="20"/>
        <Coordinate Order="2" X="60" Y="60"/>
        <Coordinate Order="3" X="20" Y="60"/>
      </Coordinates>
    </Annotation>
    <Annotation Name="D" Type="Dot" PartOfGroup="nope">
      <Coordinates><Coordinate Order="0" X="5" Y="5"/></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups><Group Name="Tumor" PartOfGroup="None" Color="#64FE2E"/></AnnotationGroups>
</ASAP_Annotations>
"""


def test_asap_xml_two_groups(tmp_path: Path) -> None:
    path = tmp_path / "ann.xml"
    path.write_text(ASAP)
    out = rasterize_asap_xml(path, level0_size=(80, 80), downsample=2)
    assert out.shape == (40, 40)
    # tumor square 20x20 label px, overlapped by stroma 20x20 label px painted later (10x10 overlap)
    assert int((out == 2).sum()) == 400
    assert int((out == 1).sum()) == 400 - 100
    assert out[2, 2] == 1
    assert out[15, 15] == 2
    with pytest.raises(DataError, match="'Tumor'"):
        rasterize_asap_xml(path, level0_size=(80, 80), downsample=2, classes=_two_classes())


def _two_classes() -> ClassTable:
    return ClassTable((ClassInfo(0, "background", (255, 255, 255)), ClassInfo(1, "stroma", (1, 2, 3))))


def test_asap_rejects_non_asap_xml(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text("<Other/>")
    with pytest.raises(DataError, match="not ASAP XML"):
        rasterize_asap_xml(path, level0_size=(10, 10), downsample=1)


def test_wsss4luad_palette_png_is_remapped(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(WSSS_PALETTE)
    path = tmp_path / "mask.png"
    img.save(path)
    labels, ds = load_label_image(path, level0_size=(16, 8))  # auto-detects the palette
    assert ds == 4.0
    assert labels.tolist() == [[1, 2, 3, 0], [0, 3, 2, 1]]
    ids, _ = load_label_image(path, level0_size=(16, 8), palette="ids")
    assert ids.tolist() == idx.tolist()


def test_grey_png_ids_and_out_of_table_ids(tmp_path: Path) -> None:
    path = tmp_path / "ids.png"
    Image.fromarray(np.array([[0, 1], [2, 3]], dtype=np.uint8), mode="L").save(path)
    labels, ds = load_label_image(path, level0_size=(3, 3))  # ceil(3/2) = 2
    assert ds == 2.0
    assert labels.tolist() == [[0, 1], [2, 3]]
    Image.fromarray(np.array([[0, 7], [2, 3]], dtype=np.uint8), mode="L").save(path)
    with pytest.raises(DataError, match=r"ids \[7\]"):
        load_label_image(path, level0_size=(2, 2))


def test_non_integer_downsample_raises_naming_sizes(tmp_path: Path) -> None:
    path = tmp_path / "odd.png"
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8), mode="L").save(path)
    with pytest.raises(DataError, match=r"odd\.png is 40x30 px.*100x100"):
        load_label_image(path, level0_size=(100, 100))
    labels, ds = load_label_image(path, level0_size=(120, 90))
    assert ds == 3.0
    assert labels.shape == (30, 40)


def test_label_shape_rejects_bad_sizes() -> None:
    assert label_shape((10, 7), 4) == (2, 3)
    with pytest.raises(DataError):
        label_shape((0, 7), 4)


def test_malformed_and_non_area_geometries() -> None:
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}}
    out = rasterize_geojson([point], level0_size=(8, 8), downsample=1)
    assert not out.any()  # points carry no area and need no class
    bad = _feature([[[0, 0], [4, 0], [4]]], "tumor")
    with pytest.raises(DataError, match="feature 0"):
        rasterize_geojson([bad], level0_size=(8, 8), downsample=1)
