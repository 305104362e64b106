"""A tiny untrained checkpoint in seconds, for tests and benchmarks of prediction (no training run needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["tiny_checkpoint"]


def tiny_checkpoint(
    path: Path,
    *,
    window: int = 128,
    stride: int = 64,
    size: int = 32,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a randomly initialised ``unet_tiny`` with the default classes as checkpoint ``path``.

    Args:
        path: Checkpoint name (``.safetensors`` and ``.json`` are added).
        window: Tiling window (level-0 px) recorded in the card.
        stride: Tiling stride (level-0 px).
        size: Model input size.
        seed: Torch seed of the initial weights (same seed, same weights).
        extra: Further card entries (for example a ``privacy`` summary as ``fed-train`` writes it).

    Returns:
        ``path`` (pass it to ``--checkpoint``).
    """
    import torch

    from wsiseg.classes import DEFAULT_CLASSES
    from wsiseg.models import create_model
    from wsiseg.tiling.geometry import TilingConfig
    from wsiseg.train.card import ModelCard, ModelSpec
    from wsiseg.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    net = create_model("unet_tiny", pretrained=False)
    card = ModelCard(ModelSpec("unet_tiny", {}), DEFAULT_CLASSES.to_list(),
                     TilingConfig(window=window, stride=stride, size=size).to_dict(), dict(extra or {}))  # fmt: skip
    save_checkpoint(path, net, card)
    return path
