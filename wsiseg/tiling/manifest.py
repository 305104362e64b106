"""Tile-dataset manifests: ``manifest.json`` (settings, classes, slides) and ``tiles.csv`` (one row per tile).

A dataset folder looks like::

    tiles/
      manifest.json          settings, class table, one entry per slide
      tiles.csv              every tile of every slide
      <slide_id>/slide.json  per-slide entry, written last (marks the slide complete)
      <slide_id>/tiles.csv   that slide's tiles
      <slide_id>/images/*.jpg, <slide_id>/masks/*.png, <slide_id>/preview.png

Paths in the CSVs are relative to the dataset folder, so a dataset can be moved.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from wsiseg import __version__
from wsiseg.classes import DEFAULT_CLASSES, ClassTable
from wsiseg.errors import DataError
from wsiseg.fileio import atomic_output, atomic_write_text
from wsiseg.tiling.geometry import TilingConfig

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "SlideEntry",
    "TileRecord",
    "load_manifest",
    "read_tiles_csv",
    "write_manifest",
    "write_tiles_csv",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "wsiseg-tiles"


@dataclass(frozen=True)
class TileRecord:
    """One tile: where it came from and where its files are (relative to the dataset folder)."""

    slide_id: str
    image: str
    mask: str
    x: int
    y: int
    level: int
    read_size: int
    window: int
    tissue: float
    mpp: float | None
    site: str


@dataclass
class SlideEntry:
    """One tiled slide: provenance, geometry and counts."""

    id: str
    source: str
    dimensions: tuple[int, int]
    mpp: float | None
    window_level0: int
    stride_level0: int
    level: int
    read_size: int
    n_windows: int
    n_tiles: int
    mask_source: str = ""
    site: str = ""
    note: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data["dimensions"] = list(self.dimensions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlideEntry:
        """Build from ``to_dict`` output."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["dimensions"] = tuple(kwargs["dimensions"])
        return cls(**kwargs)


@dataclass
class Manifest:
    """A loaded tile dataset."""

    root: Path
    config: TilingConfig
    classes: ClassTable
    slides: list[SlideEntry]
    records: list[TileRecord]

    @property
    def has_masks(self) -> bool:
        """True when every tile has a mask tile."""
        return bool(self.records) and all(r.mask for r in self.records)


def write_tiles_csv(path: Path, records: list[TileRecord]) -> None:
    """Write tile records as CSV (atomic)."""
    names = [f.name for f in fields(TileRecord)]
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for rec in records:
            row = asdict(rec)
            row["mpp"] = "" if rec.mpp is None else f"{rec.mpp:.6g}"
            row["tissue"] = f"{rec.tissue:.4f}"
            writer.writerow([row[n] for n in names])


def read_tiles_csv(path: Path) -> list[TileRecord]:
    """Read tile records written by ``write_tiles_csv``.

    Raises:
        DataError: If the file is missing or a row is malformed.
    """
    if not path.is_file():
        msg = f"{path}: tiles.csv not found; run `wsiseg tile` to create the dataset"
        raise DataError(msg)
    out: list[TileRecord] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                out.append(
                    TileRecord(
                        slide_id=row["slide_id"],
                        image=row["image"],
                        mask=row["mask"],
                        x=int(row["x"]),
                        y=int(row["y"]),
                        level=int(row["level"]),
                        read_size=int(row["read_size"]),
                        window=int(row["window"]),
                        tissue=float(row["tissue"]),
                        mpp=float(row["mpp"]) if row["mpp"] else None,
                        site=row.get("site", "") or "",
                    )
                )
            except (KeyError, ValueError, TypeError) as err:
                msg = f"{path}:{line}: malformed tile row ({err}); re-run `wsiseg tile --overwrite`"
                raise DataError(msg) from err
    return out


def write_manifest(root: Path, config: TilingConfig, classes: ClassTable, slides: list[SlideEntry]) -> Manifest:
    """Write ``manifest.json`` and the combined ``tiles.csv`` from the per-slide folders.

    Args:
        root: Dataset folder.
        config: Tiling settings shared by every slide.
        classes: Class table of the mask tiles.
        slides: Completed slides.

    Returns:
        The manifest as written.
    """
    records: list[TileRecord] = []
    for entry in slides:
        records.extend(read_tiles_csv(root / entry.id / "tiles.csv"))
    write_tiles_csv(root / "tiles.csv", records)
    payload = {
        "format": FORMAT,
        "version": 1,
        "wsiseg_version": __version__,
        "settings": config.to_dict(),
        "classes": classes.to_list(),
        "slides": [s.to_dict() for s in slides],
        "n_tiles": len(records),
    }
    atomic_write_text(root / MANIFEST_NAME, json.dumps(payload, indent=2))
    return Manifest(root, config, classes, slides, records)


def load_manifest(root: str | Path) -> Manifest:
    """Load a tile dataset folder (or its ``manifest.json``).

    Raises:
        DataError: If the folder has no valid manifest.
    """
    path = Path(root)
    if path.is_file():
        path = path.parent
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        msg = f"{path}: no {MANIFEST_NAME}; run `wsiseg tile SLIDES --out {path}` first"
        raise DataError(msg)
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            msg = f"{mpath}: not a wsiseg tile manifest"
            raise DataError(msg)
        config = TilingConfig.from_dict(data["settings"])
        classes = ClassTable.from_list(data["classes"]) if data.get("classes") else DEFAULT_CLASSES
        slides = [SlideEntry.from_dict(s) for s in data["slides"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        msg = f"{mpath}: corrupt manifest ({err}); re-run `wsiseg tile --overwrite`"
        raise DataError(msg) from err
    records = read_tiles_csv(path / "tiles.csv")
    return Manifest(path, config, classes, slides, records)
