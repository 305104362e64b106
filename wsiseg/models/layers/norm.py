"""Norm layers by name, so DP compatibility is a constructor argument.

BatchNorm is the paper's default. GroupNorm has no cross-sample statistics, so it is the choice for DP
training (per-sample gradients) and for federated averaging without running-statistics buffers.
"""

from __future__ import annotations

from torch import nn

from wsiseg.errors import ModelError

__all__ = ["NORM_ALIASES", "NORM_NAMES", "canonical_norm", "group_count", "make_norm"]

NORM_NAMES = ("batchnorm", "groupnorm")
#: Every accepted spelling (lower case, without ``_`` or ``-``) of each norm: the one norm map.
NORM_ALIASES = {"batchnorm": "batchnorm", "bn": "batchnorm", "batchnorm2d": "batchnorm", "groupnorm": "groupnorm",
                "gn": "groupnorm"}  # fmt: skip


def canonical_norm(name: str) -> str:
    """Return ``"batchnorm"`` or ``"groupnorm"`` for any accepted spelling of a norm.

    Raises:
        ModelError: For an unknown name.
    """
    key = name.lower().replace("_", "").replace("-", "")
    if key not in NORM_ALIASES:
        msg = f"unknown norm {name!r}; use one of {', '.join(NORM_NAMES)}"
        raise ModelError(msg)
    return NORM_ALIASES[key]


def group_count(channels: int, max_groups: int = 32) -> int:
    """Return the largest divisor of ``channels`` that is at most ``max_groups``."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def make_norm(name: str, channels: int) -> nn.Module:
    """Create a 2-D norm layer for ``channels`` feature maps.

    Args:
        name: ``"batchnorm"`` or ``"groupnorm"`` (32 groups, or the largest divisor of ``channels`` below).
        channels: Number of channels.

    Returns:
        The norm module.

    Raises:
        ModelError: For an unknown name.
    """
    if canonical_norm(name) == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(group_count(channels), channels)
