"""Per-class areas and the tumor-stroma ratio of a label mask, as CSV rows.

Definitions (tissue = every class except the ``skip_ids``, i.e. background):

- ``tissue_fraction`` = class area / tissue area.
- ``tumor_stroma_ratio`` = tumor area / stroma area (empty when there is no stroma).
- ``stroma_fraction`` = stroma area / (tumor + stroma) area. Much of the literature calls this percentage
  the "tumor-stroma ratio" (stroma-high when > 50 %); both are reported so neither reading is lost.

Rows: one per class (background included, its ``tissue_fraction`` empty), then one ``tissue`` total row that
carries ``tumor_stroma_ratio`` and ``stroma_fraction``. Areas are computed from pixel counts at the mask's
resolution times ``scale_to_level0 ** 2`` (level-0 px^2) and ``mpp_level0 ** 2`` (um^2). With no mpp the
um^2 and mm^2 columns stay empty and ``note`` says so.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.fileio import atomic_output

__all__ = ["AreaRow", "class_areas", "write_areas_csv"]

NO_MPP_NOTE = "no mpp: areas only in level-0 px^2"
#: Note of areas computed from an mpp the user assumed (``--slide-mpp``), not one the slide records.
ASSUMED_MPP_NOTE = "mpp assumed (--slide-mpp), not read from the slide: um^2 and mm^2 are only as right as it"


@dataclass(frozen=True)
class AreaRow:
    """One CSV row: a class (``class_id`` set) or the tissue total (``class_id`` ``None``)."""

    slide: str
    class_id: int | None
    class_name: str
    pixels: int
    area_px_level0: float
    area_um2: float | None
    area_mm2: float | None
    tissue_fraction: float | None
    tumor_stroma_ratio: float | None = None
    stroma_fraction: float | None = None
    note: str = ""


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def class_areas(
    labels: np.ndarray,
    *,
    classes: ClassTable,
    mpp_level0: float | None,
    scale_to_level0: float,
    skip_ids: Iterable[int] = (0,),
    slide: str = "",
    tumor_name: str = "tumor",
    stroma_name: str = "stroma",
    mpp_assumed: bool = False,
) -> list[AreaRow]:
    """Count the pixels of each class and convert them to physical areas.

    Args:
        labels: ``(H, W)`` integer label mask at any pyramid level.
        classes: Class table of the ids in ``labels``.
        mpp_level0: Microns per level-0 pixel, or ``None`` (areas then in level-0 px^2 only).
        scale_to_level0: Level-0 pixels per mask pixel.
        skip_ids: Ids that are not tissue (background).
        slide: Slide name written in every row (handy when CSVs of many slides are concatenated).
        tumor_name: Class name used as tumor for the ratios (case-insensitive).
        stroma_name: Class name used as stroma for the ratios (case-insensitive).
        mpp_assumed: ``mpp_level0`` was assumed by the user, not read from the slide (every row says so).

    Returns:
        One row per class, then a ``tissue`` total row with the ratios.

    Raises:
        DataError: If ``labels`` holds ids outside the class table.
        ValueError: If ``scale_to_level0`` is not positive.
    """
    if scale_to_level0 <= 0:
        msg = f"scale_to_level0 must be > 0, got {scale_to_level0}"
        raise ValueError(msg)
    labels = np.asarray(labels)
    if labels.size and int(labels.min()) < 0:
        msg = f"label mask holds negative ids (min {int(labels.min())}); class ids start at 0"
        raise DataError(msg)
    counts = np.bincount(labels.ravel().astype(np.int64, copy=False), minlength=len(classes))
    if len(counts) > len(classes) and counts[len(classes) :].any():
        bad = (np.nonzero(counts[len(classes) :])[0] + len(classes)).tolist()
        msg = f"label mask holds ids {bad} outside the class table 0..{len(classes) - 1}"
        raise DataError(msg)
    px_l0 = counts[: len(classes)].astype(np.float64) * float(scale_to_level0) ** 2
    um2 = px_l0 * mpp_level0**2 if mpp_level0 is not None else None
    note = NO_MPP_NOTE if mpp_level0 is None else (ASSUMED_MPP_NOTE if mpp_assumed else "")
    skip = set(skip_ids)
    tissue_ids = [c.id for c in classes.classes if c.id not in skip]
    tissue = float(px_l0[tissue_ids].sum())
    rows = [
        AreaRow(
            slide=slide,
            class_id=c.id,
            class_name=c.name,
            pixels=int(counts[c.id]),
            area_px_level0=float(px_l0[c.id]),
            area_um2=float(um2[c.id]) if um2 is not None else None,
            area_mm2=float(um2[c.id]) / 1e6 if um2 is not None else None,
            tissue_fraction=None if c.id in skip else _ratio(float(px_l0[c.id]), tissue),
            note=note,
        )
        for c in classes.classes
    ]
    by_name = {c.name.lower(): c.id for c in classes.classes}
    tumor_id, stroma_id = by_name.get(tumor_name.lower()), by_name.get(stroma_name.lower())
    tsr = sf = None
    if tumor_id is not None and stroma_id is not None:
        tumor, stroma = float(px_l0[tumor_id]), float(px_l0[stroma_id])
        tsr, sf = _ratio(tumor, stroma), _ratio(stroma, tumor + stroma)
    tissue_um2 = float(um2[tissue_ids].sum()) if um2 is not None else None
    rows.append(
        AreaRow(
            slide=slide,
            class_id=None,
            class_name="tissue",
            pixels=int(counts[tissue_ids].sum()),
            area_px_level0=tissue,
            area_um2=tissue_um2,
            area_mm2=tissue_um2 / 1e6 if tissue_um2 is not None else None,
            tissue_fraction=1.0 if tissue > 0 else None,
            tumor_stroma_ratio=tsr,
            stroma_fraction=sf,
            note=note,
        )
    )
    return rows


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def write_areas_csv(
    path: str | os.PathLike[str], rows: Iterable[AreaRow], *, provenance: Mapping[str, object] | None = None
) -> Path:
    """Write area rows as CSV (header = ``AreaRow`` fields, empty cell = unknown), atomically.

    Args:
        path: Destination ``.csv``; its folder must exist.
        rows: Rows from ``class_areas`` (several slides may be concatenated).
        provenance: Facts that hold for every row (the prediction's checkpoint id, epsilon, tiling...): one
            column each after the ``AreaRow`` fields, the same value in every row; dicts and lists as compact
            JSON.

    Returns:
        The written path.

    Raises:
        DataError: If the destination folder does not exist.
    """
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        extra = dict(provenance or {})
        tail = [
            json.dumps(v, separators=(",", ":")) if isinstance(v, dict | list) else _cell(v) for v in extra.values()
        ]
        writer.writerow([f.name for f in fields(AreaRow)] + list(extra))
        writer.writerows([_cell(v) for v in astuple(row)] + tail for row in rows)
    return Path(path)
