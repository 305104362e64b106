"""Whole-slide prediction: plan the tissue windows, run the model, stream probabilities into the stitcher.

The writer of finished rows is injected (a ``RowSink``), so this package stays independent of the output
format; ``wsiseg.export.slide_mask`` connects it to the pyramidal mask TIFF.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from wsiseg.errors import SlideError
from wsiseg.inference.reader import WindowDataset
from wsiseg.inference.stitching import BandStitcher, RowSink, StitchGeometry, stitch_geometry
from wsiseg.slide import Slide
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.plan import plan_windows
from wsiseg.tiling.window import ReadPlan, plan_reads

__all__ = [
    "CPU_BATCH",
    "GPU_BATCH",
    "PredictPlan",
    "PredictSettings",
    "cpu_threads",
    "default_batch_size",
    "plan_prediction",
    "run_prediction",
]


@dataclass(frozen=True)
class PredictSettings:
    """How to run the model.

    Attributes:
        batch_size: Windows per forward pass (None: :func:`default_batch_size` of the device, 16 on CUDA and 2
            on CPU, where every window in the batch adds its activations to the process's memory).
        workers: Reader processes (0 reads in this process).
        device: Torch device string.
        amp: bf16 autocast on CUDA.
        channels_last: channels_last inputs on CUDA.
        emit_probs: Also stream per-class probabilities to the sink.
        min_tissue: Tissue fraction a window needs to be predicted (others are background).
        strips: Read tiled TIFF/SVS levels in strips, each stored tile decoded once per reader process
            (False: one ``read_region`` per window; same pixels, see ``wsiseg.slide.strips``).
        threads: torch threads for a CPU forward pass (None: :func:`cpu_threads`, the cores the reader
            processes leave free; the previous setting is restored afterwards).
        gpu_decode: On CUDA, decode the level's stored JPEG tiles on the device (nvJPEG through
            ``torchvision.io.decode_jpeg``, one batch per strip) while reading in the main process; the
            CPU path is kept, with one log line saying why, for other devices, codecs and colour spaces.
    """

    batch_size: int | None = None
    workers: int = 0
    device: str = "cpu"
    amp: bool = True
    channels_last: bool = True
    emit_probs: bool = False
    min_tissue: float = 0.1
    strips: bool = True
    threads: int | None = None
    gpu_decode: bool = False


_log = logging.getLogger(__name__)

#: Default windows per forward pass on CUDA and on CPU.
GPU_BATCH, CPU_BATCH = 16, 2


def default_batch_size(device: str) -> int:
    """Windows per forward pass when none is given: 16 on CUDA, 2 on CPU.

    On CPU the activations of every window of a batch sit in the process's memory (``dhunet_tiny``: about
    20 MiB per 224 px window, which took ``wsiseg predict`` past 1 GiB at batch 16), and a larger batch is not
    faster there (one torch thread, measured in one run: 15.9, 16.3, 16.5 and 14.2 windows per CPU-second at
    batch 1, 2, 4 and 16, ``benchmarks/RESULTS.md``); on a GPU a batch keeps the device busy.

    >>> default_batch_size("cpu"), default_batch_size("cuda:0")
    (2, 16)
    """
    return GPU_BATCH if device.startswith("cuda") else CPU_BATCH


def cpu_threads(workers: int, cores: int | None = None, limit: int | None = None) -> int:
    """Torch threads for a CPU forward pass beside ``workers`` reader processes: the cores they leave, at least 1.

    More threads than free cores make OpenMP spin against the readers (2.5x fewer windows per CPU-second
    with 2 threads and 2 readers on 2 cores than with 1 thread, ``benchmarks/RESULTS.md``). Never more than
    ``limit`` (default: torch's current thread count, which follows ``OMP_NUM_THREADS`` and
    ``torch.set_num_threads``), so a process told to use fewer threads keeps to them.

    >>> cpu_threads(2, cores=2, limit=2), cpu_threads(2, cores=16, limit=16), cpu_threads(0, cores=4, limit=1)
    (1, 14, 1)
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if limit is None:
        limit = torch.get_num_threads()
    return max(1, min(limit, cores - workers))


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: leave them), then restore the previous count."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class PredictPlan:
    """Where the windows are and what the mask will look like."""

    geometry: StitchGeometry
    window0: int
    stride0: int
    level: int
    read_size: int
    origins: list[tuple[int, int]]
    n_grid: int
    slide_mpp: float | None
    mpp_source: str = "unknown"
    #: Why the slide does not look like brightfield H&E (fluorescence, another stain), else "".
    stain_note: str = ""

    @property
    def mask_mpp(self) -> float | None:
        """um/px of the model-resolution mask."""
        return None if self.slide_mpp is None else self.slide_mpp / self.geometry.scale


def plan_prediction(
    slide: Slide, tiling: TilingConfig, *, slide_mpp: float | None = None, min_tissue: float | None = None
) -> PredictPlan:
    """Lay the training grid over the slide and keep the tissue windows.

    Raises:
        ConfigError: The card defines windows in um but the slide has no mpp (pass ``slide_mpp``).
        SlideError: No window has enough tissue.
    """
    plan = plan_windows(slide, tiling, slide_mpp=slide_mpp, min_tissue=min_tissue)
    origins = [(x, y) for x, y, _ in plan.kept]
    if not origins:
        msg = f"{slide.path}: no window of {len(plan.grid)} has {plan.threshold:.0%} tissue; nothing to predict"
        raise SlideError(msg)
    geometry = stitch_geometry(*slide.dimensions, plan.window0, plan.stride0, tiling.size)
    return PredictPlan(geometry, plan.window0, plan.stride0, plan.level, plan.read, origins, len(plan.grid),
                       plan.mpp, plan.mpp_source, plan.stain_note)  # fmt: skip


@torch.no_grad()
def run_prediction(
    slide: Slide,
    model: nn.Module,
    plan: PredictPlan,
    tiling: TilingConfig,
    sink: RowSink,
    settings: PredictSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Predict every planned window and stream the blended result into ``sink``.

    Returns:
        Timing facts: windows, seconds, windows per second.
    """
    geo = plan.geometry
    num_classes = int(getattr(model, "num_classes", 0)) or _probe_classes(model, tiling.size, settings.device)
    stitcher = BandStitcher(geo.width, geo.height, geo.window, geo.stride, num_classes, sink,
                            emit_probs=settings.emit_probs)  # fmt: skip
    reads = plan_reads(slide, plan.level, strips=settings.strips)
    workers = settings.workers
    if settings.gpu_decode:
        reads = _gpu_decode_plan(reads, settings.device)
        workers = 0 if reads.decoder == "cuda" else workers  # CUDA is not usable in DataLoader workers
    ds = WindowDataset(slide, plan.origins, plan.level, plan.read_size, tiling.size, tiling.resize, reads)
    cuda = settings.device.startswith("cuda")
    batch = settings.batch_size or default_batch_size(settings.device)
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=cuda,
                        persistent_workers=False)  # fmt: skip
    model.eval()
    threads = None if cuda else (settings.threads or cpu_threads(settings.workers))
    with _torch_threads(threads):
        done, seconds = _predict_windows(model, loader, plan, stitcher, settings, progress)
    return {"windows": float(done), "seconds": seconds, "windows_per_s": done / seconds if seconds else 0.0}


def _gpu_decode_plan(reads: ReadPlan, device: str) -> ReadPlan:
    """``reads`` with the CUDA JPEG decoder when the device and the level allow it; logs the choice once."""
    from wsiseg.slide.jpeg_batch import choose_decoder

    if not device.startswith("cuda"):
        decoder, message = "cpu", f"JPEG decoding: the device is {device}, not CUDA; falling back to the CPU path"
    else:
        decoder, message = choose_decoder(reads.layout if reads.layout is not None else reads.reason, "cuda")
    (_log.info if decoder == "cuda" else _log.warning)("%s", message)
    return replace(reads, decoder=decoder)


def _predict_windows(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    plan: PredictPlan,
    stitcher: BandStitcher,
    settings: PredictSettings,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, float]:
    """The forward loop: every batch through the model into the stitcher; returns ``(windows, seconds)``."""
    geo = plan.geometry
    cuda = settings.device.startswith("cuda")
    start, done = time.perf_counter(), 0
    for images, indices in loader:
        images = images.to(settings.device, non_blocking=True)
        if cuda and settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and settings.amp):
            logits = model(images)
        if isinstance(logits, list | tuple):
            logits = logits[0]
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        for p, i in zip(probs, indices.tolist(), strict=True):
            x0, y0 = plan.origins[i]
            stitcher.add(geo.to_output(x0), geo.to_output(y0), np.ascontiguousarray(p, dtype=np.float32))
        done += len(indices)
        if progress:
            progress(done, len(plan.origins))
    stitcher.finish()
    return done, time.perf_counter() - start


def _probe_classes(model: nn.Module, size: int, device: str) -> int:
    model.eval()
    out = model(torch.zeros(1, 3, size, size, device=device))
    return int((out[0] if isinstance(out, list | tuple) else out).shape[1])
