"""``wsiseg tile``: cut slides into tissue windows (and label tiles) for training and evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["tile"]


def tile(
    slides: Annotated[list[str], typer.Argument(help="Slide files, folders (recursive) or globs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder.")] = Path("tiles"),
    window: Annotated[int, typer.Option(help="Window side in level-0 px (or px at --mpp).")] = 1000,
    stride: Annotated[int, typer.Option(help="Step between windows, same unit as --window.")] = 500,
    size: Annotated[int, typer.Option(help="Output tile side in px.")] = 224,
    mpp: Annotated[float | None, typer.Option(help="Define --window/--stride physically at this um/px.")] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Level-0 um/px for slides without (or with wrong) mpp.")
    ] = None,
    min_tissue: Annotated[float, typer.Option(help="Minimum tissue fraction of a kept window.")] = 0.1,
    resize: Annotated[str, typer.Option(help="Resize kernel: bilinear, bicubic, box, lanczos.")] = "bilinear",
    image_format: Annotated[str, typer.Option("--format", help="Image tile format: jpg or png.")] = "jpg",
    masks: Annotated[
        Path | None,
        typer.Option(help="Folder of label images / QuPath GeoJSON / ASAP XML named after the slides."),
    ] = None,
    use_masks: Annotated[
        bool, typer.Option("--use-masks/--no-masks", help="Use <slide>_mask.* files found beside slides.")
    ] = True,
    palette: Annotated[str, typer.Option(help="Label PNG convention: auto, ids or wsss4luad.")] = "auto",
    backend: Annotated[str, typer.Option(help="Slide reader: auto, openslide, tiffslide, pillow.")] = "auto",
    site: Annotated[str, typer.Option(help="Site name stored with every tile.")] = "",
    sites: Annotated[Path | None, typer.Option(help="CSV with columns slide,site (e.g. a synth cohort.csv).")] = None,
    workers: Annotated[int, typer.Option(help="Reader processes per slide.")] = min(2, os.cpu_count() or 1),
    overwrite: Annotated[bool, typer.Option(help="Re-tile slides that are already done.")] = False,
) -> None:
    """Tile slides into tissue windows: 1000 px windows at stride 500, resized to 224 (the paper's grid)."""
    from wsiseg.cli._console import batch_exit, console, make_progress
    from wsiseg.errors import DataError
    from wsiseg.tiling.batch import expand_sources, read_site_table, tile_many
    from wsiseg.tiling.geometry import TilingConfig

    config = TilingConfig(window, stride, size, mpp, min_tissue, resize, image_format)
    sources = expand_sources(slides)
    if not sources:
        msg = f"no slides found in {' '.join(slides)}; pass slide files, folders or globs"
        raise DataError(msg)
    site_map = read_site_table(sites) if sites else None
    with make_progress("windows") as bar:
        task = bar.add_task("tiling", total=None, rate="")

        def on_start(source: Path, index: int) -> None:
            bar.reset(task, total=None, description=f"[{index + 1}/{len(sources)}] {source.name}")

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        outcomes = tile_many(
            sources, out, config, masks_dir=masks, use_masks=use_masks, palette=palette, backend=backend,
            slide_mpp=slide_mpp, sites=site_map, site=site, workers=workers, overwrite=overwrite,
            on_start=on_start, progress=on_progress,
        )  # fmt: skip
    _summary(outcomes, out)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        console.print(f"[bold red]failed:[/] {o.error}", highlight=False, soft_wrap=True)
    batch_exit([o.exit_code for o in failed], len(outcomes))


def _summary(outcomes: list, out: Path) -> None:  # type: ignore[type-arg]
    from rich.table import Table

    from wsiseg.cli._console import console

    table = Table(title=f"Tiles in {out}")
    for col in ("slide", "status", "size (px)", "mpp", "level", "windows", "tiles", "labels", "s"):
        table.add_column(col)
    for o in outcomes:
        e = o.entry
        if e is None:
            table.add_row(o.source.name, "[red]failed", "", "", "", "", "", "", f"{o.seconds:.1f}")
            continue
        mpp = f"{e.mpp:.3f}" if e.mpp else "-"
        table.add_row(
            o.source.name, o.status, f"{e.dimensions[0]}x{e.dimensions[1]}", mpp, str(e.level),
            str(e.n_windows), str(e.n_tiles), Path(e.mask_source).name if e.mask_source else "-",
            f"{o.seconds:.1f}",
        )  # fmt: skip
    console.print(table)
    notes = [f"{o.source.name}: {o.entry.note}" for o in outcomes if o.entry and o.entry.note]
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
