"""Tile many slides: expand inputs, find label masks, resume, and isolate failures per slide."""

from __future__ import annotations

import csv
import glob
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from wsiseg.classes import DEFAULT_CLASSES, ClassTable
from wsiseg.errors import DataError, StorageError, TilingError, WsisegError, from_os_error, is_fatal_storage_error
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.manifest import MANIFEST_NAME, SlideEntry, write_manifest
from wsiseg.tiling.writer import LabelSource, batch_ids, same_source, tile_slide

__all__ = [
    "SLIDE_SUFFIXES",
    "SlideOutcome",
    "expand_sources",
    "find_label_file",
    "load_labels",
    "read_site_table",
    "tile_many",
]

SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide",
    ".png", ".jpg", ".jpeg", ".dcm",
}  # fmt: skip
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".geojson", ".json", ".xml")
_MASK_MARKERS = ("_mask", "_gt", "_labels", "-mask")


@dataclass
class SlideOutcome:
    """What happened to one input slide."""

    source: Path
    status: str  # "tiled", "skipped" or "failed"
    entry: SlideEntry | None = None
    error: str = ""
    seconds: float = 0.0
    exit_code: int = 0  # the error's CLI exit code when failed


def _is_label_name(path: Path) -> bool:
    stem = path.name.lower().rsplit(".", 1)[0]
    return stem.endswith(_MASK_MARKERS) or stem.endswith("_preview")


def _is_dicom_dir(path: Path) -> bool:
    """A folder of ``.dcm`` files only (one DICOM-WSI series, one file per level) is one slide."""
    if not path.is_dir():
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.is_file() and p.suffix.lower() == ".dcm" for p in entries)


def _scan_dir(folder: Path) -> list[Path]:
    found: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if _is_dicom_dir(child):
            found.append(child)
        elif child.is_dir():
            found.extend(_scan_dir(child))
        elif child.suffix.lower() in SLIDE_SUFFIXES and not _is_label_name(child):
            found.append(child)
    return found


def expand_sources(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (recursively; a folder of ``.dcm`` files is one DICOM slide) and globs.

    Label images (``*_mask.png`` and similar) and previews inside folders are not slides and are skipped.
    Paths that do not exist are returned as they are, so the caller reports them per slide.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.exists():
            if _is_dicom_dir(path) or path.is_file():
                out.append(path)
            else:
                out.extend(_scan_dir(path))
            continue
        matches = sorted(glob.glob(str(item), recursive=True))  # noqa: PTH207 (user globs may be absolute)
        if matches:
            out.extend(Path(m) for m in matches if not _is_label_name(Path(m)))
        else:
            out.append(path)
    return list(dict.fromkeys(out))  # drop repeats, keep the first occurrence's order


def find_label_file(slide: Path, masks_dir: Path | None) -> Path | None:
    """Find a slide's label file: ``<stem>{_mask,_gt,}.{png,tif,geojson,json,xml}`` in ``masks_dir``.

    Without ``masks_dir`` only a sibling ``<stem>_mask.*`` next to the slide is used.
    """
    stem = slide.name.split(".")[0] if slide.is_file() else slide.name
    if masks_dir is None:
        candidates = [slide.parent / f"{stem}_mask{ext}" for ext in LABEL_SUFFIXES]
    else:
        candidates = [masks_dir / f"{stem}{mark}{ext}" for mark in ("_mask", "_gt", "") for ext in LABEL_SUFFIXES]
    return next((c for c in candidates if c.is_file() and c != slide), None)


def load_labels(path: Path, level0_size: tuple[int, int], classes: ClassTable, palette: str) -> LabelSource:
    """Load a label image, QuPath GeoJSON or ASAP XML as class ids at a downsample of the slide."""
    # Not `from wsiseg.tiling import annotations`: that name is the __future__ feature in the package.
    from wsiseg.tiling.annotation_io import (
        LabelPalette,
        load_label_image,
        rasterize_asap_xml,
        rasterize_geojson,
    )

    suffix = path.suffix.lower()
    if suffix in {".geojson", ".json", ".xml"}:
        ds = max(4.0, float(-(-max(level0_size) // 16384)))
        if suffix == ".xml":
            labels = rasterize_asap_xml(path, level0_size=level0_size, downsample=ds, classes=classes)
        else:
            labels = rasterize_geojson(path, level0_size=level0_size, downsample=ds, classes=classes)
        return LabelSource(labels, ds, str(path))
    # ``palette`` is unvalidated CLI text; load_label_image treats any other value like "ids"
    labels, ds = load_label_image(path, level0_size=level0_size, palette=cast(LabelPalette, palette))
    return LabelSource(labels, float(ds), str(path))


def read_site_table(path: Path) -> dict[str, str]:
    """Read a CSV with columns ``slide`` and ``site`` (e.g. ``cohort.csv``); keys are slide file names."""
    if not path.is_file():
        msg = f"{path}: site table not found; pass a CSV with columns slide,site"
        raise DataError(msg)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "slide" not in rows[0] or "site" not in rows[0]:
        msg = f"{path}: site table needs the columns slide and site"
        raise DataError(msg)
    return {Path(r["slide"]).name: str(r["site"]) for r in rows}


def _existing(out_dir: Path, sid: str) -> SlideEntry | None:
    path = out_dir / sid / "slide.json"
    if not path.is_file():
        return None
    try:
        return SlideEntry.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def tile_many(
    sources: list[Path],
    out_dir: Path,
    config: TilingConfig,
    *,
    masks_dir: Path | None = None,
    use_masks: bool = True,
    palette: str = "auto",
    backend: str = "auto",
    slide_mpp: float | None = None,
    sites: dict[str, str] | None = None,
    site: str = "",
    workers: int = 1,
    strips: bool = True,
    overwrite: bool = False,
    classes: ClassTable = DEFAULT_CLASSES,
    on_start: Callable[[Path, int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[SlideOutcome]:
    """Tile every source into one dataset folder; a failing slide is recorded and the rest go on.

    ``strips=False`` reads one ``read_region`` per window instead of strips (``tile_slide``); same tiles.

    Returns:
        One outcome per source, in order. The manifest covers every completed slide in ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, config, overwrite)
    _remove_scratch(out_dir)
    ids, clashes = batch_ids(sources)
    outcomes: list[SlideOutcome] = []
    for index, source in enumerate(sources):
        if on_start:
            on_start(source, index)
        start = time.perf_counter()
        sid = ids[source]
        label_file = find_label_file(source, masks_dir) if use_masks else None
        try:
            if source in clashes:
                msg = (f"{source} and {clashes[source]} would both be tiled into {out_dir / sid}; "
                       "rename one of them or tile them into separate --out folders")  # fmt: skip
                raise TilingError(msg)
            old = _existing(out_dir, sid)
            if old is not None and not same_source(old.source, source):
                if not overwrite:
                    msg = (f"{out_dir / sid} already holds the tiles of {old.source}, not of {source}; "
                           "use another --out, rename the slide, or pass --overwrite to replace them")  # fmt: skip
                    raise TilingError(msg)
            elif old is not None and not overwrite:
                same = old.settings == config.to_dict()
                if same and old.mask_source == (str(label_file) if label_file else ""):
                    outcomes.append(SlideOutcome(source, "skipped", old))
                    continue
            entry = _tile_one(source, out_dir, config, sid, label_file, classes, palette, backend, slide_mpp,
                              (sites or {}).get(source.name, site), (workers, strips), progress)  # fmt: skip
            outcomes.append(SlideOutcome(source, "tiled", entry, seconds=time.perf_counter() - start))
            _rewrite_manifest(out_dir, config, classes)  # a kill -9 later never leaves a done slide unlisted
        except (WsisegError, OSError) as raw:
            err = from_os_error(raw, out_dir) if isinstance(raw, OSError) else raw
            if is_fatal_storage_error(err):
                _stop_batch(out_dir, config, classes, outcomes, err)
            outcomes.append(SlideOutcome(source, "failed", error=str(err), seconds=time.perf_counter() - start,
                                         exit_code=err.exit_code))  # fmt: skip
    _rewrite_manifest(out_dir, config, classes)
    return outcomes


def _tile_one(
    source: Path,
    out_dir: Path,
    config: TilingConfig,
    sid: str,
    label_file: Path | None,
    classes: ClassTable,
    palette: str,
    backend: str,
    slide_mpp: float | None,
    site: str,
    reading: tuple[int, bool],
    progress: Callable[[int, int], None] | None,
) -> SlideEntry:
    if not source.exists():
        from wsiseg.errors import SlideError

        msg = f"{source}: no such file or folder; check the path"
        raise SlideError(msg)
    labels = None
    if label_file is not None:
        from wsiseg.slide import open_slide

        with open_slide(source, backend=backend) as probe:
            dims = probe.dimensions
        labels = load_labels(label_file, dims, classes, palette)
    workers, strips = reading
    return tile_slide(source, out_dir, config, labels=labels, backend=backend, slide_mpp=slide_mpp, site=site,
                      workers=workers, strips=strips, progress=progress, sid=sid)  # fmt: skip


def _remove_scratch(out_dir: Path) -> None:
    """Remove ``<id>.partial`` folders an interrupted run (kill -9, power loss) left behind."""
    import shutil

    for child in out_dir.iterdir():
        if child.name.endswith(".partial") and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def _stop_batch(
    out_dir: Path, config: TilingConfig, classes: ClassTable, outcomes: list[SlideOutcome], err: WsisegError
) -> None:
    """End a batch on a fault every later slide would hit (full or read-only disk), keeping what is done."""
    import contextlib

    with contextlib.suppress(OSError, WsisegError):
        _rewrite_manifest(out_dir, config, classes)
    done = sum(o.status in {"tiled", "skipped"} for o in outcomes)
    msg = f"{err} (batch stopped: {done} of the slides before it are complete and kept; rerun to continue)"
    raise StorageError(msg) from err


def _check_settings(out_dir: Path, config: TilingConfig, overwrite: bool) -> None:
    path = out_dir / MANIFEST_NAME
    if not path.is_file() or overwrite:
        return
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except json.JSONDecodeError:
        return
    if settings and TilingConfig.from_dict(settings) != config:
        msg = (
            f"{out_dir}: already holds tiles made with other settings ({settings}); "
            "use another --out or pass --overwrite"
        )
        raise TilingError(msg)


def _rewrite_manifest(out_dir: Path, config: TilingConfig, classes: ClassTable) -> None:
    entries = []
    for child in sorted(out_dir.iterdir()):
        if child.is_dir() and not child.name.endswith(".partial"):
            entry = _existing(out_dir, child.name)
            if entry is not None and TilingConfig.from_dict(entry.settings) == config:
                entries.append(entry)
    if entries or (out_dir / MANIFEST_NAME).exists():  # a run that tiled nothing leaves no empty dataset behind
        write_manifest(out_dir, config, classes, entries)
