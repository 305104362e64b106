"""The checkpoint card as a typed, versioned record: what ``predict`` needs, plus whatever the run adds.

A card is the JSON file beside a checkpoint's safetensors weights. :class:`ModelCard` holds the fields every
reader relies on (model name and arguments, class table, tiling settings) as typed attributes and keeps the
rest (training settings, privacy facts, round or epoch, roster...) in :attr:`ModelCard.extra`, written at the
top level exactly as before, so cards written by earlier wsiseg versions read back unchanged. A card of an
unknown format or a newer version is refused with a clear error instead of being half-understood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsiseg.classes import ClassTable
from wsiseg.errors import CheckpointError
from wsiseg.tiling.geometry import TilingConfig

__all__ = ["CARD_FORMAT", "CARD_VERSION", "ModelCard", "ModelSpec"]

CARD_FORMAT = "wsiseg-checkpoint"
#: The card version this wsiseg writes; it reads this one and every older one.
CARD_VERSION = 1
_TYPED = ("format", "version", "versions", "model", "classes", "tiling")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build: a registry name and its constructor arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    """A checkpoint's card.

    Attributes:
        model: The model to build.
        classes: The class table, as ``ClassTable.to_list`` gives it.
        tiling: The tiling settings (window, stride, size, mpp, resize kernel), as ``TilingConfig.to_dict``.
        extra: Every other top-level entry (training settings, privacy, round or epoch, roster, ...).
        version: Card format version.
        versions: Package versions of the writer (filled in when the card is saved).
    """

    model: ModelSpec
    classes: list[dict[str, Any]]
    tiling: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = CARD_VERSION
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def class_table(self) -> ClassTable:
        """The class table."""
        return ClassTable.from_list(self.classes)

    @property
    def tiling_config(self) -> TilingConfig:
        """The tiling settings, for prediction to repeat."""
        return TilingConfig.from_dict(self.tiling)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready card: the typed fields, then :attr:`extra` at the top level."""
        clash = sorted(set(self.extra) & set(_TYPED))
        if clash:
            msg = f"card extra entries {clash} would overwrite the typed fields"
            raise CheckpointError(msg)
        return {
            "format": CARD_FORMAT, "version": self.version, "versions": self.versions,
            "model": {"name": self.model.name, "args": dict(self.model.args)}, "classes": self.classes,
            "tiling": self.tiling, **self.extra,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "card") -> ModelCard:
        """Read a card (today's or an older one).

        Args:
            data: The parsed JSON.
            source: The file it came from, for messages.

        Raises:
            CheckpointError: Not a wsiseg card, a newer version than this wsiseg reads, or missing fields.
        """
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            msg = f"{source}: not a wsiseg checkpoint card"
            raise CheckpointError(msg)
        version = data.get("version", 1)
        if not isinstance(version, int) or not 1 <= version <= CARD_VERSION:
            msg = (f"{source}: card version {version!r}; this wsiseg reads versions 1 to {CARD_VERSION}: "
                   "upgrade wsiseg to load it")  # fmt: skip
            raise CheckpointError(msg)
        try:
            spec = data["model"]
            model = ModelSpec(str(spec["name"]), dict(spec.get("args", {})))
            classes, tiling = list(data.get("classes", [])), dict(data.get("tiling", {}))
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            msg = f"{source}: malformed card, no model name ({err}); the file may be damaged"
            raise CheckpointError(msg) from err
        if classes:
            try:
                ClassTable.from_list(classes)
            except (KeyError, TypeError, ValueError) as err:
                msg = f"{source}: bad class table in the card ({err}); fix the card's 'classes' or retrain"
                raise CheckpointError(msg) from err
        extra = {k: v for k, v in data.items() if k not in _TYPED}
        return cls(model, classes, tiling, extra, version, dict(data.get("versions", {})))
