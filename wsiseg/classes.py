"""Class tables stored with every artifact (manifest, checkpoint, mask).

The default scheme follows WSSS4LUAD: background, tumor, stroma, normal. Ids are ours (0 = background); the
WSSS4LUAD palette PNGs (0 tumor, 1 stroma, 2 normal, 3 background) are remapped with
``WSSS4LUAD_PALETTE_REMAP``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CLASSES",
    "WSSS4LUAD_PALETTE_REMAP",
    "ClassInfo",
    "ClassTable",
]

#: A class name becomes part of file names (``mask_prob_<name>.tif``), so it is a plain word: letters, digits,
#: ``_``, ``-``, ``+`` and inner spaces, at most 64 characters; never ``..``, ``/`` or markup.
_NAME = re.compile(r"[A-Za-z0-9_+-](?:[A-Za-z0-9_+ -]{0,62}[A-Za-z0-9_+-])?")


@dataclass(frozen=True)
class ClassInfo:
    """One class: integer id in label images, display name and RGB colour."""

    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """An ordered set of classes with contiguous ids starting at 0 (0 is background)."""

    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            msg = f"class ids must be 0..{len(ids) - 1} in order, got {ids}"
            raise ValueError(msg)
        if len({c.name for c in self.classes}) != len(ids):
            msg = "class names must be unique"
            raise ValueError(msg)
        for c in self.classes:
            if not isinstance(c.name, str) or not _NAME.fullmatch(c.name):
                msg = f"class name {c.name!r} must be letters, digits, '_', '-', '+' or inner spaces (at most 64)"
                raise ValueError(msg)
            if len(c.color) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c.color):
                msg = f"class {c.name!r} colour {list(c.color)} must be three integers in 0..255"
                raise ValueError(msg)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [c.name for c in self.classes]

    def palette(self) -> np.ndarray:
        """Return a ``(n, 3)`` uint8 array of colours in id order."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    def to_list(self) -> list[dict[str, Any]]:
        """Return a JSON-ready list of ``{"id", "name", "color"}`` dicts."""
        return [{**asdict(c), "color": list(c.color)} for c in self.classes]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]]) -> ClassTable:
        """Build a table from ``to_list`` output.

        Raises:
            ValueError: If an entry lacks a field or holds a bad id, name or colour.
        """
        if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
            msg = "a class table is a list of {id, name, color} objects"
            raise ValueError(msg)
        return cls(
            tuple(
                ClassInfo(_int(d["id"]), str(d["name"]), tuple(_int(v) for v in d["color"]))  # type: ignore[arg-type]
                for d in items
            )
        )


def _int(value: Any) -> int:
    """An integer from JSON (``3`` or ``3.0``), never a truncated float, bool or string."""
    bad_float = isinstance(value, float) and not (math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, int | float) or bad_float:
        msg = f"{value!r} is not an integer"
        raise ValueError(msg)
    return int(value)


DEFAULT_CLASSES = ClassTable(
    (
        ClassInfo(0, "background", (255, 255, 255)),
        ClassInfo(1, "tumor", (0, 64, 128)),
        ClassInfo(2, "stroma", (64, 128, 0)),
        ClassInfo(3, "normal", (243, 152, 0)),
    )
)

#: WSSS4LUAD palette index -> our class id (0 tumor, 1 stroma, 2 normal, 3 background).
WSSS4LUAD_PALETTE_REMAP = np.array([1, 2, 3, 0], dtype=np.uint8)
