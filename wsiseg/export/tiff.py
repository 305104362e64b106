"""Streaming writer and reader for pyramidal uint8 mask TIFFs (labels or per-class probabilities).

Layout (default, "flat"): level 0 and reduced levels /2, /4, ... (until the largest side is below
``min_level_size``, 1024 by default) as top-level IFDs, reduced ones with ``NewSubfileType = 1``;
256 x 256 tiles, zlib, uint8, ``photometric=minisblack``. RESOLUTION tags hold ``1e4 / mpp`` px per
centimetre, so openslide reports ``openslide.mpp-x`` = mask mpp. openslide 4 (``generic-tiff``),
tiffslide, tifffile and ASAP read this layout. ``ome=True`` instead writes an OME-TIFF whose
reduced levels are SubIFDs of level 0 (for Bio-Formats/QuPath; openslide sees only level 0).

Metadata: a JSON document (format, kind, size, mpp, levels, class table, label convention,
provenance) goes into the level-0 ImageDescription (flat) or the OME ``Image/Description``
(OME), and into a sidecar ``<mask stem>.json`` next to the TIFF.

Streaming design: tifffile needs one tile iterator per page in a single ``write`` call, while the
stitcher pushes rows. ``MaskTiffWriter`` therefore appends incoming rows to raw uint8 scratch files,
one per pyramid level (a pixel of level ``k`` is the majority label, or for probability maps the mean, of
its ``2**k`` x ``2**k`` block of level 0; see ``wsiseg.export.pyramid``), in a hidden scratch folder next to
the output.
``close()`` then streams each raw level into the TIFF 256 rows at a time. Peak RAM is about
``256 * width`` bytes plus tifffile's encode buffers, independent of slide height; scratch disk is
about 4/3 of the uncompressed level 0. The TIFF is first written inside the scratch folder, then
moved into place with ``os.replace``; on any error the scratch folder (and so every partial file)
is removed and no output appears.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import tifffile

from wsiseg import __version__
from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.export.pyramid import BlockPyramid

__all__ = [
    "TILE",
    "MaskTiffWriter",
    "pyramid_sizes",
    "read_mask_level",
    "read_mask_tiff",
    "sidecar_path",
]

TILE = 256
FORMAT = "wsiseg-mask"


def pyramid_sizes(width: int, height: int, min_size: int = 1024) -> list[tuple[int, int]]:
    """Return ``(width, height)`` per level: 0, then /2, /4, ... until the largest side < min_size.

    Level ``k`` is ``(ceil(width / 2**k), ceil(height / 2**k))``.
    """
    sizes = [(width, height)]
    step = 1
    while max(sizes[-1]) >= min_size and max(sizes[-1]) > 1:
        step *= 2
        sizes.append((math.ceil(width / step), math.ceil(height / step)))
    return sizes


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Return the JSON sidecar path of a mask TIFF (``mask.tif`` -> ``mask.json``)."""
    return Path(path).with_suffix(".json")


class MaskTiffWriter:
    """Write a pyramidal uint8 mask TIFF from rows that arrive top to bottom.

    Use as a context manager (an exception inside the block discards everything) or call
    ``close()`` / ``abort()`` yourself. The instance is also a ``BandStitcher`` sink: calling it
    with ``(row_start, labels, probs)`` writes ``labels``.

    Args:
        path: Output TIFF path; its folder must exist. Replaced atomically at ``close()``.
        width: Mask width in px.
        height: Mask height in px.
        mpp: Mask resolution in um/px (``slide_mpp / s`` for a model-resolution mask).
        classes: Class table stored in the metadata.
        kind: ``"labels"`` or ``"probability"`` (free text stored in the metadata).
        label_offset: Value stored for class id 0 (labels are ``id + label_offset``).
        unanalysed_value: Value stored where nothing was predicted.
        downsample_to_level0: Slide level-0 px per mask px (``1 / s``, e.g. 1000 / 224), if known.
        provenance: Extra JSON-serialisable facts (slide, model, tiling settings...).
        ome: Write an OME-TIFF with SubIFD levels instead of the flat layout.
        min_level_size: Stop adding levels once the largest side is below this.
        workers: Threads tifffile may use to compress tiles.

    Raises:
        DataError: If the output folder does not exist or sizes are not positive.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        *,
        mpp: float | None,
        classes: ClassTable,
        kind: str = "labels",
        label_offset: int = 0,
        unanalysed_value: int = 0,
        downsample_to_level0: float | None = None,
        provenance: Mapping[str, Any] | None = None,
        ome: bool = False,
        min_level_size: int = 1024,
        workers: int = 1,
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            msg = f"output folder {self.path.parent} does not exist; create it first"
            raise DataError(msg)
        if width < 1 or height < 1 or (mpp is not None and not mpp > 0):
            msg = f"mask {self.path} needs positive size and mpp, got {width}x{height}, mpp {mpp}"
            raise DataError(msg)
        self.width, self.height, self.mpp, self.ome, self.workers = width, height, mpp, ome, workers
        self.levels = pyramid_sizes(width, height, min_level_size)
        self.metadata: dict[str, Any] = {
            "format": FORMAT,
            "version": 1,
            "kind": kind,
            "width": width,
            "height": height,
            "mpp": mpp,
            "levels": [list(s) for s in self.levels],
            "downsampling": "mean" if kind == "probability" else "majority",
            "classes": classes.to_list(),
            "label_offset": label_offset,
            "unanalysed_value": unanalysed_value,
            "downsample_to_level0": downsample_to_level0,
            "wsiseg_version": __version__,
            "provenance": dict(provenance or {}),
        }
        self._scratch = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._raw: list[BinaryIO] = []
        try:
            self._raw = [open(self._raw_path(k), "wb") for k in range(len(self.levels))]  # noqa: SIM115
        except BaseException:
            self.abort()
            raise
        self._pyramid = BlockPyramid(width, len(self.levels) - 1, self.metadata["downsampling"])
        self._next_row = 0
        self._done = False

    def _raw_path(self, level: int) -> Path:
        return self._scratch / f"level{level}.raw"

    @property
    def rows_written(self) -> int:
        """Number of level-0 rows received so far."""
        return self._next_row

    def write_rows(self, row_start: int, rows: np.ndarray) -> None:
        """Append rows ``[row_start, row_start + n)``; they must continue the previous call.

        Args:
            row_start: First row index; equals ``rows_written``.
            rows: ``(n, width)`` uint8 array.

        Raises:
            DataError: On a gap, overlap, wrong shape/dtype, too many rows or a closed writer.
        """
        n = rows.shape[0] if rows.ndim == 2 else -1
        if self._done or rows.dtype != np.uint8 or rows.shape[1:] != (self.width,):
            msg = (
                f"{self.path}: expected open writer and uint8 rows of width {self.width}, got {rows.dtype} {rows.shape}"
            )
            raise DataError(msg)
        if row_start != self._next_row or row_start + n > self.height:
            msg = (
                f"{self.path}: rows {row_start}..{row_start + n} do not continue at row "
                f"{self._next_row} of {self.height}; feed rows in order, each once"
            )
            raise DataError(msg)
        last = row_start + n == self.height
        self._raw[0].write(np.ascontiguousarray(rows).tobytes())
        for raw, level_rows in zip(self._raw[1:], self._pyramid.push(rows, last=last), strict=True):
            raw.write(np.ascontiguousarray(level_rows).tobytes())
        self._next_row += n

    def __call__(self, row_start: int, labels: np.ndarray, probs: np.ndarray | None = None) -> None:
        """Sink form of ``write_rows`` for ``BandStitcher`` (``probs`` is ignored)."""
        self.write_rows(row_start, labels)

    def close(self) -> Path:
        """Write the TIFF and sidecar, move them into place and delete the scratch folder.

        Returns:
            The final TIFF path.

        Raises:
            DataError: If fewer than ``height`` rows were written (nothing is left on disk).
        """
        if self._done:
            return self.path
        try:
            if self._next_row != self.height:
                msg = (
                    f"{self.path}: only {self._next_row} of {self.height} rows were written; "
                    "the prediction stopped early, rerun it"
                )
                raise DataError(msg)
            for raw in self._raw:
                raw.close()
            tmp_tif = self._scratch / "out.tif"
            self._write_tiff(tmp_tif)
            tmp_json = self._scratch / "out.json"
            tmp_json.write_text(json.dumps(self.metadata, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp_json, sidecar_path(self.path))
            os.replace(tmp_tif, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        shutil.rmtree(self._scratch, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Discard everything written so far (scratch folder included). Idempotent, and never raises.

        Closing a raw file flushes its buffer, which fails again on a full disk; the scratch folder is removed
        regardless.
        """
        self._done = True
        for raw in self._raw:
            with contextlib.suppress(OSError):  # the flush of a full disk's buffer: the file is deleted anyway
                raw.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> MaskTiffWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _write_tiff(self, tmp: Path) -> None:
        """Stream every raw level into ``tmp`` as one tiled page each."""
        raw_bytes = sum(w * h for w, h in self.levels)
        text = json.dumps(self.metadata)
        with tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 2**31, ome=self.ome) as tif:
            for level, (w, h) in enumerate(self.levels):
                options: dict[str, Any] = {
                    "shape": (h, w),
                    "dtype": np.uint8,
                    "tile": (TILE, TILE),
                    "compression": "zlib",
                    "photometric": "minisblack",
                    "subfiletype": 0 if level == 0 else 1,
                    "maxworkers": self.workers,
                    "metadata": None,
                }
                if self.mpp is not None:  # a slide without mpp gives a mask without resolution tags
                    mpp = self.mpp * 2**level
                    options["resolution"] = (1e4 / mpp, 1e4 / mpp)
                    options["resolutionunit"] = "CENTIMETER"
                if level == 0 and self.ome:
                    options["subifds"] = len(self.levels) - 1
                    options["metadata"] = {
                        "axes": "YX",
                        "Name": self.path.stem,
                        "Description": text,
                    }
                    if self.mpp is not None:
                        options["metadata"].update(
                            PhysicalSizeX=self.mpp, PhysicalSizeXUnit="µm",
                            PhysicalSizeY=self.mpp, PhysicalSizeYUnit="µm",
                        )  # fmt: skip
                elif level == 0:
                    options["description"] = text
                tif.write(_iter_tiles(self._raw_path(level), w, h), **options)


def _iter_tiles(raw_path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Yield ``TILE`` x ``TILE`` tiles (edge tiles smaller) of a raw row-major uint8 file."""
    with open(raw_path, "rb") as f:
        for y in range(0, height, TILE):
            n = min(TILE, height - y)
            strip = np.frombuffer(f.read(n * width), dtype=np.uint8)
            if strip.size != n * width:
                msg = f"scratch file {raw_path} is truncated at row {y}; check free disk space"
                raise DataError(msg)
            strip = strip.reshape(n, width)
            for x in range(0, width, TILE):
                yield strip[:, x : x + TILE].copy()


def _read_metadata(tif: tifffile.TiffFile, path: Path) -> dict[str, Any]:
    """Parse our JSON from the ImageDescription, the OME Description, or the sidecar."""
    desc = tif.pages.first.description
    if desc.lstrip().startswith("{"):
        return dict(json.loads(desc))
    if tif.is_ome:
        for element in ET.fromstring(desc).iter():
            if element.tag.endswith("Description") and (element.text or "").startswith("{"):
                return dict(json.loads(element.text or "{}"))
    side = sidecar_path(path)
    if side.is_file():
        return dict(json.loads(side.read_text(encoding="utf-8")))
    msg = f"{path} carries no wsiseg metadata and has no sidecar {side.name}; re-export the mask"
    raise DataError(msg)


def read_mask_level(path: str | os.PathLike[str], level: int = 0) -> np.ndarray:
    """Read one pyramid level (0 = full size) of a mask TIFF as a 2-D uint8 array.

    Raises:
        DataError: If the file is missing or has no such level.
    """
    p = Path(path)
    if not p.is_file():
        msg = f"mask {p} not found; check the path"
        raise DataError(msg)
    with tifffile.TiffFile(p) as tif:
        levels = tif.series[0].levels
        if not 0 <= level < len(levels):
            msg = f"{p} has {len(levels)} levels, level {level} requested"
            raise DataError(msg)
        return np.asarray(levels[level].asarray())


def read_mask_tiff(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read level 0 and the metadata dict (class table, mpp, provenance) of a mask TIFF."""
    p = Path(path)
    labels = read_mask_level(p, 0)
    with tifffile.TiffFile(p) as tif:
        return labels, _read_metadata(tif, p)
