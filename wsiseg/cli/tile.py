"""``wsiseg tile``: cut slides into tissue windows (and label tiles) for training and evaluation."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from wsiseg.cli import _options as opts

__all__ = ["tile"]


def tile(
    slides: Annotated[list[str], typer.Argument(help="Slide files, folders (recursive) or globs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder.")] = Path("tiles"),
    window: Annotated[int, typer.Option(help="Window side in level-0 px (or px at --mpp).")] = 1000,
    stride: Annotated[int, typer.Option(help="Step between windows, same unit as --window.")] = 500,
    size: Annotated[int, typer.Option(help="Output tile side in px.")] = 224,
    mpp: Annotated[float | None, typer.Option(help="Define --window/--stride physically at this um/px.")] = None,
    slide_mpp: opts.SlideMppOpt = None,
    override_mpp: opts.OverrideMppOpt = False,
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
    strips: Annotated[
        bool, typer.Option(help="Read tiled TIFF/SVS in strips, each stored tile decoded once (off: per window).")
    ] = True,
    max_window_mb: Annotated[
        float, typer.Option(help="Refuse settings that need more memory per window (all workers) than this.")
    ] = 1024.0,
) -> None:
    """Tile slides into tissue windows: 1000 px windows at stride 500, resized to 224 (the paper's grid)."""
    from rich.markup import escape

    from wsiseg.cli._console import batch_exit, console, make_progress
    from wsiseg.errors import ConfigError, DataError
    from wsiseg.tiling.batch import expand_sources, read_site_table, tile_many
    from wsiseg.tiling.geometry import TilingConfig, window_memory_mb
    from wsiseg.tiling.plan import ForcedMpp

    config = TilingConfig(window, stride, size, mpp, min_tissue, resize, image_format)
    if workers < 1:
        msg = f"--workers must be at least 1 (reader processes per slide), got {workers}"
        raise ConfigError(msg)
    if slide_mpp is not None and not 0 < slide_mpp < float("inf"):
        msg = f"--slide-mpp must be a positive number of um per pixel (about 0.25 at 40x), got {slide_mpp}"
        raise ConfigError(msg)
    need = window_memory_mb(config, workers)
    if need > max_window_mb:
        msg = (f"--size {size} needs about {need:,.0f} MB per window across {workers} worker(s), over "
               f"--max-window-mb {max_window_mb:g} (and each tile takes minutes to encode); use a smaller --size "
               "(the paper uses 224) or fewer --workers, or raise --max-window-mb if the memory is there")  # fmt: skip
        raise ConfigError(msg)
    sources = expand_sources(slides)
    if not sources:
        msg = f"no slides found in {' '.join(slides)}; pass slide files, folders or globs"
        raise DataError(msg)
    site_map = read_site_table(sites) if sites else None
    with make_progress("windows") as bar:
        task = bar.add_task("tiling", total=None, rate="")

        # One count over the whole batch: a per-image count restarted for every tiny image made the rate absurd
        finished, current = [0], [0]

        def on_start(source: Path, index: int) -> None:
            finished[0] += current[0]
            current[0] = 0
            bar.update(task, description=f"\\[{index + 1}/{len(sources)}] {escape(source.name)}")

        def on_progress(done: int, total: int) -> None:
            del total
            current[0] = done
            bar.update(task, completed=finished[0] + done)

        started = time.perf_counter()

        outcomes = tile_many(
            sources, out, config, masks_dir=masks, use_masks=use_masks, palette=palette, backend=backend,
            slide_mpp=ForcedMpp(slide_mpp) if override_mpp and slide_mpp else slide_mpp,
            sites=site_map, site=site, workers=workers, strips=strips, overwrite=overwrite,
            on_start=on_start, progress=on_progress,
        )  # fmt: skip
    _summary(outcomes, out, time.perf_counter() - started)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        console.print(f"[bold red]failed:[/] {escape(o.error)}", highlight=False, soft_wrap=True)
    batch_exit([o.exit_code for o in failed], len(outcomes))


def _summary(outcomes: list, out: Path, seconds: float) -> None:  # type: ignore[type-arg]
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from wsiseg.cli._console import console

    table = Table(title=f"Tiles in {out}")
    for col in ("slide", "status", "size (px)", "mpp", "level", "windows", "tiles", "labels", "s"):
        table.add_column(col)
    for o in outcomes:
        e = o.entry
        if e is None:
            table.add_row(Text(o.source.name), "[red]failed", "", "", "", "", "", "", f"{o.seconds:.1f}")
            continue
        mpp = f"{e.mpp:.3f}" if e.mpp else "-"
        table.add_row(
            Text(o.source.name), o.status, f"{e.dimensions[0]}x{e.dimensions[1]}", mpp, str(e.level),
            str(e.n_windows), str(e.n_tiles), Text(Path(e.mask_source).name if e.mask_source else "-"),
            f"{o.seconds:.1f}",
        )  # fmt: skip
    console.print(table)
    tiled = [o.entry for o in outcomes if o.status == "tiled" and o.entry is not None]
    if tiled:
        windows, tiles = sum(e.n_windows for e in tiled), sum(e.n_tiles for e in tiled)
        console.print(f"{len(tiled)} image(s), {windows} windows checked, {tiles} tiles written in {seconds:.1f} s "
                      f"({windows / max(seconds, 1e-9):.1f} windows/s, {len(tiled) / max(seconds, 1e-9):.1f} "
                      "images/s, opening and writing included)", highlight=False)  # fmt: skip
    small = [o.entry for o in outcomes if o.entry and min(o.entry.dimensions) < o.entry.window_level0]
    notes = []
    for o in outcomes:
        parts = o.entry.note.split("; ") if o.entry and o.entry.note else []
        parts = [p for p in parts if len(small) <= 3 or "smaller than the" not in p]  # said once below instead
        if parts:
            notes.append(f"{o.source.name}: {'; '.join(parts)}")
    if len(small) > 3:
        side = min(min(e.dimensions) for e in small)
        console.print(
            f"[yellow]note:[/] {len(small)} of {len(outcomes)} images are smaller than the "
            f"{small[0].window_level0} px window and were padded with white. For patch datasets pick a window "
            f"no larger than the smallest patch side ({side} px here), e.g. --window {side} --stride {side // 2}, "
            f"and a --size at or below it (the README's patch recipe uses --window 224 --stride 112 --size 112)",
            highlight=False,
        )
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
