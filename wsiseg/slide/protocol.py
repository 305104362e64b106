"""The interface every slide backend implements, and the names of the backends.

A backend wraps one open library handle (openslide, tiffslide or Pillow) and speaks the openslide
contract in plain numpy: ``read_region`` takes a level-0 location, a level and a size at that level
and returns RGB ``uint8`` of shape ``(h, w, 3)`` with everything outside the scanned area white.
:class:`wsiseg.slide.Slide` owns a backend, opens it lazily and wraps its errors.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["BACKEND_NAMES", "BackendName", "RGBArray", "SlideBackend"]

#: A backend chosen by the user; ``"auto"`` picks one per file.
BackendName = Literal["auto", "openslide", "tiffslide", "pillow"]
#: Accepted values of ``backend=`` (and of ``--backend``).
BACKEND_NAMES: tuple[str, ...] = ("auto", "openslide", "tiffslide", "pillow")
#: RGB pixels, ``uint8``, shape ``(h, w, 3)``.
RGBArray = npt.NDArray[np.uint8]


@runtime_checkable
class SlideBackend(Protocol):
    """One open slide handle with openslide semantics and RGB numpy output."""

    name: str
    """Backend name: ``"openslide"``, ``"tiffslide"`` or ``"pillow"``."""

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """Return ``(width, height)`` of every level, level 0 first."""
        ...

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Return the downsample factor of every level relative to level 0."""
        ...

    @property
    def properties(self) -> dict[str, str]:
        """Return the library's metadata, every value as a string."""
        ...

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Return level-0 microns per pixel ``(x, y)``, or None when unknown."""
        ...

    @property
    def objective_power(self) -> float | None:
        """Return the scanning objective power, or None when unknown."""
        ...

    @property
    def vendor(self) -> str | None:
        """Return the vendor or format name the library reports, or None."""
        ...

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Return the names of associated images (label, macro, thumbnail...)."""
        ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBArray:
        """Read ``size`` pixels at ``level`` starting at level-0 ``location``; white outside."""
        ...

    def read_associated(self, name: str) -> RGBArray:
        """Read one associated image as RGB."""
        ...

    def close(self) -> None:
        """Release the library handle."""
        ...
