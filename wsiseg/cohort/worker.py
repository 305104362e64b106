"""What runs on a Dask worker: one task per slide, with the model loaded once per worker process.

:func:`predict_task` is the task. It reports ``started`` to the scheduler (topic :data:`EVENT_TOPIC`: the
slide, the worker's name and address, its pid), skips a slide that a previous attempt or another cluster
already finished, takes the model from the process-wide cache (:func:`worker_model`, keyed by checkpoint id
and device; the weights are checked against the id the cohort started with), predicts through
:meth:`wsiseg.cohort.jobs.SlideJob.run` and returns a :class:`SlideOutcome`. A bad slide is an outcome
(``failed``, its reason and exit code), never an exception, so the scheduler does not retry what would fail
again; only a worker that dies (out of memory, a crash in a slide reader) or an unexpected exception makes the
scheduler run the slide again, a bounded number of times.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from wsiseg.cohort.jobs import SlideJob
from wsiseg.errors import CheckpointError, WsisegError, from_os_error, is_fatal_storage_error

__all__ = ["EVENT_TOPIC", "FINISHED_EARLIER", "SlideOutcome", "model_loads", "predict_task", "worker_model"]

#: The Dask event topic on which tasks report the slide they start (and where).
EVENT_TOPIC = "wsiseg-cohort"

#: The ``reason`` of a slide found complete on the worker: its worker died after the mask was in place (the
#: scheduler ran it again), or another cluster finished it meanwhile.
FINISHED_EARLIER = "complete already when this attempt started (an earlier attempt or another cluster wrote it)"

_MODELS: dict[tuple[str, str], nn.Module] = {}
_LOCK = threading.Lock()
_LOADS = [0]


@dataclass(frozen=True)
class SlideOutcome:
    """What became of one slide of a cohort.

    Attributes:
        slide: The slide path.
        target: Its mask path.
        status: ``done`` (predicted in this run), ``skipped`` (complete before the run) or ``failed``.
        reason: Why it failed (one line); for ``done``, :data:`FINISHED_EARLIER` or ``""``.
        exit_code: The exit code the CLI gives this failure for a single slide (0 unless failed).
        fatal: The failure (read-only or full disk) would hit every later slide too.
        seconds: Time spent predicting it.
        windows: Windows predicted.
        width: Mask width (px).
        height: Mask height (px).
        mask_mpp: um/px of the mask, or ``None``.
        mpp_source: Where the slide's mpp came from (``slide``, ``assumed``, ``override``, ``unknown``).
        worker: The Dask worker that ran it (``""`` in process).
        pid: That worker's process id.
        model_loads: How many models that process had loaded by then.
    """

    slide: str
    target: str
    status: str
    reason: str = ""
    exit_code: int = 0
    fatal: bool = False
    seconds: float = 0.0
    windows: int = 0
    width: int = 0
    height: int = 0
    mask_mpp: float | None = None
    mpp_source: str = ""
    worker: str = ""
    pid: int = 0
    model_loads: int = 0


def model_loads() -> int:
    """How many models this process has loaded into its cache."""
    return _LOADS[0]


def worker_model(checkpoint: str, checkpoint_id: str, device: str) -> nn.Module:
    """The checkpoint's model on ``device``, loaded once per process and kept.

    Raises:
        CheckpointError: The weights at ``checkpoint`` are no longer the ones the cohort started with.
    """
    from wsiseg.inference.provenance import file_sha256
    from wsiseg.train.checkpoint import checkpoint_paths, load_checkpoint

    key = (checkpoint_id, device)
    with _LOCK:
        if key not in _MODELS:
            weights = checkpoint_paths(checkpoint)[0]
            found = file_sha256(weights)[:16] if weights.is_file() else "missing"
            if found != checkpoint_id:
                msg = (f"{weights}: the weights changed since the cohort started (id {found}, expected "
                       f"{checkpoint_id}); restore them or start the cohort again")  # fmt: skip
                raise CheckpointError(msg)
            net = load_checkpoint(checkpoint).build_model()
            _MODELS[key] = net.to(device).eval()
            _LOADS[0] += 1
        return _MODELS[key]


def predict_task(
    job: SlideJob, *, checkpoint: str, checkpoint_id: str, device: str, overwrite: bool, export: bool = False
) -> SlideOutcome:
    """Predict one slide of a cohort on this worker (see the module docstring).

    Args:
        job: The slide and its settings.
        checkpoint: The checkpoint path (on storage every worker sees).
        checkpoint_id: Its id (:func:`wsiseg.inference.provenance.checkpoint_provenance`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``auto`` and ``cuda`` spread workers over the GPUs.
        overwrite: Predict even when a finished mask is there.
        export: Then export the new mask beside it (overlay PNG, GeoJSON, areas CSV), as ``wsiseg export`` does.
    """
    worker, pid = _report_start(job)
    base = SlideOutcome(str(job.slide), str(job.target), "started", worker=worker, pid=pid)
    start = time.perf_counter()
    try:
        if not overwrite and job.done():  # the cohort checked before submitting: an earlier attempt finished it
            return replace(base, status="done", reason=FINISHED_EARLIER, model_loads=model_loads())
        dev = _device(device, worker)
        net = worker_model(checkpoint, checkpoint_id, dev)
        readers = 0 if multiprocessing.current_process().daemon else job.settings.workers  # no children allowed
        # torch threads: the worker's own share (Dask starts workers with OMP_NUM_THREADS=1), not every core
        threads = job.settings.threads or torch.get_num_threads()
        res = job.run(net, settings=replace(job.settings, device=dev, workers=readers, threads=threads))
        if export:
            from wsiseg.export.report import export_mask

            export_mask(job.target, job.target.parent, slide=job.slide)
    except (WsisegError, OSError) as raw:
        err = from_os_error(raw, job.target) if isinstance(raw, OSError) else raw
        return replace(base, status="failed", reason=str(err), exit_code=err.exit_code,
                            fatal=is_fatal_storage_error(err), seconds=time.perf_counter() - start,
                            model_loads=model_loads())  # fmt: skip
    return replace(base, status="done", seconds=time.perf_counter() - start, windows=res.windows, width=res.width,
                        height=res.height, mask_mpp=res.mask_mpp, mpp_source=res.mpp_source,
                        model_loads=model_loads())  # fmt: skip


def _report_start(job: SlideJob) -> tuple[str, int]:
    """Tell the scheduler which slide this worker starts; returns ``(worker name, pid)``."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a Dask worker
        return "", os.getpid()
    name = str(worker.name)
    # Dask sets the message's "worker" to the worker's address; "name" is the worker's name in its cluster
    msg: dict[str, Any] = {"event": "started", "slide": str(job.slide), "name": name, "pid": os.getpid()}
    worker.log_event(EVENT_TOPIC, msg)
    return name, os.getpid()


def _device(device: str, worker: str) -> str:
    """The device of this worker: ``auto`` and ``cuda`` take GPU ``worker index % GPUs`` (one worker per GPU)."""
    from wsiseg.config import resolve_device

    dev = resolve_device(device)
    if dev == "cuda" and torch.cuda.device_count() > 1:
        index = int(worker) if worker.isdigit() else 0
        dev = f"cuda:{index % torch.cuda.device_count()}"
    return dev
