"""``wsiseg info``: print what a slide reader sees (size, levels, mpp, vendor, associated images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["info"]


def _fmt_mpp(mpp: list[float] | None) -> str:
    if mpp is None:
        return "[yellow]unknown[/] (pass --slide-mpp UM_PER_PX to tile and predict)"
    return f"{mpp[0]:.4f} x {mpp[1]:.4f} µm/px"


def _table(facts: dict[str, Any]) -> Any:
    """Build a rich table for one slide's ``Slide.info()`` dict."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    width, height = facts["dimensions"]
    levels = "\n".join(
        f"{lv['level']}: {lv['dimensions'][0]} x {lv['dimensions'][1]}  (downsample {lv['downsample']:g})"
        for lv in facts["levels"]
    )
    objective = facts["objective_power"]
    rows = [
        ("path", escape(facts["path"])),
        ("backend", facts["backend"]),
        ("vendor", facts["vendor"] or "-"),
        ("dimensions", f"{width} x {height} px"),
        ("levels", f"{facts['level_count']}\n[dim]{levels}[/]"),
        ("mpp", _fmt_mpp(facts["mpp"])),
        ("objective", "-" if objective is None else f"{objective:g}x"),
        ("associated", escape(", ".join(facts["associated_images"]) or "-")),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def info(
    slides: Annotated[
        list[Path],
        typer.Argument(help="Slide files or DICOM-WSI folders.", show_default=False),
    ],
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON list to stdout instead of tables.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="Reader: auto, openslide, tiffslide or pillow.")] = "auto",
) -> None:
    """Show dimensions, pyramid levels, mpp, objective and associated images of slides.

    A slide that cannot be read is reported on one line and the others are still shown; the
    exit code is 1 when any slide failed.
    """
    from rich.markup import escape

    from wsiseg.cli._console import batch_exit, console, stdout
    from wsiseg.errors import ConfigError, SlideError
    from wsiseg.slide import BACKEND_NAMES, open_slide

    if backend not in BACKEND_NAMES:
        msg = f"unknown --backend {backend!r}; use one of {', '.join(BACKEND_NAMES)}"
        raise ConfigError(msg)
    results: list[dict[str, Any]] = []
    failed: list[int] = []
    for path in slides:
        try:
            with open_slide(path, backend=backend) as slide:
                facts = slide.info()
        except SlideError as err:
            failed.append(err.exit_code)
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            continue
        results.append(facts)
        if not json_:
            console.print(_table(facts))
    if json_:
        stdout.out(json.dumps(results, indent=2), highlight=False)
    batch_exit(failed, len(slides))
