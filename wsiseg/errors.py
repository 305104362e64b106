"""Error hierarchy. Every user-facing failure is a ``WsisegError`` with a one-line message.

Messages say what went wrong, with which file, and how to fix it. The CLI maps each class to an exit code
in one place (``wsiseg.cli``), so scripts can rely on them.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PrivacyError",
    "SlideError",
    "StorageError",
    "TilingError",
    "WsisegError",
    "from_os_error",
    "is_fatal_storage_error",
]


class WsisegError(Exception):
    """Base class of all wsiseg errors. ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class ConfigError(WsisegError, ValueError):
    """A setting or combination of settings is invalid."""

    exit_code = 2


class SlideError(WsisegError):
    """A slide cannot be opened or read (missing, not a slide, corrupt, unsupported, no mpp)."""

    exit_code = 3


class TilingError(WsisegError):
    """Tiling failed for a slide or annotation."""

    exit_code = 4


class DataError(WsisegError):
    """A tile dataset, manifest or mask is missing, empty or inconsistent."""

    exit_code = 5


class ModelError(WsisegError, ValueError):
    """Unknown model name, bad model arguments or pretrained weights that do not fit."""

    exit_code = 6


class CheckpointError(WsisegError):
    """A checkpoint or its card is missing, corrupt or incompatible."""

    exit_code = 7


class PrivacyError(WsisegError, ValueError):
    """Differential-privacy settings are invalid or the privacy budget would be exceeded."""

    exit_code = 8


class StorageError(WsisegError):
    """The file system refused a read or write: read-only, full, not a folder, no permission, special file."""

    exit_code = 9
    #: The OS error number behind it, when there is one.
    os_errno: int | None = None


#: errno -> (the cause in words, the fix). Everything else falls back to the OS's own words.
_CAUSES: dict[int, tuple[str, str]] = {
    errno.EROFS: ("the file system is read-only", "choose an --out on a writable drive"),
    errno.ENOSPC: ("no space left on the device", "free disk space or choose an --out on a larger drive"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space in your quota or choose another --out"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "remove that file or choose another path"),
    errno.EISDIR: ("it is a folder where a file was expected", "pass a file path, not a folder"),
    errno.EACCES: ("permission denied", "choose a path you may write to, or ask for access"),
    errno.EPERM: ("operation not permitted", "choose a path you may write to, or ask for access"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EEXIST: ("something already exists at that path", "remove it or choose another path"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n) or use fewer --workers"),
    errno.EIO: ("an input/output error from the device", "check the drive or network share"),
}
#: Faults that will hit every later item of a batch the same way: the batch stops instead of failing each item.
_FATAL = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def from_os_error(err: OSError, path: str | os.PathLike[str] | None = None) -> StorageError:
    """Turn an ``OSError`` into a one-line :class:`StorageError` with the path, the cause in words and the fix.

    Args:
        err: The error the OS raised.
        path: The path to name when the error carries none.
    """
    where = err.filename if err.filename is not None else path
    cause, fix = _CAUSES.get(err.errno or 0, (err.strerror or str(err) or type(err).__name__, "check the path"))
    head = f"cannot access {os.fsdecode(where)}" if where is not None else "file system error"
    out = StorageError(f"{head}: {cause}; {fix}")
    out.os_errno = err.errno
    return out


def is_fatal_storage_error(err: BaseException) -> bool:
    """True for faults (read-only, full disk, quota) that every later write of a batch would hit too."""
    code = err.os_errno if isinstance(err, StorageError) else getattr(err, "errno", None)
    return code in _FATAL
