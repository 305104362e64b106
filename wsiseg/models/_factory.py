"""``create_model``: build any registered model by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from wsiseg.models._registry import get_entry

__all__ = ["create_model"]


def create_model(
    name: str,
    *,
    num_classes: int = 4,
    pretrained: bool | str | None = None,
    norm: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a segmentation model from the registry.

    Keyword arguments set to ``None`` are dropped, so CLI defaults never override a model's own defaults.

    Args:
        name: Registry name (see ``list_models()``).
        num_classes: Number of output classes (background included).
        pretrained: ``False``/``None`` for random init, ``True`` for the default ImageNet weights (downloads
            when online), or a path to a local weights file.
        norm: Decoder norm: ``"batchnorm"`` (paper default) or ``"groupnorm"`` (DP training).
        **kwargs: Family-specific arguments.

    Returns:
        The model. Its ``forward`` returns logits ``(B, num_classes, H, W)`` at the input resolution; models
        with deep supervision return a list ``[final, aux...]`` in training mode only.

    Raises:
        ModelError: Unknown name or invalid arguments.

    Example:
        >>> model = create_model("dhunet_tiny", num_classes=4)
    """
    entry = get_entry(name)
    args = {"num_classes": num_classes, "pretrained": pretrained, "norm": norm, **kwargs}
    args = {k: v for k, v in args.items() if v is not None}
    return entry.fn(**args)
