"""Pillow backend for plain images (PNG, JPEG, single-page TIFF) seen as one-level slides."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from wsiseg.fileio import pixel_budget_problem
from wsiseg.slide._common import BackendOpenError, crop_padded, pil_to_rgb, positive_float
from wsiseg.slide.protocol import RGBArray

__all__ = ["PLAIN_IMAGE_SUFFIXES", "PillowBackend", "image_format"]

#: Suffixes that ``backend="auto"`` sends straight to Pillow.
PLAIN_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_FORMATS = frozenset({"PNG", "JPEG", "MPO", "TIFF"})
_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "La", "CMYK", "YCbCr"})
_TIFF_INCH, _TIFF_CM = 2, 3
_UM_PER_INCH = 25_400.0
_LIMIT_LOCK = threading.Lock()


@contextmanager
def _no_pixel_limit() -> Iterator[None]:
    """Lift Pillow's decompression-bomb limit for this call path only (slides are big)."""
    with _LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def image_format(source: Path) -> str | None:
    """Return Pillow's format name for ``source`` (``"PNG"``, ``"GIF"``...), or None."""
    try:
        with _no_pixel_limit(), Image.open(source) as image:
            return image.format
    except (UnidentifiedImageError, OSError):
        return None


#: Largest um/px taken from TIFF resolution tags: microscope scans are about 0.1-10 um/px, while the 72-300 dpi
#: that image editors write by default would read as 85-353 um/px.
MAX_TAG_MPP = 50.0


def _mpp(image: Image.Image) -> tuple[float, float] | None:
    """Return µm per pixel from TIFF resolution tags, or None.

    PNG/JPEG density (DPI) is a print setting, never a microscope resolution, so it is never read; TIFF tags
    count only in inch or centimetre units and in the microscope range (at most :data:`MAX_TAG_MPP`).
    """
    if image.format != "TIFF":
        return None
    tags = getattr(image, "tag_v2", {})
    unit = tags.get(296, _TIFF_INCH)
    res = (positive_float(tags.get(282)), positive_float(tags.get(283)))
    per_unit = {_TIFF_INCH: _UM_PER_INCH, _TIFF_CM: 10_000.0}.get(unit)
    if per_unit is None or res[0] is None or res[1] is None:
        return None
    mpp = (per_unit / res[0], per_unit / res[1])
    return mpp if max(mpp) <= MAX_TAG_MPP else None


class PillowBackend:
    """A plain image read with Pillow: one level, decoded whole on the first pixel read.

    Args:
        source: The image file.

    Raises:
        BackendOpenError: If Pillow cannot identify the file or its format/mode is unsupported.
    """

    name = "pillow"

    def __init__(self, source: Path) -> None:
        try:
            with _no_pixel_limit(), Image.open(source) as image:
                fmt, mode, size = image.format or "?", image.mode, image.size
                mpp = _mpp(image)
        except UnidentifiedImageError as err:
            raise BackendOpenError(self.name, "not an image", kind="unknown") from err
        except OSError as err:
            raise BackendOpenError(self.name, f"unreadable image ({err})", kind="corrupt") from err
        too_big = pixel_budget_problem(*size)
        if too_big:
            raise BackendOpenError(self.name, f"the image {too_big}", kind="unsupported")
        if fmt not in _FORMATS:
            reason = f"{fmt} images are not supported (use PNG, JPEG or TIFF)"
            raise BackendOpenError(self.name, reason, kind="unsupported")
        if mode not in _MODES:
            reason = f"unsupported pixel mode {mode} (only 8-bit images are read)"
            raise BackendOpenError(self.name, reason, kind="unsupported")
        self._source = source
        self._size = (int(size[0]), int(size[1]))
        self._mpp = mpp
        self._properties = {"pillow.format": fmt, "pillow.mode": mode}
        self._pixels: RGBArray | None = None

    def _load(self) -> RGBArray:
        if self._pixels is None:
            with _no_pixel_limit(), Image.open(self._source) as image:
                image.load()
                self._pixels = pil_to_rgb(image)
        return self._pixels

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """Return the single level's ``(width, height)``."""
        return (self._size,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Return ``(1.0,)``."""
        return (1.0,)

    @property
    def properties(self) -> dict[str, str]:
        """Return ``pillow.format`` and ``pillow.mode``."""
        return dict(self._properties)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Return µm per pixel from resolution metadata, or None."""
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        """Return None: plain images carry no objective."""
        return None

    @property
    def vendor(self) -> str | None:
        """Return None: plain images have no scanner vendor."""
        return None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Return ``()``: plain images have no associated images."""
        return ()

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBArray:
        """Cut a region from the decoded image, white outside."""
        del level  # a single level, checked by Slide
        return crop_padded(self._load(), int(location[0]), int(location[1]), size[0], size[1])

    def read_associated(self, name: str) -> RGBArray:
        """Raise KeyError: plain images have no associated images."""
        raise KeyError(name)

    def close(self) -> None:
        """Drop the decoded pixels."""
        self._pixels = None
