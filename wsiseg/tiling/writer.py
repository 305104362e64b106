"""Cut one slide into image tiles (and mask tiles) and write its folder atomically.

The slide folder is built under ``<id>.partial`` and renamed to ``<id>`` when complete, so an interrupted
run never leaves a half-tiled slide that looks finished. Windows are read from the coarsest pyramid level
that still has the output resolution and resized with one fixed kernel (recorded in the manifest).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from wsiseg.errors import TilingError
from wsiseg.fileio import atomic_write_text
from wsiseg.slide import Slide, open_slide
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.manifest import SlideEntry, TileRecord, write_tiles_csv
from wsiseg.tiling.plan import plan_windows
from wsiseg.tiling.window import ReadPlan, WindowReader, plan_reads, row_chunks

__all__ = ["LabelSource", "batch_ids", "crop_labels", "same_source", "slide_id_for", "tile_slide"]


@dataclass(frozen=True)
class LabelSource:
    """A slide's label mask in memory: class ids at ``downsample`` level-0 px per pixel."""

    labels: np.ndarray
    downsample: float
    source: str


def slide_id_for(path: Path) -> str:
    """Return a file-system-safe id from a slide path (``"a b (2).ndpi"`` -> ``"a_b_2"``)."""
    stem = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = path.name if path.is_dir() else path.stem
    return _safe(stem)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "slide"


def batch_ids(sources: Sequence[Path]) -> tuple[dict[Path, str], dict[Path, Path]]:
    """Give every source of a batch its own output id, so no two inputs can write one output.

    A source is named by :func:`slide_id_for` (``siteA/slide.svs`` -> ``slide``) unless another source of the
    batch gets the same id. Then each of those sources is named by its path relative to their common folder,
    folders joined by ``__`` (``siteA/slide.svs``, ``siteB/slide.svs`` -> ``siteA__slide``, ``siteB__slide``),
    and, if that is still not unique, with its extension too (``case1.svs``, ``case1.png`` -> ``case1_svs``,
    ``case1_png``). Sources that still share an id are returned as clashes, to be refused by name.

    Returns:
        ``(ids, clashes)``: an id per source, and for each source that cannot be named apart, the other source.
    """
    ids = {src: slide_id_for(src) for src in sources}
    groups: dict[str, list[Path]] = {}
    for src, sid in ids.items():
        groups.setdefault(sid, []).append(src)
    clashes: dict[Path, Path] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        absolute = [m.absolute() for m in members]
        root = Path(os.path.commonpath([a.parent for a in absolute]))
        rel = [a.relative_to(root) for a in absolute]
        for with_ext in (False, True):
            names = [
                _safe("__".join((*r.parent.parts, r.name.replace(".", "_") if with_ext else slide_id_for(a))))
                for r, a in zip(rel, absolute, strict=True)
            ]
            if len(set(names)) == len(names):
                break
        seen: dict[str, Path] = {}
        for src, name in zip(members, names, strict=True):
            ids[src] = name
            if name in seen:
                clashes[src] = seen[name]
                clashes.setdefault(seen[name], src)
            else:
                seen[name] = src
    owner: dict[str, Path] = {}
    for src, sid in ids.items():  # a new name may meet another slide's plain one (``siteA__slide.svs``)
        if sid in owner and src not in clashes:
            clashes[src] = owner[sid]
            clashes.setdefault(owner[sid], src)
        owner.setdefault(sid, src)
    return ids, clashes


def same_source(recorded: str, source: Path) -> bool:
    """True when an output's recorded source path is ``source`` (as given, or the same file resolved)."""
    if recorded == str(source):
        return True
    try:
        return Path(recorded).resolve() == source.resolve()
    except (OSError, RuntimeError):
        return False


def crop_labels(source: LabelSource, x: int, y: int, window: int, size: int) -> np.ndarray:
    """Sample a window of the label mask onto a ``size`` x ``size`` grid with nearest neighbour.

    Each output pixel takes the label at its centre; outside the mask it is background (0).
    """
    step = window / size / source.downsample
    centres = (np.arange(size) + 0.5) * step
    cols = np.floor(x / source.downsample + centres).astype(np.int64)
    rows = np.floor(y / source.downsample + centres).astype(np.int64)
    h, w = source.labels.shape
    valid_r = (rows >= 0) & (rows < h)
    valid_c = (cols >= 0) & (cols < w)
    out = np.zeros((size, size), dtype=np.uint8)
    sub = source.labels[np.ix_(rows[valid_r], cols[valid_c])]
    out[np.ix_(np.flatnonzero(valid_r), np.flatnonzero(valid_c))] = sub
    return out


# Worker state: set once per process (fork-inherited or via the initializer), never shared handles.
_STATE: dict[str, Any] = {}


def _init_worker(slide: Slide, labels: LabelSource | None, job: dict[str, Any]) -> None:
    _STATE.update(slide=slide, labels=labels, job=job)


def _chunk_reader(chunk: Sequence[tuple[int, int, float]]) -> WindowReader:
    """A reader over ``chunk``'s windows with the slide's read plan (strips or per window)."""
    job = _STATE["job"]
    config: TilingConfig = job["config"]
    origins = [(x, y) for x, y, _ in chunk]
    return WindowReader(_STATE["slide"], origins, job["level"], job["read"], config.size, config.resize, job["reads"])


def _tile_chunk(
    chunk: Sequence[tuple[int, int, float]], images: Iterator[Image.Image] | None = None
) -> list[TileRecord]:
    """Write the tiles of ``chunk``; ``images`` yields its windows (default: a reader over the chunk alone)."""
    labels: LabelSource | None = _STATE["labels"]
    job = _STATE["job"]
    config: TilingConfig = job["config"]
    work = Path(job["work"])
    reader = None
    if images is None:
        reader = _chunk_reader(chunk)
        images = iter(reader)
    try:
        return _write_tiles(chunk, images, labels, job, config, work)
    finally:
        if reader is not None:
            reader.close()


def _write_tiles(
    chunk: Sequence[tuple[int, int, float]],
    images: Iterator[Image.Image],
    labels: LabelSource | None,
    job: dict[str, Any],
    config: TilingConfig,
    work: Path,
) -> list[TileRecord]:
    """Save each window of ``chunk`` (and its mask tile) and return the records."""
    out: list[TileRecord] = []
    for (x, y, frac), img in zip(chunk, images, strict=False):
        name = f"{job['id']}_x{x}_y{y}"
        image_rel = f"{job['id']}/images/{name}.{config.image_format}"
        if config.image_format == "jpg":
            img.save(work / "images" / f"{name}.jpg", quality=90)
        else:
            img.save(work / "images" / f"{name}.png", compress_level=1)
        mask_rel = ""
        if labels is not None:
            tile = crop_labels(labels, x, y, job["window"], config.size)
            Image.fromarray(tile, mode="L").save(work / "masks" / f"{name}.png", compress_level=1)
            mask_rel = f"{job['id']}/masks/{name}.png"
        out.append(
            TileRecord(
                job["id"], image_rel, mask_rel, x, y, job["level"], job["read"], job["window"],
                float(frac), job["mpp"], job["site"],
            )
        )  # fmt: skip
    return out


def _preview(
    thumb: np.ndarray, mask: np.ndarray, kept: Sequence[tuple[int, int]], ds: float, window: int
) -> Image.Image:
    """Thumbnail with the tissue mask tinted green and kept windows outlined in blue."""
    base = thumb.astype(np.float32)
    tint = np.array([0, 200, 0], dtype=np.float32)
    base[mask] = 0.7 * base[mask] + 0.3 * tint
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for x, y in kept:
        box = (x / ds, y / ds, (x + window) / ds - 1, (y + window) / ds - 1)
        draw.rectangle(box, outline=(20, 60, 220), width=1)
    return img


def tile_slide(
    source: Path,
    out_dir: Path,
    config: TilingConfig,
    *,
    labels: LabelSource | None = None,
    backend: str = "auto",
    slide_mpp: float | None = None,
    site: str = "",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    sid: str | None = None,
    strips: bool = True,
) -> SlideEntry:
    """Tile one slide into ``out_dir/<slide id>/`` and return its manifest entry.

    Args:
        source: Slide file or DICOM folder.
        out_dir: Dataset folder.
        config: Tiling settings.
        labels: Label mask for training tiles, or None for images only.
        backend: Slide backend (see ``wsiseg.slide.open_slide``).
        slide_mpp: Override for a slide without (or with wrong) mpp metadata.
        site: Site name stored with every tile (for federated partitions).
        workers: Reader processes (1 reads in this process).
        progress: Called with ``(done, total)`` windows as chunks finish.
        sid: The output id (default :func:`slide_id_for`; a batch passes :func:`batch_ids`).
        strips: Read tiled TIFF/SVS levels in strips, decoding each stored tile once (False: one
            ``read_region`` per window; the pixels are the same, see :mod:`wsiseg.slide.strips`).

    Returns:
        The slide's entry (also written to ``<id>/slide.json``).

    Raises:
        SlideError: If the slide cannot be read.
        ConfigError: If ``--mpp`` needs an mpp the slide lacks.
        TilingError: If no window has enough tissue or writing fails.
    """
    slide = open_slide(source, backend=backend)
    sid = sid or slide_id_for(source)
    plan = plan_windows(slide, config, slide_mpp=slide_mpp)
    mpp, window, stride, level, read = plan.mpp, plan.window0, plan.stride0, plan.level, plan.read
    dims = slide.dimensions
    thumb, tissue, ds, origins, keep = plan.thumb, plan.tissue, plan.thumb_downsample, plan.grid, plan.kept
    notes = [plan.stain_note] if plan.stain_note else []
    if mpp is None:
        notes.append("no scanner mpp (windows are in pixels, areas unknown); pass --slide-mpp if you know it")
    if dims[0] < window or dims[1] < window:
        notes.append(f"image {dims[0]}x{dims[1]} is smaller than the {window} px window: padded with white background")
    note = "; ".join(notes)
    if not keep:
        msg = (
            f"{source}: no window has at least {config.min_tissue:.0%} tissue "
            f"({len(origins)} windows checked); lower --min-tissue or check the slide"
        )
        if dims[0] < window or dims[1] < window:
            msg += (
                f" (the {dims[0]}x{dims[1]} image is smaller than the {window} px window, so it is mostly padding: "
                f"for patches use --window {min(dims)} or less, see the README's patch recipe)"
            )
        raise TilingError(msg)
    work = out_dir / f"{sid}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    if labels is not None:
        (work / "masks").mkdir()
    job = {"config": config, "work": str(work), "id": sid, "level": level, "read": read, "window": window,
           "mpp": mpp, "site": site, "reads": plan_reads(slide, level, strips=strips)}  # fmt: skip
    try:
        records = _run_chunks(slide, labels, job, keep, workers, progress)
        _preview(thumb, tissue, [(x, y) for x, y, _ in keep], ds, window).save(work / "preview.png")
        write_tiles_csv(work / "tiles.csv", records)
        entry = SlideEntry(
            id=sid, source=str(source), dimensions=dims, mpp=mpp, window_level0=window, stride_level0=stride,
            level=level, read_size=read, n_windows=len(origins), n_tiles=len(records),
            mask_source=labels.source if labels else "", site=site, note=note, settings=config.to_dict(),
        )  # fmt: skip
        atomic_write_text(work / "slide.json", json.dumps(entry.to_dict(), indent=2))
        final = out_dir / sid
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        slide.close()
    return entry


def _run_chunks(
    slide: Slide,
    labels: LabelSource | None,
    job: dict[str, Any],
    keep: list[tuple[int, int, float]],
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> list[TileRecord]:
    chunk_size = max(1, min(64, len(keep) // max(1, workers * 4) or 1))
    reads: ReadPlan = job["reads"]
    if reads.layout is not None and workers > 1:
        # whole grid rows per chunk, so the strip readers of two workers share only the tiles at chunk borders
        target = max(chunk_size, len(keep) // (workers * 4))
        chunks = [keep[a:b] for a, b in row_chunks([(x, y) for x, y, _ in keep], target)]
    else:
        chunks = [keep[i : i + chunk_size] for i in range(0, len(keep), chunk_size)]
    records: list[TileRecord] = []
    if workers <= 1:
        _init_worker(slide, labels, job)
        reader = _chunk_reader(keep)  # one pass over the whole slide
        images = iter(reader)
        try:
            for chunk in chunks:
                records.extend(_tile_chunk(chunk, images))
                if progress:
                    progress(len(records), len(keep))
        finally:
            reader.close()
            _STATE.clear()
        return records
    slide.close()  # each worker opens its own handle lazily
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(slide, labels, job)) as pool:
        for part in pool.imap(_tile_chunk, chunks):
            records.extend(part)
            if progress:
                progress(len(records), len(keep))
    return records
