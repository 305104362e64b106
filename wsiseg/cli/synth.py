"""``wsiseg synth``: write a synthetic H&E cohort (Aperio-style slides, masks, cohort.csv)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from wsiseg.cli._console import console, make_progress
from wsiseg.errors import ConfigError

__all__ = ["synth"]


def synth(
    out: Annotated[Path, typer.Argument(help="Output folder for slides, masks and cohort.csv.")],
    n: Annotated[int, typer.Option("--n", help="Number of slides.")] = 6,
    width: Annotated[int, typer.Option("--width", help="Level-0 width in pixels.")] = 4096,
    height: Annotated[int, typer.Option("--height", help="Level-0 height in pixels.")] = 3072,
    seed: Annotated[int, typer.Option("--seed", help="Cohort seed.")] = 0,
    mpp: Annotated[float, typer.Option("--mpp", help="Microns per pixel of level 0.")] = 0.5,
    sites: Annotated[int, typer.Option("--sites", help="Number of sites (stain and class mix differ).")] = 1,
) -> None:
    """Write N synthetic slides with ground-truth masks and a cohort.csv into OUT."""
    from rich.table import Table

    from wsiseg.testing.synthetic import SyntheticSlide, make_cohort

    if out.exists() and not out.is_dir():
        msg = f"output {out} is a file; pass a folder path for the cohort"
        raise ConfigError(msg)
    seconds: list[float] = []
    with make_progress("slides") as progress:
        task = progress.add_task("synth", total=max(n, 0))
        last = time.perf_counter()

        def done(_: SyntheticSlide) -> None:
            nonlocal last
            now = time.perf_counter()
            seconds.append(now - last)
            last = now
            progress.advance(task)

        slides = make_cohort(
            out,
            n_slides=n,
            width=width,
            height=height,
            seed=seed,
            mpp=mpp,
            n_sites=sites,
            on_slide=done,
        )
    table = Table(title=f"Synthetic cohort in {out}")
    width_name = max(len(s.slide_path.name) for s in slides)
    table.add_column("slide", no_wrap=True, min_width=width_name)
    for col in ("site", "size", "background", "tumor", "stroma", "normal", "seconds"):
        table.add_column(col, justify="right")
    for s, sec in zip(slides, seconds, strict=True):
        fr = s.class_fractions
        table.add_row(
            s.slide_path.name,
            str(s.site),
            f"{s.width}x{s.height}",
            *(f"{fr[k]:.1%}" for k in ("background", "tumor", "stroma", "normal")),
            f"{sec:.2f}",
        )
    console.print(table)
