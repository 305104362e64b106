"""``wsiseg predict --cluster/--scheduler``: a cohort on Dask shown in the terminal (the work: ``wsiseg.cohort``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsiseg.cohort.cluster import CohortOptions
    from wsiseg.cohort.jobs import SlideJob

__all__ = ["cohort_options", "predict_cohort"]


def cohort_options(
    cluster: str | None, scheduler: str | None, workers: int | None, retries: int, *, out: Path
) -> CohortOptions | None:
    """The cohort options of the flags (``None``: no Dask, the plain batch), checked before anything starts.

    Raises:
        ConfigError: Bad flags, or ``out`` is not a writable folder.
    """
    from wsiseg.cohort.cluster import CohortOptions, check_cohort_options
    from wsiseg.errors import ConfigError

    if cluster is None and scheduler is None:
        if workers is not None:
            msg = "--dask-workers goes with --cluster local, slurm or pbs"
            raise ConfigError(msg)
        return None
    opts = CohortOptions(cluster=cluster, scheduler=scheduler, workers=workers, retries=retries)
    check_cohort_options(opts, out)
    return opts


def predict_cohort(
    jobs: Sequence[SlideJob], opts: CohortOptions, *, overwrite: bool, device: str, export: bool = True
) -> None:
    """Run the cohort, with a progress bar of slides, then print the failures and exit like a batch.

    With ``export`` every worker exports the masks it predicts, and the cohort table and report are written
    at the end (``wsiseg.export.cohort``).

    Raises:
        typer.Exit: When any slide failed (:func:`wsiseg.cli._console.batch_exit`).
    """
    from rich.markup import escape

    from wsiseg.cli._console import batch_exit, console, make_progress
    from wsiseg.cohort.cluster import open_client
    from wsiseg.cohort.run import LOG_NAME, CohortProgress, run_cohort
    from wsiseg.cohort.worker import SlideOutcome

    out_dir = jobs[0].target.parent
    prov = jobs[0].provenance
    with open_client(opts) as client, make_progress("slides") as bar:
        task = bar.add_task("cohort", total=len(jobs))

        def show(progress: CohortProgress, outcome: SlideOutcome) -> None:
            bar.update(task, completed=progress.finished,
                       description=f"cohort (failed {progress.failed}, skipped {progress.skipped})")  # fmt: skip
            if outcome.status == "failed":
                bar.console.print(f"[bold red]failed:[/] {escape(outcome.reason)}", highlight=False, soft_wrap=True)

        summary = run_cohort(client, jobs, checkpoint=str(prov["checkpoint"]), checkpoint_id=str(prov["checkpoint_id"]),
                             device=device, overwrite=overwrite, export=export, retries=opts.retries,
                             out_dir=out_dir, on_progress=show)  # fmt: skip
    line = (f"cohort: {summary.count('done')} predicted, {summary.count('skipped')} already complete, "
            f"{len(summary.failed)} failed, in {summary.seconds:.1f} s; log in {out_dir / LOG_NAME}")  # fmt: skip
    console.print(escape(line), highlight=False)
    for o in summary.failed:
        console.print(f"  exit {o.exit_code}  {escape(Path(o.slide).name)}: {escape(o.reason)}", highlight=False,
                      soft_wrap=True)  # fmt: skip
    if export:
        _cohort_table(out_dir, {Path(o.target).stem: (o.exit_code, o.reason) for o in summary.failed})
    batch_exit([o.exit_code for o in summary.failed], len(jobs))


def _cohort_table(out_dir: Path, failures: dict[str, tuple[int, str]]) -> None:
    """Write the cohort table and report (``wsiseg.export.cohort``); a failure there is a warning."""
    from rich.markup import escape

    from wsiseg.cli._console import console
    from wsiseg.errors import WsisegError
    from wsiseg.export.cohort import build_cohort_table, write_cohort_table
    from wsiseg.export.cohort_report import write_cohort_report

    try:
        rows = build_cohort_table(out_dir, failures=failures)
        files = [*write_cohort_table(rows, out_dir), write_cohort_report(rows, out_dir)]
    except (WsisegError, OSError) as err:
        console.print(f"[bold yellow]warning:[/] cohort table not written: {escape(str(err))}", highlight=False)
        return
    console.print(f"cohort table and report: {escape(', '.join(str(p) for p in files))}", highlight=False)
