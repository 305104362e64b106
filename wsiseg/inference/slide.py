"""Predict one whole slide: open it, plan the windows, run the model, stream into the outputs, all or nothing.

The outputs are whatever the caller opens for the plan (``wsiseg.export`` opens the pyramidal TIFF writers):
:func:`predict_slide` asks ``open_outputs`` for a :class:`SlideOutputs` once the plan and its provenance are
known, feeds it every finished row, then closes it, or aborts it if anything failed, so nothing appears at
the destination unless the whole slide succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from wsiseg import __version__
from wsiseg.inference.predictor import PredictPlan, PredictSettings, plan_prediction, run_prediction
from wsiseg.slide import open_slide
from wsiseg.tiling.geometry import TilingConfig

__all__ = ["SlideOutputs", "SlideResult", "predict_slide"]


class SlideOutputs(Protocol):
    """Where a slide's prediction goes: rows in, then closed (complete) or aborted (nothing left behind)."""

    def __call__(self, row_start: int, labels: np.ndarray, probs: np.ndarray | None) -> None:
        """Take finished rows: labels ``(n, width)`` uint8 and, when asked for, probabilities."""
        ...

    def close(self) -> None:
        """Finish every output (rename into place)."""
        ...

    def abort(self) -> None:
        """Remove every partial output."""
        ...


@dataclass(frozen=True)
class SlideResult:
    """What the prediction of one slide did."""

    plan: PredictPlan
    provenance: dict[str, Any]
    seconds: float


def predict_slide(
    slide_path: Path,
    model: nn.Module,
    *,
    tiling: TilingConfig,
    settings: PredictSettings,
    open_outputs: Callable[[PredictPlan, dict[str, Any]], SlideOutputs],
    backend: str = "auto",
    slide_mpp: float | None = None,
    provenance: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SlideResult:
    """Segment ``slide_path`` into the outputs ``open_outputs`` makes for its plan.

    Raises:
        SlideError: Unreadable slide or no tissue.
        ConfigError: The tiling defines windows in um and the slide has no mpp.
    """
    with open_slide(slide_path, backend=backend) as slide:
        plan = plan_prediction(slide, tiling, slide_mpp=slide_mpp, min_tissue=settings.min_tissue)
        prov = {
            "slide": str(slide_path), "slide_dimensions": list(slide.dimensions), "slide_mpp": plan.slide_mpp,
            "mpp_source": plan.mpp_source,
            "tiling": tiling.to_dict(), "window_level0": plan.window0, "stride_level0": plan.stride0,
            "windows_predicted": len(plan.origins), "wsiseg_version": __version__, **(provenance or {}),
        }  # fmt: skip
        if plan.stain_note:  # kept out of H&E slides' outputs, which stay as they were
            prov["stain_note"] = plan.stain_note
        outputs = open_outputs(plan, prov)
        try:
            stats = run_prediction(slide, model, plan, tiling, outputs, settings, progress=progress)
            outputs.close()
        except BaseException:
            outputs.abort()
            raise
    return SlideResult(plan, prov, stats["seconds"])
