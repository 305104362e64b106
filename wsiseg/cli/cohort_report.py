"""``wsiseg cohort-report``: the cohort table (CSV + Parquet) and a static HTML report of a prediction folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["cohort_report"]

_EXPORT_HELP = "Folder of `wsiseg export` outputs (default PRED_DIR); masks not exported yet are exported there."
_OUT_HELP = "Folder for cohort.csv, cohort.parquet and cohort.html (default: the export folder)."


def cohort_report(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of masks from `wsiseg predict` (its --out).")],
    export_dir: Annotated[Path | None, typer.Option(help=_EXPORT_HELP)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=_OUT_HELP)] = None,
    min_tissue_mm2: Annotated[float, typer.Option(help="Flag slides with less tissue than this (mm^2).")] = 1.0,
    title: Annotated[str, typer.Option(help="Title of the HTML page.")] = "wsiseg cohort report",
) -> None:
    """One row per slide (class areas, tumour-stroma ratio, QC flags, provenance) and a page to browse them.

    The slides that a cohort run (``wsiseg predict --cluster``) failed, listed in its ``cohort_summary.json``,
    get a failed row with their reason and exit code.
    """
    from rich.markup import escape

    from wsiseg.cli._console import console
    from wsiseg.errors import ConfigError
    from wsiseg.export.cohort import (
        build_cohort_table,
        failures_from_summary,
        find_masks,
        missing_exports,
        write_cohort_table,
    )
    from wsiseg.export.cohort_report import write_cohort_report

    if not pred_dir.is_dir():
        msg = f"{pred_dir}: no such folder; pass the --out folder of 'wsiseg predict'"
        raise ConfigError(msg)
    failures = failures_from_summary(pred_dir)  # the slides a cohort run (predict --cluster) could not do
    if not find_masks(pred_dir) and not failures:
        msg = f"{pred_dir} holds no mask.tif written by 'wsiseg predict' (with its .json sidecar); check the folder"
        raise ConfigError(msg)
    export_dir = export_dir or pred_dir
    out = out or export_dir
    if missing_exports(pred_dir, export_dir):  # only then is the export folder written to
        _check_writable(export_dir, "--export-dir")
    _check_writable(out, "--out")
    if min_tissue_mm2 < 0:
        msg = f"--min-tissue-mm2 must be >= 0, got {min_tissue_mm2}"
        raise ConfigError(msg)
    with console.status("reading (and exporting) the masks"):
        rows = build_cohort_table(pred_dir, export_dir=export_dir, failures=failures, min_tissue_mm2=min_tissue_mm2)
    files = [*write_cohort_table(rows, out), write_cohort_report(rows, out, title=title)]
    failed = [r for r in rows if r["failed"]]
    flagged = sum(1 for r in rows if r["qc"] and not r["failed"])
    console.print(f"{len(rows)} slide(s): {len(rows) - len(failed)} ok, {len(failed)} failed, {flagged} with QC "
                  "flags", highlight=False)  # fmt: skip
    for row in failed:
        console.print(f"[bold yellow]failed:[/] {escape(str(row['slide']))}: {escape(str(row['failure']))}",
                      highlight=False, soft_wrap=True)  # fmt: skip
    for path in files:
        console.print(f"wrote {escape(str(path))}", highlight=False)


def _check_writable(folder: Path, flag: str) -> None:
    """Fail at once (exit 2) when ``folder`` cannot be made or written, before any slide is read."""
    from wsiseg.errors import ConfigError

    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        msg = f"{flag} {folder}: {existing} is a file, not a folder; pass a folder"
        raise ConfigError(msg)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        msg = f"{flag} {folder}: {existing} is not writable; pass a folder you can write to"
        raise ConfigError(msg)
