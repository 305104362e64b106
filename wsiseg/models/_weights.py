"""Read a local weights file without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path

import torch

from wsiseg.errors import ModelError

__all__ = ["load_weights_file"]


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` file.

    PyTorch files are read with ``weights_only=True`` (no arbitrary code). A top-level ``"model"``,
    ``"state_dict"`` or ``"model_state"`` entry (as in the official Swin/ConvNeXt releases) is unwrapped.

    Args:
        path: The file.

    Returns:
        Tensor name -> tensor.

    Raises:
        ModelError: If the file is missing or cannot be read as weights.
    """
    p = Path(path)
    if not p.is_file():
        msg = f"{p}: weights file not found; pass an existing .safetensors/.pth file or pretrained=True"
        raise ModelError(msg)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = f"{p}: cannot read weights ({err}); expected a safetensors file or a PyTorch state dict"
        raise ModelError(msg) from err
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        msg = f"{p}: not a state dict of tensors"
        raise ModelError(msg)
    return obj
