"""Annotations -> label images: QuPath GeoJSON, ASAP XML (and, re-exported from ``label_images``, label PNG/TIFFs).

All functions are pure: they return a ``(H, W)`` uint8 label image at a chosen downsample of the slide's
level 0, with our class ids (0 = background, everywhere nothing is drawn).

Rasterisation rule: a label pixel gets a polygon's class when the pixel **centre** lies inside the polygon
(the GDAL/rasterio default, ``all_touched=False``), by an exact even-odd scanline fill in numpy, so holes
(interior rings) are cleared and a square of known size gives an exact pixel count. Polygons are painted in
file order; later ones paint over earlier ones. The label image has ``ceil(level0 / downsample)`` pixels per
side, so every level-0 pixel has a label. (Pillow's ``ImageDraw.polygon`` was the first choice, but it
truncates vertices to integers and fills both boundary rows, adding up to one row and one column per
polygon; the scanline fill is as fast for annotation-sized polygons and exact.)
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsiseg.classes import DEFAULT_CLASSES, ClassTable
from wsiseg.errors import DataError
from wsiseg.tiling.label_images import LabelPalette, load_label_image, palette_to_ids, read_label_file

__all__ = [
    "LabelPalette",
    "fill_polygon",
    "label_shape",
    "load_label_image",
    "palette_to_ids",
    "rasterize_asap_xml",
    "rasterize_geojson",
    "read_label_file",
]

Rings = Sequence[np.ndarray]
_ASAP_AREA_TYPES = {"polygon", "spline", "rectangle"}


def label_shape(level0_size: tuple[int, int], downsample: float) -> tuple[int, int]:
    """Return the ``(H, W)`` of a label image at ``downsample`` of a ``(w, h)`` level-0 slide.

    Raises:
        DataError: If the size or downsample is not positive.
    """
    w, h = (int(v) for v in level0_size)
    if w <= 0 or h <= 0 or not downsample > 0:
        msg = f"level-0 size {level0_size} and downsample {downsample} must be positive"
        raise DataError(msg)
    return max(1, math.ceil(h / downsample)), max(1, math.ceil(w / downsample))


def fill_polygon(rings: Rings, shape: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """Rasterise one polygon (exterior + holes, even-odd) by pixel-centre sampling.

    Args:
        rings: ``(n, 2)`` arrays of (x, y) vertices in label-pixel units (pixel ``i`` spans ``[i, i+1)``);
            the first is the exterior, the rest are holes. Closing vertices are optional.
        shape: ``(H, W)`` of the label image; the result is clipped to it.

    Returns:
        ``(row0, col0, mask)`` with a boolean mask of the bounding box, or ``None`` if nothing is covered.
    """
    rings = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings if len(r) >= 3]
    if not rings:
        return None
    p0 = np.concatenate(rings)
    p1 = np.concatenate([np.roll(r, -1, axis=0) for r in rings])
    h, w = shape
    pts = np.concatenate([p0, p1])
    r0, r1 = (int(np.clip(math.ceil(v - 0.5), 0, h)) for v in (pts[:, 1].min(), pts[:, 1].max()))
    c0, c1 = (int(np.clip(math.ceil(v - 0.5), 0, w)) for v in (pts[:, 0].min(), pts[:, 0].max()))
    if r1 <= r0 or c1 <= c0:
        return None
    ylo, yhi = np.minimum(p0[:, 1], p1[:, 1]), np.maximum(p0[:, 1], p1[:, 1])
    jlo = np.clip(np.ceil(ylo - 0.5), r0, r1).astype(np.int64)
    jhi = np.clip(np.ceil(yhi - 0.5), r0, r1).astype(np.int64)
    counts = jhi - jlo
    edge = np.repeat(np.arange(len(p0)), counts)
    offsets = np.cumsum(counts) - counts
    rows = jlo[edge] + np.arange(len(edge)) - offsets[edge]
    (x0, y0), (x1, y1) = p0[edge].T, p1[edge].T
    xs = x0 + (rows + 0.5 - y0) * (x1 - x0) / (y1 - y0)
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    row, xa, xb = rows[0::2] - r0, xs[0::2], xs[1::2]
    start = np.clip(np.ceil(xa - 0.5), c0, c1).astype(np.int64) - c0
    stop = np.clip(np.ceil(xb - 0.5), c0, c1).astype(np.int64) - c0
    diff = np.zeros((r1 - r0, c1 - c0 + 1), dtype=np.int32)
    np.add.at(diff, (row, start), 1)
    np.add.at(diff, (row, stop), -1)
    mask = np.cumsum(diff[:, :-1], axis=1) > 0
    return r0, c0, mask


def _paint(out: np.ndarray, rings: Rings, class_id: int) -> None:
    filled = fill_polygon(rings, out.shape)
    if filled is not None:
        r0, c0, mask = filled
        out[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]][mask] = class_id


def _class_lookup(classes: ClassTable, class_map: Mapping[str, int] | None) -> dict[str, int]:
    lookup = {name.lower(): i for i, name in enumerate(classes.names)}
    for key, value in (class_map or {}).items():
        if not 0 <= int(value) < len(classes):
            msg = f"class_map maps {key!r} to id {value}, outside the class table 0..{len(classes) - 1}"
            raise DataError(msg)
        lookup[str(key).lower()] = int(value)
    return lookup


def _class_id(name: str | None, lookup: dict[str, int], source: str) -> int:
    key = (name or "unclassified").lower()
    if key not in lookup:
        msg = (
            f"{source}: annotation class {name or '(unclassified)'!r} is not one of {sorted(lookup)}; "
            "rename it or map it with class_map (e.g. --class-map 'Tumour=tumor')"
        )
        raise DataError(msg)
    return lookup[key]


def _classification_name(props: Mapping[str, Any]) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls
    if isinstance(cls, Mapping):
        if "name" in cls:
            return str(cls["name"])
        if isinstance(cls.get("names"), list):
            return ": ".join(str(n) for n in cls["names"])
    return None


def _polygons(geometry: Any, where: str) -> Iterator[list[Any]]:
    """Yield the ring lists of every Polygon in a GeoJSON geometry (points and lines are skipped).

    Raises:
        DataError: The geometry is not an object, or a polygon's ``coordinates`` are missing or not lists.
    """
    if not geometry:
        return
    if not isinstance(geometry, Mapping):
        msg = f"{where}: geometry must be an object with 'type' and 'coordinates', got {type(geometry).__name__}"
        raise DataError(msg)
    kind = geometry.get("type")
    if kind in {"Polygon", "MultiPolygon"}:
        coords = geometry.get("coordinates")
        depth = 3 if kind == "Polygon" else 4
        if not _nested_lists(coords, depth - 1):
            msg = (f"{where}: a {kind} needs 'coordinates' as {'[' * depth}x, y{']' * depth} lists, "
                   f"got {_describe(coords)}; re-export the GeoJSON")  # fmt: skip
            raise DataError(msg)
        yield from [coords] if kind == "Polygon" else coords  # type: ignore[misc]
    elif kind == "GeometryCollection":
        parts = geometry.get("geometries", [])
        if not isinstance(parts, list):
            msg = f"{where}: a GeometryCollection needs 'geometries' as a list, got {_describe(parts)}"
            raise DataError(msg)
        for part in parts:
            yield from _polygons(part, where)
    elif not isinstance(kind, str):
        msg = f"{where}: geometry 'type' must be a GeoJSON type name, got {_describe(kind)}"
        raise DataError(msg)


def _nested_lists(value: Any, depth: int) -> bool:
    """True when ``value`` is a list (or tuple) whose items are lists ``depth - 1`` levels further down."""
    if not isinstance(value, list | tuple):
        return False
    return depth <= 1 or all(_nested_lists(v, depth - 1) for v in value)


def _describe(value: Any) -> str:
    text = "missing" if value is None else f"{type(value).__name__} {json.dumps(value, default=str)[:40]}"
    return text


def _features(obj: Any, label: str) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, Mapping) and obj.get("type") == "FeatureCollection":
        features = obj.get("features", [])
        if not isinstance(features, list):
            msg = f"{label}: 'features' must be a list, got {_describe(features)}; re-export the GeoJSON"
            raise DataError(msg)
        return features
    if isinstance(obj, Mapping) and obj.get("type") == "Feature":
        return [obj]
    msg = f"{label}: GeoJSON must be a FeatureCollection, a Feature or a list of Features"
    raise DataError(msg)


def _feature_parts(feature: Any, where: str) -> tuple[Mapping[str, Any], list[list[Any]]]:
    """A feature's properties and polygons, after checking its structure."""
    if not isinstance(feature, Mapping):
        msg = f"{where}: a feature must be an object, got {_describe(feature)}; re-export the GeoJSON"
        raise DataError(msg)
    props = feature.get("properties") or {}
    if not isinstance(props, Mapping):
        msg = f"{where}: 'properties' must be an object, got {_describe(props)}"
        raise DataError(msg)
    return props, list(_polygons(feature.get("geometry"), where))


def rasterize_geojson(
    source: str | os.PathLike[str] | Mapping[str, Any] | list[Any],
    *,
    level0_size: tuple[int, int],
    downsample: float,
    classes: ClassTable = DEFAULT_CLASSES,
    class_map: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Rasterise QuPath GeoJSON annotations (level-0 pixel coordinates) to a label image.

    Args:
        source: Path to a ``.geojson``/``.json`` file, or the parsed FeatureCollection/Feature/list.
        level0_size: Slide level-0 ``(width, height)``.
        downsample: Level-0 pixels per label pixel.
        classes: Our class table; classification names match its names case-insensitively.
        class_map: Extra ``{annotation name: class id}`` entries (case-insensitive, override the table);
            unclassified annotations look up ``"unclassified"``.

    Returns:
        ``(ceil(h / downsample), ceil(w / downsample))`` uint8 labels.

    Raises:
        DataError: If the file is unreadable, not GeoJSON, or holds an unknown class name.
    """
    label = "GeoJSON"
    if isinstance(source, str | os.PathLike):
        label = str(source)
        try:
            source = _load_json(Path(source))
        except (OSError, ValueError, RecursionError) as err:
            msg = f"cannot read GeoJSON {label}: {err}; export it from QuPath as GeoJSON"
            raise DataError(msg) from err
    out = np.zeros(label_shape(level0_size, downsample), dtype=np.uint8)
    lookup = _class_lookup(classes, class_map)
    for i, feature in enumerate(_features(source, label)):
        where = f"{label} feature {i}"
        props, polys = _feature_parts(feature, where)
        if not polys:
            continue
        class_id = _class_id(_classification_name(props), lookup, where)
        for rings in polys:
            _paint(out, [_ring(r, downsample, where) for r in rings], class_id)
    return out


def _ring(coords: Any, downsample: float, where: str) -> np.ndarray:
    """GeoJSON ring (level-0 ``[[x, y(, z)], ...]``) -> ``(n, 2)`` label-pixel coordinates."""
    try:
        xy = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"{where}: malformed polygon coordinates ({err}); re-export the GeoJSON"
        raise DataError(msg) from err
    if xy.size == 0:
        return np.empty((0, 2))
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy[:, :2]).all():
        msg = f"{where}: a polygon ring must be a list of [x, y] pairs, got shape {xy.shape}"
        raise DataError(msg)
    return xy[:, :2] / downsample


def _load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _asap_coordinates(annotation: ET.Element, where: str) -> np.ndarray:
    """The ``(n, 2)`` vertices of an ASAP annotation in ``Order``.

    Raises:
        DataError: A ``Coordinate`` with a missing or non-numeric ``X``/``Y``, or a non-integer ``Order``.
    """
    coords: list[tuple[int, float, float]] = []
    for k, c in enumerate(annotation.iter("Coordinate")):
        at = f"{where} <Coordinate> {k}"
        try:
            order = int(c.get("Order", len(coords)))
        except ValueError:
            msg = f"{at}: Order={c.get('Order')!r} is not an integer; fix or re-export the ASAP XML"
            raise DataError(msg) from None
        xy = []
        for axis in ("X", "Y"):
            text = c.get(axis)
            try:
                xy.append(float((text or "").replace(",", ".")))
            except ValueError:
                msg = f"{at}: {axis}={text!r} is not a number; fix or re-export the ASAP XML"
                raise DataError(msg) from None
        coords.append((order, xy[0], xy[1]))
    coords.sort(key=lambda t: t[0])
    return np.array([(x, y) for _, x, y in coords], dtype=np.float64).reshape(-1, 2)


def rasterize_asap_xml(
    path: str | os.PathLike[str],
    *,
    level0_size: tuple[int, int],
    downsample: float,
    classes: ClassTable = DEFAULT_CLASSES,
    class_map: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Rasterise ASAP XML annotations (``PartOfGroup`` = class name) to a label image.

    Polygon, Spline (its control points) and Rectangle annotations are filled; Dot/PointSet are skipped.
    Annotations are painted in file order, so an exclusion group listed later (CAMELYON16 ``_2``) can be
    mapped to background with ``class_map={"_2": 0}``.

    Args:
        path: ASAP ``.xml`` file (``<ASAP_Annotations><Annotations><Annotation ...>``).
        level0_size: Slide level-0 ``(width, height)``.
        downsample: Level-0 pixels per label pixel.
        classes: Our class table; group names match its names case-insensitively.
        class_map: Extra ``{group name: class id}`` entries.

    Returns:
        ``(ceil(h / downsample), ceil(w / downsample))`` uint8 labels.

    Raises:
        DataError: If the file is unreadable or not ASAP XML, or a group name is unknown.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        msg = f"cannot read ASAP XML {path}: {err}; pass an ASAP annotation file"
        raise DataError(msg) from err
    if root.tag != "ASAP_Annotations":
        msg = f"{path} is not ASAP XML (root <{root.tag}>, expected <ASAP_Annotations>)"
        raise DataError(msg)
    out = np.zeros(label_shape(level0_size, downsample), dtype=np.uint8)
    lookup = _class_lookup(classes, class_map)
    for i, ann in enumerate(root.iter("Annotation")):
        if ann.get("Type", "Polygon").lower() not in _ASAP_AREA_TYPES:
            continue
        where = f"{path} <Annotation> {i} ({ann.get('Name')})"
        xy = _asap_coordinates(ann, where)
        if len(xy) < 3 or not np.isfinite(xy).all():
            continue
        name = ann.get("PartOfGroup") or ann.get("Name")
        class_id = _class_id(name, lookup, where)
        _paint(out, [xy / downsample], class_id)
    return out
