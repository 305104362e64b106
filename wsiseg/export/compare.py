"""Slide-level evaluation: a predicted ``mask.tif`` against a ground-truth label image, GeoJSON or ASAP XML.

The ground truth is resampled onto the prediction's grid (model-output resolution): each predicted pixel is
compared with the ground-truth label at the same level-0 point (its centre), so label images of any integer
downsample and polygon annotations compare alike.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import cast

import numpy as np

from wsiseg.classes import DEFAULT_CLASSES, ClassTable
from wsiseg.errors import DataError
from wsiseg.export.maskio import read_label_mask
from wsiseg.tiling.annotation_io import LabelPalette, load_label_image, rasterize_asap_xml, rasterize_geojson

__all__ = ["ground_truth_on_grid", "level0_size_from", "load_prediction", "recorded_slide_size"]


def recorded_slide_size(mask_path: Path) -> tuple[int, int] | None:
    """The slide's level-0 ``(width, height)`` recorded by ``wsiseg predict`` in the mask's JSON sidecar."""
    side = mask_path.with_suffix(".json")
    try:
        dims = json.loads(side.read_text(encoding="utf-8"))["provenance"]["slide_dimensions"]
        return int(dims[0]), int(dims[1])
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return None


def load_prediction(mask_path: Path, slide_size: tuple[int, int] | None) -> tuple[np.ndarray, float, ClassTable]:
    """Predicted labels at full mask resolution, level-0 px per mask px, and the class table.

    Raises:
        DataError: If the downsample is unknown (no metadata and no slide size).
    """
    pred = read_label_mask(mask_path, level=0)
    ds = pred.downsample_to_level0
    if ds is None and slide_size is not None:
        ds = slide_size[0] / pred.labels.shape[1]
    if ds is None:
        msg = f"{mask_path}: unknown mask scale; pass --slide or use a mask written by `wsiseg predict`"
        raise DataError(msg)
    return pred.labels, float(ds), pred.classes or DEFAULT_CLASSES


def ground_truth_on_grid(
    truth: Path,
    *,
    shape: tuple[int, int],
    downsample: float,
    level0_size: tuple[int, int],
    classes: ClassTable,
    palette: str = "auto",
) -> np.ndarray:
    """Ground-truth class ids on the prediction grid ``shape`` (rows, cols) at ``downsample``.

    Raises:
        DataError: Unreadable or mismatched ground truth.
    """
    suffix = truth.suffix.lower()
    if suffix in {".geojson", ".json"}:
        return _fit(rasterize_geojson(truth, level0_size=level0_size, downsample=downsample, classes=classes), shape)
    if suffix == ".xml":
        return _fit(rasterize_asap_xml(truth, level0_size=level0_size, downsample=downsample, classes=classes), shape)
    # ``palette`` is unvalidated CLI text; load_label_image treats any other value like "ids"
    gt_palette = cast(LabelPalette, palette)
    labels, gt_ds = load_label_image(truth, level0_size=level0_size, palette=gt_palette, classes=classes)
    rows = np.floor((np.arange(shape[0]) + 0.5) * downsample / gt_ds).astype(np.int64)
    cols = np.floor((np.arange(shape[1]) + 0.5) * downsample / gt_ds).astype(np.int64)
    out = np.zeros(shape, dtype=np.uint8)
    vr, vc = rows < labels.shape[0], cols < labels.shape[1]
    out[np.ix_(np.flatnonzero(vr), np.flatnonzero(vc))] = labels[np.ix_(rows[vr], cols[vc])]
    return out


def _fit(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or pad (background) a rasterised annotation to the prediction grid."""
    out = np.zeros(shape, dtype=np.uint8)
    h, w = min(shape[0], labels.shape[0]), min(shape[1], labels.shape[1])
    out[:h, :w] = labels[:h, :w]
    return out


def level0_size_from(mask_shape: tuple[int, int], downsample: float) -> tuple[int, int]:
    """Approximate level-0 ``(width, height)`` covered by a mask (used when no slide is given)."""
    return math.ceil(mask_shape[1] * downsample), math.ceil(mask_shape[0] * downsample)
