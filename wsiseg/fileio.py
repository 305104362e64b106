"""Atomic file output: write to a temporary name in the same folder, then ``os.replace`` it into place.

Every writer in wsiseg (manifests, run logs, exports) goes through :func:`atomic_output`, so a crash never
leaves a half-written file under the final name, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wsiseg.errors import DataError

__all__ = ["atomic_output", "atomic_write_text", "default_mode", "pixel_budget_problem", "private_dir"]

#: Most pixels wsiseg decodes whole from one plain image or label image (1 Gpx: 3 GB as RGB); a header that
#: declares more (a decompression bomb, or a slide saved as PNG) is refused before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 30
_BUDGET_ENV = "WSISEG_MAX_IMAGE_PIXELS"


@contextmanager
def atomic_output(path: str | os.PathLike[str], *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` with ``os.replace``.

    Args:
        path: Final destination; its folder must exist.
        private: Keep the file owner-only (0600), for state that must not be shared.

    Temporary files that an earlier writer of ``path`` left when it was killed are removed first (one writer per
    destination at a time is assumed).

    Yields:
        The temporary file path to write to (same folder, so the replace is atomic).

    Raises:
        DataError: If the destination folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        msg = f"cannot write {path}: folder {path.parent} does not exist; create it first"
        raise DataError(msg)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o600 if private else default_mode())  # mkstemp makes 0600; outputs get the umask-based mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def default_mode() -> int:
    """``0o666`` minus the process umask (what ``open(path, "w")`` would give)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike[str], text: str, *, private: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (owner-only with ``private``); return the path."""
    with atomic_output(path, private=private) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it owner-only (0700); return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def pixel_budget_problem(width: int, height: int, channels: int = 3) -> str | None:
    """Say why an image of ``width`` x ``height`` is too big to decode whole, or return None when it fits.

    The budget is :data:`DEFAULT_MAX_IMAGE_PIXELS`, or the ``WSISEG_MAX_IMAGE_PIXELS`` environment variable.
    """
    try:
        budget = int(os.environ.get(_BUDGET_ENV, DEFAULT_MAX_IMAGE_PIXELS))
    except ValueError:
        budget = DEFAULT_MAX_IMAGE_PIXELS
    pixels = int(width) * int(height)
    if pixels <= budget:
        return None
    gigabytes = pixels * channels / 1e9
    return (f"declares {width}x{height} pixels (about {gigabytes:.1f} GB to decode), over the budget of {budget} "
            f"pixels; save it as a tiled pyramidal TIFF, or set {_BUDGET_ENV} higher if memory allows")  # fmt: skip
