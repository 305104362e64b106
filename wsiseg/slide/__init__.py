"""Slide reading: one :class:`Slide` API over openslide, tiffslide and Pillow.

``open_slide(path)`` checks the file and returns a :class:`Slide` that holds the path and a backend
handle owned by the current process. The handle is reopened lazily in any other process (fork or
spawn), and dropped when pickling, so a ``Slide`` can live in a torch ``Dataset`` with
``num_workers > 0``. Pixels come back as RGB ``uint8`` numpy arrays with white outside the scan.

Example:
    >>> with open_slide("case.svs") as slide:  # doctest: +SKIP
    ...     tile = slide.read_region((1000, 2000), level=1, size=(256, 256))
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsiseg.errors import ConfigError, SlideError
from wsiseg.slide._common import BackendOpenError
from wsiseg.slide._image import PLAIN_IMAGE_SUFFIXES, PillowBackend
from wsiseg.slide._openslide import OpenSlideBackend
from wsiseg.slide._tiffslide import TiffSlideBackend
from wsiseg.slide.protocol import BACKEND_NAMES, BackendName, RGBArray, SlideBackend

__all__ = [
    "BACKEND_NAMES",
    "BackendName",
    "Slide",
    "SlideBackend",
    "SlideError",
    "open_slide",
]

_OPENERS: dict[str, type[Any]] = {
    "openslide": OpenSlideBackend,
    "tiffslide": TiffSlideBackend,
    "pillow": PillowBackend,
}
_KIND_RANK = {"unknown": 0, "unsupported": 1, "corrupt": 2}
_DOWNSAMPLE_TOLERANCE = 0.01
_KNOWN = "SVS, NDPI, MRXS, SCN, DICOM folder, (OME-)TIFF, PNG or JPEG"


def _source_for(path: Path) -> tuple[Path, bool]:
    """Return the file to open for ``path`` and whether it came from a DICOM-WSI folder.

    Raises:
        SlideError: If the path does not exist or is a directory without ``.dcm`` files.
    """
    if not path.exists():
        msg = f"slide not found: {path}; check the path (and that the drive or share is mounted)"
        raise SlideError(msg)
    if path.is_dir():
        dicoms = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
        if not dicoms:
            msg = (
                f"{path} is a directory without DICOM (.dcm) files; pass a slide file, "
                "or a DICOM-WSI folder holding the .dcm files of one slide"
            )
            raise SlideError(msg)
        return dicoms[0], True
    if not path.is_file():  # a FIFO would block the first read forever; /dev/zero never ends
        msg = (f"{path} is not a regular file (a pipe, device or socket, or a link to one); "
               "pass the slide file itself")  # fmt: skip
        raise SlideError(msg)
    return path, False


def _fail(path: Path, failures: list[BackendOpenError], backend: str) -> SlideError:
    """Build the one-line ``SlideError`` for a file no tried backend could open."""
    worst = max(failures, key=lambda f: _KIND_RANK[f.kind])
    reasons = "; ".join(str(f) for f in failures if f.kind == worst.kind)
    if worst.kind == "corrupt":
        fix = "the file looks truncated or corrupt: re-copy or re-export the slide"
    elif worst.kind == "unsupported":
        fix = f"convert it to a format wsiseg reads ({_KNOWN})"
    elif backend != "auto":
        fix = f"it may need another reader: try --backend auto (formats: {_KNOWN})"
    else:
        fix = f"it is not a slide or image wsiseg can read; pass one of: {_KNOWN}"
    return SlideError(f"cannot open {path} ({reasons}); {fix}")


def _open_backend(path: Path, backend: str) -> SlideBackend:
    """Open ``path`` with ``backend`` (or pick one for ``"auto"``) and return the handle.

    Raises:
        SlideError: Missing file, non-DICOM directory, not a slide, corrupt or unsupported file.
    """
    source, is_dicom_dir = _source_for(path)
    if backend != "auto":
        order = [backend]
    elif is_dicom_dir:
        order = ["openslide"]
    elif source.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        order = ["pillow"]
    else:
        # Pillow last: plain single-page images (e.g. a stripped TIFF) no slide library takes.
        order = ["openslide", "tiffslide", "pillow"]
    failures: list[BackendOpenError] = []
    for name in order:
        try:
            return _OPENERS[name](source)
        except BackendOpenError as err:
            failures.append(err)
            if err.kind == "corrupt" and name != "openslide":
                break  # never fall back to a reader that would show part of a broken file
    raise _fail(path, failures, backend)


class Slide:
    """A whole-slide image (or plain image) read through one backend, opened lazily.

    Use :func:`open_slide` to check the file up front; constructing ``Slide`` directly defers
    all I/O to the first metadata or pixel access. Location arguments are in level-0 pixels
    (openslide's contract); sizes are in pixels of the requested level.

    Args:
        path: Slide file, or a DICOM-WSI folder.
        backend: ``"auto"``, ``"openslide"``, ``"tiffslide"`` or ``"pillow"``.

    Raises:
        ConfigError: If ``backend`` is not one of the names above.
    """

    def __init__(self, path: str | os.PathLike[str], backend: BackendName | str = "auto") -> None:
        if backend not in BACKEND_NAMES:
            msg = f"unknown slide backend {backend!r}; use one of {', '.join(BACKEND_NAMES)}"
            raise ConfigError(msg)
        self.path = Path(path)
        self._requested = str(backend)
        self._resolved: str | None = None if backend == "auto" else str(backend)
        self._handle: SlideBackend | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    # -- handle management ------------------------------------------------------------------

    def _get(self) -> SlideBackend:
        """Return this process's handle, opening it on first use (or after fork/unpickle)."""
        pid = os.getpid()
        if self._pid != pid and self._handle is not None:
            self._handle = None  # inherited through fork: never share it, the parent owns it
            self._lock = threading.Lock()
        handle = self._handle
        if handle is not None:
            return handle
        with self._lock:
            if self._handle is None:
                self._handle = _open_backend(self.path, self._resolved or "auto")
                self._resolved = self._handle.name
                self._pid = pid
            return self._handle

    def close(self) -> None:
        """Close this process's handle; a later access reopens it."""
        handle, self._handle = self._handle, None
        if handle is not None and self._pid == os.getpid():
            handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "requested": self._requested, "resolved": self._resolved}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._requested = state["requested"]
        self._resolved = state["resolved"]
        self._handle = None
        self._pid = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, backend={self._resolved or self._requested!r})"

    # -- metadata ----------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """Return the backend in use: ``"openslide"``, ``"tiffslide"`` or ``"pillow"``."""
        return self._get().name

    @property
    def dimensions(self) -> tuple[int, int]:
        """Return level-0 ``(width, height)``."""
        return self._get().level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Return the number of pyramid levels."""
        return len(self._get().level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """Return ``(width, height)`` of every level, level 0 first."""
        return self._get().level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Return each level's downsample relative to level 0."""
        return self._get().level_downsamples

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Return level-0 ``(x, y)`` µm per pixel, or None when missing, zero or NaN."""
        return self._get().mpp

    @property
    def objective_power(self) -> float | None:
        """Return the objective power (e.g. 20.0), or None when unknown."""
        return self._get().objective_power

    @property
    def vendor(self) -> str | None:
        """Return the vendor/format the backend reports (``aperio``, ``dicom``...), or None."""
        return self._get().vendor

    @property
    def properties(self) -> dict[str, str]:
        """Return the backend's raw properties (keys differ between backends)."""
        return self._get().properties

    @property
    def associated_image_names(self) -> tuple[str, ...]:
        """Return the names of associated images (label, macro, thumbnail...)."""
        return self._get().associated_image_names

    def best_level_for_downsample(self, downsample: float) -> int:
        """Return the level with the largest downsample <= ``downsample`` (1% tolerance).

        Args:
            downsample: Wanted downsample relative to level 0 (values < 1 give level 0).

        Returns:
            The level index.
        """
        limit = downsample * (1 + _DOWNSAMPLE_TOLERANCE)
        candidates = [(d, i) for i, d in enumerate(self.level_downsamples) if d <= limit]
        return max(candidates)[1] if candidates else 0

    def info(self) -> dict[str, Any]:
        """Return JSON-ready facts about the slide (what ``wsiseg info`` prints)."""
        mpp = self.mpp
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "levels": [
                {"level": i, "dimensions": list(dims), "downsample": round(ds, 4)}
                for i, (dims, ds) in enumerate(zip(self.level_dimensions, self.level_downsamples, strict=True))
            ],
            "mpp": None if mpp is None else [round(mpp[0], 6), round(mpp[1], 6)],
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_image_names),
        }

    # -- pixels ------------------------------------------------------------------------------

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBArray:
        """Read a region as RGB; parts outside the slide or scan area are white.

        Args:
            location: ``(x, y)`` of the top-left corner in level-0 pixels.
            level: Pyramid level to read from.
            size: ``(width, height)`` in pixels of ``level``.

        Returns:
            ``(height, width, 3)`` ``uint8`` array.

        Raises:
            SlideError: If ``level`` does not exist or the backend fails to decode the pixels.
            ValueError: If ``size`` is not positive.
        """
        handle = self._get()
        x, y = int(location[0]), int(location[1])
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            msg = f"region size must be positive, got {size}"
            raise ValueError(msg)
        count = len(handle.level_dimensions)
        if not 0 <= level < count:
            msg = f"level {level} does not exist in {self.path} (it has levels 0-{count - 1})"
            raise SlideError(msg)
        try:
            return handle.read_region((x, y), int(level), (width, height))
        except Exception as err:
            msg = (
                f"reading {width}x{height} px at ({x}, {y}) level {level} of {self.path} failed "
                f"({type(err).__name__}: {err}); the file may be truncated or corrupt, re-copy it"
            )
            raise SlideError(msg) from err

    def read_associated(self, name: str) -> RGBArray:
        """Read an associated image (see :attr:`associated_image_names`) as RGB.

        Raises:
            SlideError: If the slide has no associated image of that name.
        """
        names = self.associated_image_names
        if name not in names:
            msg = f"{self.path} has no associated image {name!r}; it has: {', '.join(names) or '-'}"
            raise SlideError(msg)
        return self._get().read_associated(name)

    def get_thumbnail(self, max_size: int) -> RGBArray:
        """Return an RGB overview whose longest side is ``max_size`` (never upscaled).

        It reads the smallest level that is still at least ``max_size`` on its longest side
        and shrinks it with a box filter; the aspect ratio follows level 0.

        Args:
            max_size: Longest side in pixels (>= 1).

        Returns:
            ``(h, w, 3)`` ``uint8`` array with ``max(h, w) <= max_size``.
        """
        if max_size < 1:
            msg = f"max_size must be >= 1, got {max_size}"
            raise ValueError(msg)
        width0, height0 = self.dimensions
        scale = min(1.0, max_size / max(width0, height0))
        out_size = (max(1, round(width0 * scale)), max(1, round(height0 * scale)))
        level = self.best_level_for_downsample(1.0 / scale)
        level_w, level_h = self.level_dimensions[level]
        pixels = self.read_region((0, 0), level, (level_w, level_h))
        if (level_w, level_h) == out_size:
            return pixels
        image = Image.fromarray(pixels).resize(out_size, Image.Resampling.BOX)
        return np.asarray(image).copy()


def open_slide(path: str | os.PathLike[str], backend: BackendName | str = "auto") -> Slide:
    """Open a slide, check that its pixels decode, and return it.

    Args:
        path: Slide file, or a DICOM-WSI folder (any ``.dcm`` file in it works too).
        backend: ``"auto"`` tries openslide, then tiffslide, then Pillow for plain images;
            or force one of ``"openslide"``, ``"tiffslide"``, ``"pillow"``.

    Returns:
        An open :class:`Slide`; close it or use it as a context manager.

    Raises:
        SlideError: Missing file, directory that is not DICOM, not a slide, truncated or corrupt
            file, or an unsupported format. The message names the path and the fix.
        ConfigError: Unknown backend name.
    """
    slide = Slide(path, backend)
    try:
        last = slide.level_count - 1
        level_w, level_h = slide.level_dimensions[last]
        slide.read_region((0, 0), last, (min(level_w, 16), min(level_h, 16)))
    except BaseException:
        slide.close()
        raise
    return slide
