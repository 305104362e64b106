from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from shapely.geometry import shape

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.errors import DataError
from wsiseg.export.geojson import mask_to_features, write_geojson
from wsiseg.tiling.annotation_io import rasterize_geojson

SCALE = 4.0
MPP = 0.5


def _known_mask() -> np.ndarray:
    m = np.zeros((56, 56), dtype=np.uint8)
    m[2:22, 2:22] = 1  # tumor square ...
    m[8:16, 8:16] = 0  # ... with an 8x8 hole
    m[11:13, 11:13] = 2  # stroma island inside the hole
    m[30:40, 5:15] = 2  # stroma blob, 100 px
    m[30:35, 30:45] = 3  # normal blob, 75 px
    m[45:48, 45:48] = 1  # two tumor squares touching only at a corner
    m[48:51, 48:51] = 1
    return m


def _write_read(tmp_path: Path, features: list[dict]) -> dict:
    path = write_geojson(tmp_path / "out.geojson", features)
    return json.loads(path.read_text())


def test_known_mask_roundtrip_through_file(tmp_path: Path) -> None:
    mask = _known_mask()
    feats = mask_to_features(mask, classes=DEFAULT_CLASSES, scale_to_level0=SCALE, mpp_level0=MPP, slide_name="s1")
    data = _write_read(tmp_path, feats)
    assert data["type"] == "FeatureCollection"
    features = data["features"]
    assert len(features) == 6
    geoms = [shape(f["geometry"]) for f in features]
    assert all(g.is_valid for g in geoms)
    assert {g.geom_type for g in geoms} <= {"Polygon", "MultiPolygon"}
    for f in features:
        assert "objectType" not in f
        assert f["properties"]["objectType"] == "annotation"
        cls = f["properties"]["classification"]
        info = next(c for c in DEFAULT_CLASSES.classes if c.name == cls["name"])
        assert cls["color"] == list(info.color)
        uuid.UUID(f["id"])
    names = [f["properties"]["classification"]["name"] for f in features]
    assert sorted(names) == ["normal", "stroma", "stroma", "tumor", "tumor", "tumor"]
    # per class, the summed areas equal pixel counts * scale^2 exactly, in level-0 px and um^2
    for cid, name in enumerate(DEFAULT_CLASSES.names[1:], start=1):
        area = sum(g.area for g, n in zip(geoms, names, strict=True) if n == name)
        assert area == (mask == cid).sum() * SCALE**2
        um2 = sum(
            f["properties"]["measurements"]["area_um2"]
            for f in features
            if f["properties"]["classification"]["name"] == name
        )
        assert um2 == pytest.approx((mask == cid).sum() * SCALE**2 * MPP**2)
    # the square with a hole: level-0 coordinates and the 8x8 hole kept
    square = max(geoms, key=lambda g: g.area)
    assert square.geom_type == "Polygon"
    assert square.bounds == (8.0, 8.0, 88.0, 88.0)
    assert len(square.interiors) == 1
    assert shape({"type": "Polygon", "coordinates": [square.interiors[0].coords]}).area == 64 * 16
    assert square.area == (400 - 64) * 16
    # the diagonal pair: two separate polygons sharing exactly one corner point (4-connectivity)
    small = sorted(
        (g for g, n in zip(geoms, names, strict=True) if n == "tumor" and g.area == 144),
        key=lambda g: g.bounds,
    )
    assert len(small) == 2
    touch = small[0].intersection(small[1])
    assert touch.geom_type == "Point"
    assert (touch.x, touch.y) == (48 * SCALE, 48 * SCALE)


def test_rasterizing_the_features_gives_back_the_mask() -> None:
    rng = np.random.default_rng(7)
    noise = ndi.gaussian_filter(rng.standard_normal((64, 72)), 1.5)
    mask = np.digitize(noise, np.quantile(noise, [0.4, 0.6, 0.8])).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.05] = 2  # isolated pixels and diagonal contacts
    feats = mask_to_features(mask, classes=DEFAULT_CLASSES, scale_to_level0=SCALE, mpp_level0=None)
    assert all(shape(f["geometry"]).is_valid for f in feats)
    n_regions = sum(ndi.label(mask == c)[1] for c in (1, 2, 3))  # 4-connected components
    assert len(feats) == n_regions
    back = rasterize_geojson(
        {"type": "FeatureCollection", "features": feats},
        level0_size=(72 * 4, 64 * 4),
        downsample=SCALE,
    )
    assert np.array_equal(back, mask)


def test_min_area_in_um2_and_in_level0_px() -> None:
    mask = _known_mask()
    # um^2 per pixel = 16 * 0.25 = 4: keep regions >= 300 um^2 (tumor square 1344, stroma 400, normal 300)
    feats = mask_to_features(mask, classes=DEFAULT_CLASSES, scale_to_level0=SCALE, mpp_level0=MPP, min_area_um2=300)
    assert sorted(f["properties"]["measurements"]["area_um2"] for f in feats) == [300, 400, 1344]
    # without mpp the threshold is level-0 px^2 (16 per pixel) and no um^2 measurement is written
    feats = mask_to_features(mask, classes=DEFAULT_CLASSES, scale_to_level0=SCALE, mpp_level0=None, min_area_um2=144)
    areas = sorted(f["properties"]["measurements"]["area_px_level0"] for f in feats)
    assert areas == [144, 144, 1200, 1600, 5376]
    assert all("area_um2" not in f["properties"]["measurements"] for f in feats)


def test_ids_are_deterministic_and_depend_on_slide_name() -> None:
    mask = _known_mask()
    kw = {"classes": DEFAULT_CLASSES, "scale_to_level0": 1.0, "mpp_level0": None}
    a = [f["id"] for f in mask_to_features(mask, slide_name="a", **kw)]
    assert a == [f["id"] for f in mask_to_features(mask, slide_name="a", **kw)]
    b = [f["id"] for f in mask_to_features(mask, slide_name="b", **kw)]
    assert len(set(a)) == len(a)
    assert not set(a) & set(b)


def test_simplified_polygons_stay_valid_and_close_in_area() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    mask = (((yy - 100) ** 2 + (xx - 100) ** 2) < 80**2).astype(np.uint8)
    exact = mask_to_features(mask, classes=DEFAULT_CLASSES, scale_to_level0=1, mpp_level0=None)
    simple = mask_to_features(
        mask, classes=DEFAULT_CLASSES, scale_to_level0=1, mpp_level0=None, simplify_tolerance_px=1.0
    )
    g0, g1 = shape(exact[0]["geometry"]), shape(simple[0]["geometry"])
    assert g1.is_valid
    assert len(g1.exterior.coords) < len(g0.exterior.coords) / 2
    assert g1.area == pytest.approx(mask.sum(), rel=0.01)


def test_detection_type_and_bad_input() -> None:
    mask = _known_mask()
    feats = mask_to_features(mask, classes=DEFAULT_CLASSES, scale_to_level0=1, mpp_level0=None, object_type="detection")
    assert {f["properties"]["objectType"] for f in feats} == {"detection"}
    with pytest.raises(DataError, match=r"\[12\]"):
        mask_to_features(mask + 9 * (mask == 3), classes=DEFAULT_CLASSES, scale_to_level0=1, mpp_level0=None)
    with pytest.raises(DataError, match="folder"):
        write_geojson(Path("/nonexistent-dir/x.geojson"), [])
