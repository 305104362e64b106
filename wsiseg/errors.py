"""Error hierarchy. Every user-facing failure is a ``WsisegError`` with a one-line message.

Messages say what went wrong, with which file, and how to fix it. The CLI maps each class to an exit code
in one place (``wsiseg.cli``), so scripts can rely on them.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PrivacyError",
    "SlideError",
    "TilingError",
    "WsisegError",
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
