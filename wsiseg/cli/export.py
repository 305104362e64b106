"""``wsiseg export``: overlays, QuPath GeoJSON and class areas from predicted masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["export"]


def export(
    masks: Annotated[list[Path], typer.Argument(help="Predicted mask.tif file(s) from `wsiseg predict`.")],
    slide: Annotated[Path | None, typer.Option(help="The slide of a single mask (for the overlay).")] = None,
    slides: Annotated[Path | None, typer.Option(help="Folder with slides named like the masks (for batches).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("export"),
    min_area: Annotated[float, typer.Option(help="Drop regions below this area (um^2; px^2 without mpp).")] = 0.0,
    geojson_mpp: Annotated[
        float, typer.Option(help="Polygonise from the mask level nearest this um/px (QuPath-friendly).")
    ] = 4.0,
    object_type: Annotated[str, typer.Option("--as", help="QuPath object type: annotation or detection.")] = (
        "annotation"
    ),
    alpha: Annotated[float, typer.Option(help="Overlay opacity of class colours.")] = 0.4,
    overlay_tiff: Annotated[bool, typer.Option(help="Also write an RGB pyramidal overlay TIFF.")] = False,
) -> None:
    """Write an overlay PNG, QuPath GeoJSON and a CSV of class areas for each mask."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from wsiseg.cli._console import batch_exit, console
    from wsiseg.errors import ConfigError, WsisegError, from_os_error, is_fatal_storage_error
    from wsiseg.export.report import export_mask

    bad = ([f"--as must be annotation or detection, got {object_type!r}"]
           if object_type not in {"annotation", "detection"} else [])  # fmt: skip
    bad += [] if 0.0 <= alpha <= 1.0 else [f"--alpha must be in 0..1, got {alpha}"]
    if bad:
        msg = "; ".join(bad) + "; nothing was written"
        raise ConfigError(msg)
    if slides is not None and not slides.is_dir():
        msg = f"--slides {slides}: no such folder; pass the folder that holds the slides named like the masks"
        raise ConfigError(msg)
    if slide is not None and len(masks) > 1:
        msg = "--slide goes with one mask; use --slides DIR for several"
        raise ConfigError(msg)
    table = Table(title=f"Exported to {out}")
    for col in ("mask", "regions", "tumor mm2", "stroma mm2", "normal mm2", "TSR", "files"):
        table.add_column(col)
    failed: list[int] = []
    for mask in masks:
        src = slide if slide is not None else _find_slide(mask, slides)
        try:
            res = export_mask(mask, out, slide=src, min_area=min_area, geojson_mpp=geojson_mpp,
                              object_type=object_type, alpha=alpha, overlay_tiff=overlay_tiff)  # fmt: skip
        except (WsisegError, OSError) as raw:
            err = from_os_error(raw, out) if isinstance(raw, OSError) else raw
            if is_fatal_storage_error(err):  # a full or read-only disk fails every later mask too: stop here
                raise err from raw
            failed.append(err.exit_code)
            console.print(f"[bold red]failed:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            continue
        if res.mpp_assumed:
            line = f"{mask.name}: areas use the mpp assumed at prediction (--slide-mpp), not one the slide records"
            console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False)
        areas = {r.class_name: r.area_mm2 for r in res.areas}
        tsr = next((r.tumor_stroma_ratio for r in res.areas if r.tumor_stroma_ratio is not None), None)
        table.add_row(
            Text(mask.name), str(res.n_features),
            *[f"{areas[c]:.3f}" if areas.get(c) is not None else "-" for c in ("tumor", "stroma", "normal")],
            f"{tsr:.2f}" if tsr is not None else "-", Text(", ".join(p.name for p in res.files)),
        )  # fmt: skip
    if table.row_count:
        console.print(table)
    batch_exit(failed, len(masks))


def _find_slide(mask: Path, folder: Path | None) -> Path | None:
    if folder is None:
        return None
    stem = mask.name.split(".")[0]
    matches = sorted(p for p in folder.iterdir() if p.name.split(".")[0] == stem and p.suffix != ".json")
    return matches[0] if matches else None
