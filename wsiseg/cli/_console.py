"""Shared Rich console (stderr) and progress helpers for the CLI."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["RateColumn", "console", "given", "make_progress", "stdout"]


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``123.4 windows/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        """Render the task's current speed."""
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"  ? {self.unit}/s", style="cyan")
        return Text(f"{speed:7.1f} {self.unit}/s", style="cyan")


#: Messages, tables and progress go to stderr so stdout stays clean for ``--json`` output.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
#: Machine-readable output (JSON) goes to stdout.
stdout = Console(soft_wrap=True, highlight=False)


def make_progress(unit: str = "it") -> Progress:
    """Return a Rich progress bar with count, rate and ETA columns.

    Args:
        unit: Name of the counted item, shown after the rate (``"windows"``, ``"img"``...).
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def merged_model_args(base: dict[str, Any], norm: str | None, img_size: int | None) -> dict[str, Any]:
    """The config file's ``model_args`` updated with ``--norm`` / ``--img-size`` where the user gave them."""
    flags = {"norm": norm, "img_size": img_size}
    return {**base.get("model_args", {}), **{k: v for k, v in flags.items() if v}}


def given(ctx: Any, name: str) -> bool:
    """True when the user set option ``name`` on the command line (not left at its default)."""
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def batch_exit(failure_codes: list[int], total: int) -> None:
    """End a batch command: exit 0 if nothing failed, else a code scripts can rely on.

    Some items failed and others were done: 1. Every item failed: the failures' own exit code when they agree
    (3 for unreadable slides, 7 for a bad checkpoint...), else 1.

    Raises:
        typer.Exit: When any item failed.
    """
    import typer

    if not failure_codes:
        return
    codes = set(failure_codes)
    if len(failure_codes) >= total and len(codes) == 1:
        raise typer.Exit(codes.pop())
    raise typer.Exit(1)
