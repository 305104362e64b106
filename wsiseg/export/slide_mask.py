"""Predict one slide into ``mask.tif``: the TIFF outputs for :func:`wsiseg.inference.slide.predict_slide`.

The orchestration (open, plan, run, close or abort) lives in ``wsiseg.inference``; this module only opens
the pyramidal label writer and the optional per-class probability writers for the plan.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.export.sinks import StitchSink, open_prob_writers, prob_map_paths
from wsiseg.export.tiff import MaskTiffWriter, sidecar_path
from wsiseg.inference.predictor import PredictPlan, PredictSettings
from wsiseg.inference.slide import predict_slide
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.writer import same_source

__all__ = ["SlidePrediction", "predict_to_tiff", "prediction_done"]


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
    mpp_source: str = "unknown"
    stain_note: str = ""


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
    opened: list[_TiffOutputs] = []

    def open_outputs(plan: PredictPlan, prov: dict[str, Any]) -> _TiffOutputs:
        geo = plan.geometry
        common: dict[str, Any] = {"mpp": plan.mask_mpp, "classes": classes, "downsample_to_level0": 1.0 / geo.scale,
                                  "ome": ome}  # fmt: skip
        writer = MaskTiffWriter(out_path, geo.width, geo.height, provenance=prov, **common)
        try:
            prob_writers = (
                open_prob_writers(out_path, geo.width, geo.height, provenance=prov, **common) if probs else []
            )
        except BaseException:
            writer.abort()
            raise
        opened.append(_TiffOutputs(StitchSink(writer, prob_writers)))
        return opened[-1]

    res = predict_slide(slide_path, model, tiling=tiling, settings=replace(settings, emit_probs=probs),
                        open_outputs=open_outputs, backend=backend, slide_mpp=slide_mpp, provenance=provenance,
                        progress=progress)  # fmt: skip
    geo = res.plan.geometry
    return SlidePrediction(out_path, geo.width, geo.height, res.plan.mask_mpp, len(res.plan.origins),
                           res.plan.n_grid, res.seconds, [w.path for w in opened[0].sink.probs],
                           res.plan.mpp_source, res.plan.stain_note)  # fmt: skip


def prediction_done(target: Path, slide_path: Path, classes: ClassTable, *, probs: bool) -> bool:
    """True when ``target`` is a finished prediction of ``slide_path`` (with its ``--probs`` maps if asked).

    Scratch folders an interrupted run left next to ``target`` are removed, so a rerun repairs the batch: a
    mask without its probability maps is predicted again.

    Raises:
        DataError: ``target`` holds the prediction of another slide (two inputs would share one output).
    """
    if target.parent.is_dir():
        for out in (target, *prob_map_paths(target, classes)):  # the mask's and every map's writer
            for stale in target.parent.glob(f".{out.name}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
    if not target.exists():
        return False
    try:
        meta = json.loads(sidecar_path(target).read_text(encoding="utf-8"))
        recorded = str(meta["provenance"]["slide"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no or damaged sidecar: predict it again
    if not same_source(recorded, slide_path):
        msg = (f"{target} already holds the prediction of {recorded}, not of {slide_path}; use another --out, "
               "rename the slide, or pass --overwrite to replace it")  # fmt: skip
        raise DataError(msg)
    return not probs or all(p.is_file() for p in prob_map_paths(target, classes))


class _TiffOutputs:
    """The pyramidal TIFF writers of one slide as :class:`~wsiseg.inference.slide.SlideOutputs`."""

    def __init__(self, sink: StitchSink) -> None:
        self.sink = sink

    def __call__(self, row_start: int, labels: np.ndarray, probs: np.ndarray | None) -> None:
        self.sink(row_start, labels, probs)

    def close(self) -> None:
        for w in self.sink.writers():
            w.close()

    def abort(self) -> None:
        for w in self.sink.writers():
            w.abort()
