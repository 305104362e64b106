"""What ``wsiseg export`` writes for one mask: overlay PNG, QuPath GeoJSON, class areas, overlay TIFF."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.errors import DataError
from wsiseg.export.geojson import mask_to_features, write_geojson
from wsiseg.export.maskio import mask_level_shapes, read_label_mask
from wsiseg.export.overlay import write_overlay_png, write_overlay_pyramid_tiff
from wsiseg.export.stats import AreaRow, class_areas, write_areas_csv
from wsiseg.inference.provenance import OUTPUT_PROVENANCE_KEYS

__all__ = ["ExportResult", "choose_mask_level", "export_mask", "mask_provenance"]

#: Masks up to this many pixels give areas from full mask resolution; larger ones from the GeoJSON level.
AREA_FULL_RES_MAX_PIXELS = 200_000_000


@dataclass
class ExportResult:
    """What was written for one mask."""

    files: list[Path] = field(default_factory=list)
    n_features: int = 0
    areas: list[AreaRow] = field(default_factory=list)
    mpp_assumed: bool = False


def choose_mask_level(shapes: list[tuple[int, int]], mpp0: float | None, target_mpp: float) -> int:
    """Index of the pyramid level whose resolution is nearest ``target_mpp`` without being coarser.

    Without mpp, level 0 is used.
    """
    if mpp0 is None:
        return 0
    best = 0
    for i, (_, w) in enumerate(shapes):
        mpp = mpp0 * shapes[0][1] / w
        if mpp <= target_mpp * 1.05:
            best = i
    return best


def export_mask(
    mask_path: Path,
    out_dir: Path,
    *,
    slide: Path | None = None,
    min_area: float = 0.0,
    geojson_mpp: float = 4.0,
    object_type: str = "annotation",
    alpha: float = 0.4,
    overlay_tiff: bool = False,
) -> ExportResult:
    """Export one predicted mask.

    Args:
        mask_path: ``mask.tif`` from ``wsiseg predict`` (class table and geometry in its metadata).
        out_dir: Output folder; files are named after the mask.
        slide: The slide, for the overlay thumbnail and level-0 size (optional).
        min_area: Smallest region kept in the GeoJSON (um^2, or level-0 px^2 without mpp).
        geojson_mpp: Resolution to polygonise at (coarser masks give smaller, smoother GeoJSON).
        object_type: QuPath object type.
        alpha: Overlay opacity.
        overlay_tiff: Also write an RGB pyramid of the colourised mask.

    Returns:
        Written files, region count and area rows.

    Raises:
        DataError: Unreadable mask, or a slide whose size does not match the mask.
    """
    shapes = mask_level_shapes(mask_path)
    base = read_label_mask(mask_path, level=0)
    classes = base.classes or DEFAULT_CLASSES
    thumb, slide_dims, slide_mpp = _slide_facts(slide)
    ds0 = base.downsample_to_level0
    if ds0 is None and slide_dims is not None:
        ds0 = slide_dims[0] / base.labels.shape[1]
    if ds0 is None:
        ds0 = 1.0
    mpp_level0 = slide_mpp if slide_mpp is not None else (base.mpp / ds0 if base.mpp else None)
    prov = mask_provenance(mask_path)
    assumed = slide_mpp is None and mpp_level0 is not None and prov.get("mpp_source") in ("assumed", "override")
    if slide_dims is not None and abs(base.labels.shape[1] * ds0 - slide_dims[0]) > 2 * ds0 + 1:
        msg = (
            f"{mask_path}: mask covers {base.labels.shape[1] * ds0:.0f} px but {slide} is {slide_dims[0]} px "
            "wide; pass the slide this mask was predicted from"
        )
        raise DataError(msg)
    level = choose_mask_level(shapes, base.mpp, geojson_mpp)
    geo = base if level == 0 else read_label_mask(mask_path, level=level)
    geo_ds = ds0 * shapes[0][1] / shapes[level][1]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = mask_path.name.split(".")[0]
    res = ExportResult(mpp_assumed=assumed)
    if thumb is None:
        thumb = np.full((*geo.labels.shape, 3), 255, dtype=np.uint8)
    res.files.append(write_overlay_png(out_dir / f"{stem}_overlay.png", thumb, geo.labels, classes, alpha=alpha))
    features = mask_to_features(geo.labels, classes=classes, scale_to_level0=geo_ds, mpp_level0=mpp_level0,
                                min_area_um2=min_area, slide_name=stem, object_type=object_type)  # fmt: skip
    res.n_features = len(features)
    outputs_prov = {k: prov.get(k) for k in OUTPUT_PROVENANCE_KEYS}
    res.files.append(write_geojson(out_dir / f"{stem}.geojson", features, properties={"provenance": outputs_prov}))
    area_src, area_ds = (base, ds0) if base.labels.size <= AREA_FULL_RES_MAX_PIXELS else (geo, geo_ds)
    res.areas = class_areas(area_src.labels, classes=classes, mpp_level0=mpp_level0, scale_to_level0=area_ds,
                            slide=stem, mpp_assumed=assumed)  # fmt: skip
    res.files.append(write_areas_csv(out_dir / f"{stem}_areas.csv", res.areas, provenance=outputs_prov))
    if overlay_tiff:
        mpp_mask = mpp_level0 * ds0 if mpp_level0 else None
        res.files.append(write_overlay_pyramid_tiff(out_dir / f"{stem}_overlay.tif", base.labels, classes, mpp_mask))
    return res


def mask_provenance(mask_path: Path) -> dict[str, Any]:
    """The provenance a ``wsiseg predict`` mask's sidecar records (slide, checkpoint, tiling...), or ``{}``."""
    import json

    from wsiseg.export.tiff import sidecar_path

    try:
        prov = json.loads(sidecar_path(mask_path).read_text(encoding="utf-8"))["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return prov if isinstance(prov, dict) else {}


def _slide_facts(slide: Path | None) -> tuple[np.ndarray | None, tuple[int, int] | None, float | None]:
    if slide is None:
        return None, None, None
    from wsiseg.slide import open_slide

    with open_slide(slide) as handle:
        mpp = handle.mpp[0] if handle.mpp else None
        return handle.get_thumbnail(1600), handle.dimensions, mpp
