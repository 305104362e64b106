"""Run a cohort on a Dask cluster: one task per unfinished slide, progress for the whole cohort, a summary.

:func:`run_cohort` first skips every slide whose mask is complete (a rerun, or a second cluster after the
first, redoes only missing or partial ones), then submits one :func:`wsiseg.cohort.worker.predict_task` per
remaining slide with ``retries`` and collects the outcomes as they finish. A slide whose worker died more
often than the scheduler allows (``KilledWorker``) or that raised unexpectedly is reported failed; bad slides
never stop the cohort. Only a read-only or full output disk stops it (every later slide would fail too).

Progress (slides done, failed, skipped, rate, ETA) goes to a callback and, as plain lines, to ``cohort.log``
in the output folder; every start of a slide on a worker is logged too, so a retry shows as a second start.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from wsiseg.cohort.jobs import SlideJob
from wsiseg.cohort.worker import EVENT_TOPIC, SlideOutcome, predict_task
from wsiseg.errors import StorageError, WsisegError, from_os_error
from wsiseg.fileio import atomic_write_text

__all__ = ["LOG_NAME", "SUMMARY_NAME", "CohortProgress", "CohortSummary", "run_cohort"]

#: The progress log, appended to in the output folder.
LOG_NAME = "cohort.log"
#: The per-slide summary of the last run, written atomically in the output folder.
SUMMARY_NAME = "cohort_summary.json"
#: Exit code of a slide whose worker died on every attempt, or that raised an unexpected error.
WORKER_LOST_CODE = 1


@dataclass
class CohortProgress:
    """Counts of a running cohort and the rate and ETA they give."""

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        """Slides with an outcome (done, failed or skipped)."""
        return self.done + self.failed + self.skipped

    def rate(self) -> float:
        """Slides predicted or failed per hour since the start (skipped ones cost nothing and do not count)."""
        hours = (time.monotonic() - self.started) / 3600
        return (self.done + self.failed) / hours if hours > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds until every slide has an outcome at the current rate, or ``None`` before the first."""
        rate = self.rate()
        return (self.total - self.finished) / rate * 3600 if rate > 0 else None

    def line(self) -> str:
        """One plain line: ``8/10 done 6 failed 1 skipped 1 | 120.0 slides/h | ETA 0:01:00``."""
        eta = self.eta_s()
        eta_text = "?" if eta is None else _clock(eta)
        return (f"{self.finished}/{self.total} done {self.done} failed {self.failed} skipped {self.skipped} | "
                f"{self.rate():.1f} slides/h | ETA {eta_text}")  # fmt: skip


@dataclass
class CohortSummary:
    """The outcome of every slide of a cohort run, in batch order."""

    outcomes: list[SlideOutcome]
    seconds: float

    def count(self, status: str) -> int:
        """Slides with this status (``done``, ``skipped``, ``failed``)."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[SlideOutcome]:
        """The failed slides."""
        return [o for o in self.outcomes if o.status == "failed"]


class _Log:
    """Plain lines with a UTC time stamp, appended and flushed one by one (a non-TTY log shows them as they come).

    Outcomes are written from the calling thread and task events from the client's event thread: a lock keeps
    lines whole, and a line that comes after :meth:`close` is dropped. The log is a record, not the work: when
    the disk refuses a line (full), logging stops and the cohort goes on (its slides report the fault).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: TextIO = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def __call__(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.lock:
            if self.fh.closed:
                return
            try:
                self.fh.write(f"{stamp} {text}\n")
                self.fh.flush()
            except OSError:
                with contextlib.suppress(OSError):
                    self.fh.close()

    def close(self) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.fh.close()


def run_cohort(
    client: Any,
    jobs: Sequence[SlideJob],
    *,
    checkpoint: str,
    checkpoint_id: str,
    device: str = "auto",
    overwrite: bool = False,
    export: bool = False,
    retries: int = 2,
    out_dir: Path,
    on_progress: Callable[[CohortProgress, SlideOutcome], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> CohortSummary:
    """Predict every unfinished slide of ``jobs`` on the cluster of ``client`` (see the module docstring).

    Args:
        client: A ``distributed.Client``.
        jobs: One job per slide (:func:`wsiseg.cohort.jobs.plan_jobs`).
        checkpoint: The checkpoint path, on storage every worker sees.
        checkpoint_id: Its id; workers refuse weights that changed since.
        device: Device request for the workers (``auto`` spreads them over the GPUs).
        overwrite: Predict even the slides whose mask is complete.
        export: Export each new mask on its worker too (overlay, GeoJSON, areas CSV beside the mask).
        retries: Times an unexpected error is retried (worker deaths: the scheduler's ``allowed-failures``).
        out_dir: The output folder (``cohort.log`` and ``cohort_summary.json`` go there).
        on_progress: Called after every outcome with the counts and the outcome.
        on_event: Called (on the client's event thread) with every event a task reports (``started``).

    Returns:
        The summary, in batch order.

    Raises:
        StorageError: The output disk is read-only or full (the cohort stopped; finished masks are kept).
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    start = time.monotonic()
    log = _Log(out_dir / LOG_NAME)
    progress = CohortProgress(total=len(jobs))
    results: dict[int, SlideOutcome] = {}

    def note(i: int, outcome: SlideOutcome) -> None:
        results[i] = outcome
        setattr(progress, outcome.status, getattr(progress, outcome.status) + 1)
        why = f" exit {outcome.exit_code}: {outcome.reason}" if outcome.status == "failed" else ""
        log(f"{outcome.status} {jobs[i].name}{why}")
        log(f"progress {progress.line()}")
        if on_progress:
            on_progress(progress, outcome)

    def event(message: tuple[float, dict[str, Any]]) -> None:
        msg = message[1]
        log(f"{msg.get('event')} {Path(str(msg.get('slide'))).name} on worker {msg.get('name')} "
            f"({msg.get('worker')}, pid {msg.get('pid')})")  # fmt: skip
        if on_event:
            on_event(msg)

    log(f"cohort of {len(jobs)} slides on {_where(client)}")
    try:
        client.subscribe_topic(EVENT_TOPIC, event)
        todo = [i for i, job in enumerate(jobs) if not _finished_here(i, job, overwrite, note)]
        run = uuid.uuid4().hex[:8]
        kwargs = {"checkpoint": checkpoint, "checkpoint_id": checkpoint_id, "device": device, "overwrite": overwrite,
                  "export": export}  # fmt: skip
        futures = {client.submit(predict_task, jobs[i], key=f"wsiseg-predict-{run}-{i}", retries=retries,
                                 pure=False, **kwargs): i for i in todo}  # fmt: skip
        for fut in as_completed(list(futures)):
            i = futures[fut]
            try:
                outcome = fut.result()
            except KilledWorker as err:
                outcome = _lost(jobs[i], f"its worker died on every attempt ({err})")
            except Exception as err:  # an error outside wsiseg's own: reported for this slide, the cohort goes on
                outcome = _lost(jobs[i], f"{type(err).__name__}: {err} (after {retries} retries)")
            note(i, outcome)
            if outcome.fatal:
                for other in futures:
                    other.cancel()
                msg = f"{outcome.reason} (cohort stopped; finished masks are kept; rerun to continue)"
                raise StorageError(msg)
    finally:
        with contextlib.suppress(ValueError):  # not subscribed (the subscription itself failed)
            client.unsubscribe_topic(EVENT_TOPIC)
        log.close()
    summary = CohortSummary([results[i] for i in sorted(results)], time.monotonic() - start)
    atomic_write_text(out_dir / SUMMARY_NAME, json.dumps([asdict(o) for o in summary.outcomes], indent=1) + "\n")
    return summary


def _finished_here(i: int, job: SlideJob, overwrite: bool, note: Callable[[int, SlideOutcome], None]) -> bool:
    """Settle a slide without the cluster when it can be: complete already, or refused (clash); else False."""
    base = SlideOutcome(str(job.slide), str(job.target), "skipped")
    try:
        if overwrite:
            job.check_clash()
            return False
        if not job.done():
            return False
        note(i, base)
    except (WsisegError, OSError) as raw:
        err = from_os_error(raw, job.target) if isinstance(raw, OSError) else raw
        note(i, replace(base, status="failed", reason=str(err), exit_code=err.exit_code))
    return True


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (hours unbounded)."""
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _lost(job: SlideJob, reason: str) -> SlideOutcome:
    return SlideOutcome(str(job.slide), str(job.target), "failed", f"{job.slide}: {reason}", WORKER_LOST_CODE)


def _where(client: Any) -> str:
    info = client.scheduler_info()
    return f"{len(info.get('workers', {}))} workers of scheduler {info.get('address', '?')}"
