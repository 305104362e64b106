"""``create_model``: build any registered model by name; ``args_for_tiles``: fit its input size to the tiles."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from wsiseg.errors import ModelError
from wsiseg.models._registry import get_entry

__all__ = ["args_for_tiles", "create_model"]


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


def _accepts(fn: Any, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def args_for_tiles(name: str, model_args: Mapping[str, Any], tile_size: int) -> dict[str, Any]:
    """Return ``model_args`` with the input size set to the tiles' size, or fail clearly if it cannot be.

    Models that take an ``img_size`` (DHUnet, SwinUnet, TransFuse) are built for the tile size unless the user
    set one; fully convolutional models need nothing; variants fixed to one size must match the tiles.

    Args:
        name: Registry name.
        model_args: The user's model arguments (``--img-size``, ``--norm``...).
        tile_size: Side of the training tiles in pixels (the dataset manifest's ``size``).

    Returns:
        A new dict of model arguments.

    Raises:
        ModelError: If the model cannot take tiles of this size, with the fix.
    """
    entry = get_entry(name)
    args = dict(model_args)
    if "img_size" in args:
        if int(args["img_size"]) != tile_size:
            msg = (
                f"model {name} is set to {args['img_size']} px input (--img-size) but the tiles are {tile_size} px; "
                f"pass --img-size {tile_size} or leave it out"
            )
            raise ModelError(msg)
        return args
    if _accepts(entry.fn, "img_size"):
        args["img_size"] = tile_size
    elif entry.meta.get("fixed_size") and entry.input_size() != tile_size:
        native = entry.input_size()
        msg = (
            f"model {name} takes only {native} px input but the tiles are {tile_size} px; tile with --size {native} "
            "or choose another model (wsiseg models --tiny)"
        )
        raise ModelError(msg)
    return args
