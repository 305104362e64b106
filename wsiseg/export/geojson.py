"""Label mask -> QuPath GeoJSON (one annotation per connected region, in level-0 pixel coordinates).

How regions become polygons: every pixel edge between two different labels (and the image border) becomes a
line segment; collinear edges are merged into maximal runs, broken at every vertex where a perpendicular edge
meets them so the lines stay noded. ``shapely.polygonize`` then returns the faces of that planar graph; each
face is exactly one **4-connected** region of one label, with its holes, so areas equal pixel counts. Two
pixels that touch only at a corner are separate regions (separate features that share one point); this keeps
every ring simple and avoids self-touching polygons. A face's label is read at ``point_on_surface``.

QuPath contract (QuPath >= 0.4): a ``FeatureCollection``; ``geometry`` Polygon/MultiPolygon in level-0 pixels,
origin top-left; ``properties.objectType`` = ``"annotation"`` (or ``"detection"``);
``properties.classification`` = ``{"name", "color": [r, g, b]}``; ``properties.measurements`` is a map.
Feature ids are deterministic UUIDs: ``uuid5(WSISEG_NAMESPACE, f"{slide_name}/{index}")`` with features
ordered by class id, then top-left corner (row, column), so re-exporting the same mask gives the same ids.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping

from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.fileio import atomic_output

__all__ = ["WSISEG_NAMESPACE", "mask_to_features", "write_geojson"]

#: Namespace of the deterministic feature UUIDs.
WSISEG_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/wsiseg/wsiseg/geojson")

_OBJECT_TYPES = ("annotation", "detection")


def _runs(edges: np.ndarray, breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge consecutive True cells of each row of ``edges`` into runs.

    Args:
        edges: ``(R, C)`` bool, unit edge ``c`` of line ``r`` present.
        breaks: ``(R, C + 1)`` bool, a run must stop at vertex ``c`` of line ``r``.

    Returns:
        ``(row, first_vertex, last_vertex)`` of every run.
    """
    padded = np.zeros((edges.shape[0], edges.shape[1] + 2), dtype=bool)
    padded[:, 1:-1] = edges
    start = edges & (~padded[:, :-2] | breaks[:, :-1])
    end = edges & (~padded[:, 2:] | breaks[:, 1:])
    rows, first = np.nonzero(start)
    _, last = np.nonzero(end)
    return rows, first, last + 1


def _boundary_segments(labels: np.ndarray) -> np.ndarray:
    """Return ``(N, 2, 2)`` float segments (x, y) of all label boundaries, noded, in mask pixels."""
    lab = np.pad(labels.astype(np.int16), 1, constant_values=-1)
    hor = lab[:-1, :] != lab[1:, :]  # edge on horizontal line r+1 (padded), under cell column c
    ver = lab[:, :-1] != lab[:, 1:]  # edge on vertical line c+1 (padded), beside cell row r
    vert_touch = np.zeros((lab.shape[0] + 1, lab.shape[1] + 1), dtype=bool)
    vert_touch[:-1, 1:-1] |= ver
    vert_touch[1:, 1:-1] |= ver
    hor_touch = np.zeros_like(vert_touch)
    hor_touch[1:-1, :-1] |= hor
    hor_touch[1:-1, 1:] |= hor
    r, x0, x1 = _runs(hor, vert_touch[1:-1, :])
    y = (r + 1).astype(np.float64)
    h_seg = np.stack([np.stack([x0, y], 1), np.stack([x1, y], 1)], 1)
    c, y0, y1 = _runs(ver.T, hor_touch[:, 1:-1].T)
    x = (c + 1).astype(np.float64)
    v_seg = np.stack([np.stack([x, y0], 1), np.stack([x, y1], 1)], 1)
    return np.concatenate([h_seg, v_seg]).astype(np.float64) - 1.0


def _region_polygons(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return every 4-connected region as a polygon (mask pixels) and its label."""
    segments = _boundary_segments(labels)
    faces = shapely.get_parts(shapely.polygonize(shapely.linestrings(segments)))
    xy = shapely.get_coordinates(shapely.point_on_surface(faces))
    h, w = labels.shape
    rows = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, h - 1)
    cols = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, w - 1)
    return faces, labels[rows, cols]


def _polygonal(geom: shapely.Geometry) -> Polygon | MultiPolygon | None:
    """Keep only the polygonal parts of a (made-valid) geometry; ``None`` if nothing is left."""
    if isinstance(geom, Polygon | MultiPolygon):
        return None if geom.is_empty else geom
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon | MultiPolygon)]
    polys = [q for p in parts for q in (p.geoms if isinstance(p, MultiPolygon) else [p])]
    polys = [p for p in polys if not p.is_empty]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _feature(
    geom: Polygon | MultiPolygon,
    *,
    fid: str,
    name: str,
    color: Sequence[int],
    object_type: str,
    measurements: dict[str, float],
) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": fid,
        "geometry": mapping(geom),
        "properties": {
            "objectType": object_type,
            "classification": {"name": name, "color": [int(v) for v in color]},
            "measurements": measurements,
        },
    }


def _check_inputs(labels: np.ndarray, classes: ClassTable, scale_to_level0: float, object_type: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        msg = f"label mask must be 2-D (H, W), got shape {labels.shape}; pass one channel"
        raise DataError(msg)
    if scale_to_level0 <= 0:
        msg = f"scale_to_level0 must be > 0, got {scale_to_level0}"
        raise ValueError(msg)
    if object_type not in _OBJECT_TYPES:
        msg = f"object_type must be one of {_OBJECT_TYPES}, got {object_type!r}"
        raise ValueError(msg)
    if labels.size and (int(labels.max()) >= len(classes) or int(labels.min()) < 0):
        bad = sorted(set(np.unique(labels).tolist()) - set(range(len(classes))))
        msg = (
            f"label mask holds ids {bad} outside the class table 0..{len(classes) - 1}; "
            "pass the class table the mask was made with"
        )
        raise DataError(msg)
    return labels


def mask_to_features(
    labels: np.ndarray,
    *,
    classes: ClassTable,
    scale_to_level0: float,
    mpp_level0: float | None,
    min_area_um2: float = 0.0,
    skip_ids: Iterable[int] = (0,),
    simplify_tolerance_px: float = 0.0,
    slide_name: str = "",
    object_type: str = "annotation",
) -> list[dict[str, Any]]:
    """Turn a label mask into QuPath GeoJSON features, one per 4-connected region.

    Args:
        labels: ``(H, W)`` integer label mask (any pyramid level of the prediction).
        classes: Class table giving names and colours of the ids in ``labels``.
        scale_to_level0: Level-0 pixels per mask pixel (the mask's downsample).
        mpp_level0: Microns per level-0 pixel, or ``None`` when unknown.
        min_area_um2: Regions smaller than this are dropped; in um^2 when ``mpp_level0`` is known,
            else in level-0 px^2.
        skip_ids: Label ids that produce no features (background).
        simplify_tolerance_px: Douglas-Peucker tolerance in mask pixels; 0 keeps exact pixel outlines
            (areas then equal pixel counts exactly).
        slide_name: Seed of the deterministic feature UUIDs.
        object_type: ``"annotation"`` or ``"detection"``.

    Returns:
        GeoJSON Feature dicts with Polygon or MultiPolygon geometries in level-0 pixel coordinates.

    Raises:
        DataError: If ``labels`` is not 2-D or holds ids outside the class table.
        ValueError: If ``scale_to_level0`` is not positive or ``object_type`` is unknown.
    """
    labels = _check_inputs(labels, classes, scale_to_level0, object_type)
    if labels.size == 0:
        return []
    faces, face_ids = _region_polygons(labels)
    keep = ~np.isin(face_ids, list(skip_ids))
    faces, face_ids = faces[keep], face_ids[keep]
    px_area_l0 = shapely.area(faces) * scale_to_level0**2
    area_um2 = px_area_l0 * mpp_level0**2 if mpp_level0 is not None else None
    measure = area_um2 if area_um2 is not None else px_area_l0
    keep = measure >= min_area_um2
    bounds = shapely.bounds(faces)
    order = np.lexsort((bounds[:, 0], bounds[:, 1], face_ids))
    order = order[keep[order]]
    geoms = faces[order]
    if simplify_tolerance_px > 0:
        geoms = shapely.simplify(geoms, simplify_tolerance_px, preserve_topology=True)
    geoms = shapely.make_valid(geoms)
    geoms = shapely.transform(geoms, lambda xy: xy * float(scale_to_level0))
    features: list[dict[str, Any]] = []
    for geom, i in zip(geoms, order, strict=True):
        poly = _polygonal(geom)
        if poly is None:
            continue
        info = classes.classes[int(face_ids[i])]
        measurements = {"area_px_level0": float(px_area_l0[i])}
        if area_um2 is not None:
            measurements["area_um2"] = float(area_um2[i])
        fid = str(uuid.uuid5(WSISEG_NAMESPACE, f"{slide_name}/{len(features)}"))
        features.append(
            _feature(
                poly,
                fid=fid,
                name=info.name,
                color=info.color,
                object_type=object_type,
                measurements=measurements,
            )
        )
    return features


def write_geojson(
    path: str | os.PathLike[str], features: list[dict[str, Any]], *, properties: Mapping[str, Any] | None = None
) -> Path:
    """Write features as a GeoJSON ``FeatureCollection`` atomically (temp file + ``os.replace``).

    Args:
        path: Destination ``.geojson`` file; its folder must exist.
        features: Features from ``mask_to_features``.
        properties: Facts about the whole collection (the prediction's provenance), written as the
            collection's ``properties`` member (a GeoJSON foreign member; QuPath reads the features and
            ignores it).

    Returns:
        The written path.

    Raises:
        DataError: If the destination folder does not exist.
    """
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if properties:
        collection["properties"] = dict(properties)
    collection["features"] = features
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(collection, separators=(",", ":")))
    return Path(path)
