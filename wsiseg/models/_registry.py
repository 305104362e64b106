"""Model registry: a small dict of entry points filled by ``@register_model``.

Each model family lives in its own module and registers one entry point per variant (the full model and a
``*_tiny`` variant for CPU tests). Entry points take keyword arguments only
(``num_classes``, ``pretrained``, ``norm`` and family-specific ones) and return an ``nn.Module``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from wsiseg.errors import ModelError

__all__ = ["ModelEntry", "get_entry", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model variant.

    Attributes:
        name: Registry name, e.g. ``"dhunet"`` or ``"dhunet_tiny"``.
        fn: Entry point returning the module.
        family: Model family (module name), e.g. ``"dhunet"``.
        paper_row: The FedDP Table-I row (Dice/Jaccard/Acc for centralised, FL, FedDP) as text, or ``""``.
        tiny: True for the small test variant.
        meta: Free-form facts (expected parameter count, supported input sizes...).
    """

    name: str
    fn: Callable[..., nn.Module]
    family: str
    paper_row: str = ""
    tiny: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def input_size(self, wanted: int = 224) -> int:
        """The input side to use: ``wanted``, or the built-in size of a model fixed to one (``fixed_size`` meta).

        Swin and ViT variants built without an ``img_size`` argument (the tiny ones) only take their own size.
        """
        return int(self.meta["img_size"]) if self.meta.get("fixed_size") else wanted


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    family: str,
    paper_row: str = "",
    tiny: bool = False,
    force: bool = False,
    **meta: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model entry point under ``name``.

    Args:
        name: Registry name.
        family: Model family.
        paper_row: FedDP Table-I row for ``wsiseg models``.
        tiny: Whether this is the tiny test variant.
        force: Replace an existing entry instead of raising.
        **meta: Extra facts stored on the entry.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: If ``name`` is already registered and ``force`` is False.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS and not force:
            msg = f"model {name!r} is already registered"
            raise ValueError(msg)
        _MODELS[name] = ModelEntry(name, fn, family, paper_row, tiny, dict(meta))
        return fn

    return decorator


def list_models(pattern: str = "*", *, include_tiny: bool = True) -> list[str]:
    """Return the sorted registered names that match a glob ``pattern``."""
    _ensure_loaded()
    return sorted(n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (include_tiny or not e.tiny))


def get_entry(name: str) -> ModelEntry:
    """Return the entry for ``name``.

    Raises:
        ModelError: If the name is unknown; the message lists the known names.
    """
    _ensure_loaded()
    if name not in _MODELS:
        msg = f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}"
        raise ModelError(msg)
    return _MODELS[name]


def _ensure_loaded() -> None:
    # Importing the package registers every family module.
    import wsiseg.models  # noqa: F401
