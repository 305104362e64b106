"""Predict one slide into ``mask.tif``: plan windows, run the model, stitch, write the pyramid atomically."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from wsiseg import __version__
from wsiseg.classes import ClassTable
from wsiseg.export.sinks import StitchSink, open_prob_writers
from wsiseg.export.tiff import MaskTiffWriter
from wsiseg.inference.predictor import PredictSettings, plan_prediction, run_prediction
from wsiseg.slide import open_slide
from wsiseg.tiling.geometry import TilingConfig

__all__ = ["SlidePrediction", "predict_to_tiff"]


@dataclass
class SlidePrediction:
    """What was written for one slide."""

    mask: Path
    width: int
    height: int
    mask_mpp: float | None
    windows: int
    grid_windows: int
    seconds: float
    prob_maps: list[Path]


def predict_to_tiff(
    slide_path: Path,
    model: nn.Module,
    out_path: Path,
    *,
    tiling: TilingConfig,
    classes: ClassTable,
    settings: PredictSettings,
    backend: str = "auto",
    slide_mpp: float | None = None,
    ome: bool = False,
    probs: bool = False,
    provenance: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SlidePrediction:
    """Segment a whole slide and write its label mask (and optional probability maps).

    Nothing appears at ``out_path`` unless the whole slide succeeded.

    Raises:
        SlideError: Unreadable slide or no tissue.
        ConfigError: The card defines windows in um and the slide has no mpp.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open_slide(slide_path, backend=backend) as slide:
        plan = plan_prediction(slide, tiling, slide_mpp=slide_mpp, min_tissue=settings.min_tissue)
        geo = plan.geometry
        prov = {
            "slide": str(slide_path),
            "slide_dimensions": list(slide.dimensions),
            "slide_mpp": plan.slide_mpp,
            "tiling": tiling.to_dict(),
            "window_level0": plan.window0,
            "stride_level0": plan.stride0,
            "windows_predicted": len(plan.origins),
            "wsiseg_version": __version__,
            **(provenance or {}),
        }
        common: dict[str, Any] = {"mpp": plan.mask_mpp, "classes": classes, "downsample_to_level0": 1.0 / geo.scale,
                  "ome": ome}  # fmt: skip
        writer = MaskTiffWriter(out_path, geo.width, geo.height, provenance=prov, **common)
        prob_writers: list[MaskTiffWriter] = []
        try:
            if probs:
                prob_writers = open_prob_writers(out_path, geo.width, geo.height, provenance=prov, **common)
            sink = StitchSink(writer, prob_writers)
            run_settings = PredictSettings(**{**settings.__dict__, "emit_probs": probs})
            stats = run_prediction(slide, model, plan, tiling, sink, run_settings, progress=progress)
            for w in sink.writers():
                w.close()
        except BaseException:
            for w in [writer, *prob_writers]:
                w.abort()
            raise
    return SlidePrediction(out_path, geo.width, geo.height, plan.mask_mpp, len(plan.origins), plan.n_grid,
                           stats["seconds"], [w.path for w in prob_writers])  # fmt: skip
