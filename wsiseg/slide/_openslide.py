"""openslide backend: the default and the correctness reference (SVS, NDPI, MRXS, DICOM, TIFF...)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from wsiseg.slide._common import (
    BackendOpenError,
    mpp_from_properties,
    pil_to_rgb,
    positive_float,
    to_rgb,
)
from wsiseg.slide._dicom_colour import ycbcr_frames_labelled_rgb, ycbcr_to_rgb
from wsiseg.slide.protocol import RGBArray

__all__ = ["OpenSlideBackend", "detect_format"]

_log = logging.getLogger("wsiseg.slide")
#: Files whose colour fix was already reported by this process (a forked reader worker inherits it).
_REPORTED: set[str] = set()


def detect_format(source: Path) -> str | None:
    """Return the openslide vendor name for ``source`` (e.g. ``"aperio"``), or None if unknown."""
    import openslide

    return openslide.OpenSlide.detect_format(source)


class OpenSlideBackend:
    """An open ``openslide.OpenSlide`` handle that returns RGB composited on white.

    DICOM that says RGB but holds JFIF (YCbCr) JPEG frames, as ``bfconvert`` writes it, is converted to RGB
    after OpenSlide (``wsiseg.slide._dicom_colour``; reported once, and as the ``wsiseg.colour-fix`` property).

    Args:
        source: The file to open (for a DICOM-WSI folder, any ``.dcm`` file in it).

    Raises:
        BackendOpenError: If openslide does not recognise or cannot open the file.
    """

    name = "openslide"

    def __init__(self, source: Path) -> None:
        import openslide

        vendor = detect_format(source)
        if vendor is None:
            raise BackendOpenError(self.name, "format not recognised", kind="unknown")
        try:
            self._slide = openslide.OpenSlide(source)
        except openslide.OpenSlideError as err:
            reason = f"{vendor} file could not be opened ({err})"
            raise BackendOpenError(self.name, reason, kind="corrupt") from err
        self._properties = {str(k): str(v) for k, v in self._slide.properties.items()}
        self._ycbcr = ycbcr_frames_labelled_rgb(self._properties, source)
        if self._ycbcr is not None:
            self._properties["wsiseg.colour-fix"] = "ycbcr-to-rgb"
            if str(source) not in _REPORTED:
                _REPORTED.add(str(source))
                _log.warning("%s", self._ycbcr)

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
        """Return openslide's properties (``openslide.*`` plus vendor keys)."""
        return dict(self._properties)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Return ``openslide.mpp-x/y`` or None."""
        return mpp_from_properties(self._properties, "openslide")

    @property
    def objective_power(self) -> float | None:
        """Return ``openslide.objective-power`` or None."""
        return positive_float(self._properties.get("openslide.objective-power"))

    @property
    def vendor(self) -> str | None:
        """Return ``openslide.vendor`` (``aperio``, ``hamamatsu``, ``dicom``...)."""
        return self._properties.get("openslide.vendor") or None

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Return the associated image names in openslide's order."""
        return tuple(self._slide.associated_images.keys())

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBArray:
        """Read a region; openslide's transparent pixels (outside the scan) become white."""
        image = self._slide.read_region(location, level, size)
        if self._ycbcr is None:
            return to_rgb(np.asarray(image))
        return to_rgb(ycbcr_to_rgb(np.array(image)))  # before compositing: transparent pixels stay white

    def read_associated(self, name: str) -> RGBArray:
        """Read one associated image as RGB."""
        return pil_to_rgb(self._slide.associated_images[name])

    def close(self) -> None:
        """Close the openslide handle."""
        self._slide.close()
