"""tiffslide backend: pure-Python TIFF reader (OME-TIFF, SVS, NDPI, generic tiled TIFF)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from wsiseg.slide._common import (
    BackendOpenError,
    mpp_from_properties,
    pil_to_rgb,
    positive_float,
    str_properties,
    to_rgb,
)
from wsiseg.slide.protocol import RGBArray

__all__ = ["TiffSlideBackend", "is_tiff"]

#: MINISBLACK, RGB, YCBCR: what tiffslide returns as displayable grey/RGB.
_PHOTOMETRIC_OK = frozenset({1, 2, 6})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(source: Path) -> bool:
    """Return True when ``source`` starts with a TIFF or BigTIFF header."""
    try:
        with source.open("rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _data_end(page: Any) -> int:
    """Return the byte just past the last tile or strip of a tifffile page."""
    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c > 0]
    return max(ends, default=0)


class TiffSlideBackend:
    """An open ``tiffslide.TiffSlide`` handle returning RGB with white padding.

    Args:
        source: The TIFF file to open.

    Raises:
        BackendOpenError: If the file is not a TIFF, has no 8-bit image series, or is truncated.
    """

    name = "tiffslide"

    def __init__(self, source: Path) -> None:
        import tiffslide

        if not is_tiff(source):
            raise BackendOpenError(self.name, "not a TIFF file", kind="unknown")
        try:
            self._slide = tiffslide.TiffSlide(source)
        except Exception as err:
            raise BackendOpenError(self.name, f"invalid TIFF ({err})", kind="corrupt") from err
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "metadata parsing partial" noise
                raw = dict(self._slide.properties)
            self._check(raw, source)
        except BackendOpenError:
            self._slide.close()
            raise
        except Exception as err:
            self._slide.close()
            raise BackendOpenError(self.name, f"invalid TIFF ({err})", kind="corrupt") from err
        self._properties = str_properties(raw)
        self._raw = raw

    def _check(self, raw: dict[str, Any], source: Path) -> None:
        """Reject non-8-bit pixel types and tile data past the end of the file (truncation)."""
        tiff = self._slide.ts_tifffile
        series = tiff.series[int(raw.get("tiffslide.series-index") or 0)]
        if series.dtype != np.uint8:
            reason = f"unsupported pixel type {series.dtype} (only 8-bit images are read)"
            raise BackendOpenError(self.name, reason, kind="unsupported")
        photometric = int(series.keyframe.photometric)
        if photometric not in _PHOTOMETRIC_OK:
            reason = f"unsupported TIFF photometric {photometric} (palette, CMYK, inverted grey...)"
            raise BackendOpenError(self.name, reason, kind="unsupported")
        size = source.stat().st_size
        for level in series.levels:
            for page in level.pages:
                end = 0 if page is None else _data_end(page)
                if end > size:
                    reason = f"truncated: image data ends at byte {end} but the file has {size}"
                    raise BackendOpenError(self.name, reason, kind="corrupt")

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """Return ``(width, height)`` of every level."""
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Return the downsample of every level."""
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        """Return tiffslide's properties as strings (None values dropped)."""
        return dict(self._properties)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Return ``tiffslide.mpp-x/y`` or None."""
        return mpp_from_properties(self._raw, "tiffslide")

    @property
    def objective_power(self) -> float | None:
        """Return ``tiffslide.objective-power`` or None."""
        return positive_float(self._raw.get("tiffslide.objective-power"))

    @property
    def vendor(self) -> str | None:
        """Return ``tiffslide.vendor`` or None (e.g. for OME-TIFF)."""
        vendor = self._raw.get("tiffslide.vendor")
        return str(vendor) if vendor else None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Return the associated image names."""
        return tuple(self._slide.associated_images.keys())

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBArray:
        """Read a region with openslide's contract; pixels outside the level are white."""
        width, height = size
        level_w, level_h = self._slide.level_dimensions[level]
        downsample = self._slide.level_downsamples[level]
        # Same level-0 -> level transform as tiffslide's read_region (truncation toward zero).
        rx0, ry0 = int(location[0] / downsample), int(location[1] / downsample)
        if rx0 >= level_w or ry0 >= level_h or rx0 + width <= 0 or ry0 + height <= 0:
            return np.full((height, width, 3), 255, dtype=np.uint8)
        arr = self._slide.read_region(location, level, size, as_array=True, padding=True)
        if rx0 < 0 or ry0 < 0 or rx0 + width > level_w or ry0 + height > level_h:
            arr = np.array(arr, copy=True)
            cols = np.arange(rx0, rx0 + width)
            rows = np.arange(ry0, ry0 + height)
            arr[:, (cols < 0) | (cols >= level_w)] = 255
            arr[(rows < 0) | (rows >= level_h), :] = 255
        return to_rgb(arr)

    def read_associated(self, name: str) -> RGBArray:
        """Read one associated image as RGB."""
        return pil_to_rgb(self._slide.associated_images[name])

    def close(self) -> None:
        """Close the tiffslide handle (and its file)."""
        self._slide.close()
