"""One slide of a ``wsiseg predict`` batch as a picklable job: the same code runs in the CLI and on a Dask worker.

:class:`SlideJob` holds everything the prediction of one slide needs except the model (the slide, its mask
path, the card's tiling and classes, the run settings, the provenance); :meth:`SlideJob.done` says whether a
finished prediction is already there (a rerun skips it) and :meth:`SlideJob.run` writes it through
:func:`wsiseg.export.slide_mask.predict_to_tiff`, atomically. The plain batch loop of ``wsiseg predict`` and the
Dask task of :mod:`wsiseg.cohort.worker` both call these two methods, so a mask predicted on a cluster is
byte-identical to one predicted in a single process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.export.slide_mask import SlidePrediction, predict_to_tiff, prediction_done
from wsiseg.inference.predictor import PredictSettings
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.writer import batch_ids

__all__ = ["SlideJob", "plan_jobs"]


@dataclass(frozen=True)
class SlideJob:
    """The prediction of one slide into one mask, minus the model.

    Attributes:
        slide: The slide file.
        target: Its ``mask.tif``.
        tiling: The checkpoint card's tiling settings.
        classes: The checkpoint card's class table.
        settings: Batch size, reader processes, device, tissue threshold.
        backend: Slide reader (``auto``, ``openslide``, ``tiffslide``, ``pillow``).
        slide_mpp: ``--slide-mpp`` (a ``ForcedMpp`` with ``--override-mpp``), or ``None``.
        ome: OME-TIFF with a SubIFD pyramid.
        probs: Also write per-class probability maps.
        provenance: Extra facts for the mask's metadata (checkpoint id, card digest, privacy).
        clash: Another slide of the batch that would be predicted into the same ``target`` (refused).
    """

    slide: Path
    target: Path
    tiling: TilingConfig
    classes: ClassTable
    settings: PredictSettings
    backend: str = "auto"
    slide_mpp: float | None = None
    ome: bool = False
    probs: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    clash: Path | None = None

    @property
    def name(self) -> str:
        """The slide's file name (for tables and logs)."""
        return self.slide.name

    def done(self) -> bool:
        """True when ``target`` already holds a finished prediction of this slide (scratch of a killed run removed).

        Raises:
            DataError: The slide clashes with another of the batch, or ``target`` holds another slide's mask.
        """
        self.check_clash()
        return prediction_done(self.target, self.slide, self.classes, probs=self.probs)

    def check_clash(self) -> None:
        """Refuse a slide whose mask name another slide of the batch takes too.

        Raises:
            DataError: Naming both slides and the shared target.
        """
        if self.clash is not None:
            msg = (f"{self.slide} and {self.clash} would both be predicted into {self.target}; "
                   "rename one of them or predict them into separate --out folders")  # fmt: skip
            raise DataError(msg)

    def run(
        self,
        model: nn.Module,
        *,
        settings: PredictSettings | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SlidePrediction:
        """Predict the slide into ``target``; nothing appears there unless the whole slide succeeded.

        Args:
            model: The checkpoint's model, on ``settings.device``.
            settings: Run settings to use instead of the job's own (a Dask worker picks its own device).
            progress: Called with ``(windows done, windows)``.

        Raises:
            SlideError: Unreadable slide or no tissue.
            ConfigError: The card defines windows in um and the slide has no mpp.
            DataError: The slide clashes with another of the batch.
        """
        self.check_clash()
        return predict_to_tiff(
            self.slide, model, self.target, tiling=self.tiling, classes=self.classes,
            settings=settings or self.settings, backend=self.backend, slide_mpp=self.slide_mpp, ome=self.ome,
            probs=self.probs, provenance=self.provenance, progress=progress,
        )  # fmt: skip


def plan_jobs(sources: Sequence[Path], out: Path, *, single: bool = False, **common: Any) -> list[SlideJob]:
    """One job per slide: masks named by :func:`wsiseg.tiling.writer.batch_ids` under the ``out`` folder.

    Args:
        sources: The slides, in batch order.
        out: The output folder, or the mask path itself when ``single``.
        single: One slide predicted into the file ``out``.
        **common: The :class:`SlideJob` fields shared by every slide (tiling, classes, settings, ...).
    """
    ids, clashes = batch_ids(sources)
    return [SlideJob(src, out if single else out / f"{ids[src]}.tif", clash=clashes.get(src), **common)
            for src in sources]  # fmt: skip
