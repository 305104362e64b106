"""Load pretrained encoder weights from a local file or a state dict, strictly for the encoder.

Model entry points take ``pretrained=False|True|path``. A path is read with ``load_weights_file`` (no
unpickling) and copied into the encoder sub-module: every encoder tensor must be present with the same shape,
while extra entries (classifier heads, deeper blocks) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wsiseg.errors import ModelError

__all__ = ["covers", "load_matching", "reject_download", "resolve_pretrained"]


def resolve_pretrained(pretrained: bool | str | Path | None) -> tuple[bool, Path | None]:
    """Split a ``pretrained`` argument into (download ImageNet weights, local file).

    Args:
        pretrained: ``False``/``None`` (random init), ``True`` (library weights) or a path.

    Returns:
        ``(True, None)`` for ``True``, ``(False, path)`` for a path and ``(False, None)`` otherwise.
    """
    if pretrained is None or pretrained is False:
        return False, None
    if pretrained is True:
        return True, None
    return False, Path(pretrained)


def reject_download(pretrained: bool | str | Path | None, name: str) -> Path | None:
    """Resolve ``pretrained`` for a model without library weights (tiny variants, U-Net).

    Args:
        pretrained: ``False``/``None`` or a path; ``True`` is refused.
        name: The model name (for messages).

    Returns:
        The local file, or None.

    Raises:
        ModelError: If ``pretrained`` is True.
    """
    download, path = resolve_pretrained(pretrained)
    if download:
        msg = f"{name} has no ImageNet weights to download; pass pretrained=False or a local weights file"
        raise ModelError(msg)
    return path


def _own_keys(target: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")}


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def covers(target: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Return whether ``state`` holds every tensor of ``target`` (by name, ignoring shapes)."""
    names = set(_strip(state))
    return all(k in names for k in _own_keys(target))


def load_matching(target: nn.Module, state: Mapping[str, torch.Tensor], *, source: str | Path, what: str) -> list[str]:
    """Copy ``state`` into ``target``; every tensor of ``target`` must be there with the same shape.

    A leading ``module.`` (DataParallel) is stripped from the keys. ``num_batches_tracked`` may be absent.

    Args:
        target: The encoder module.
        state: Tensor name -> tensor, in ``target``'s naming.
        source: Where the weights came from (for messages).
        what: What the encoder is, e.g. ``"torchvision ResNet-50"`` (for messages).

    Returns:
        The sorted keys of ``state`` that were ignored (not part of ``target``).

    Raises:
        ModelError: If tensors are missing or have the wrong shape.
    """
    state = _strip(state)
    own = target.state_dict()
    missing = [k for k in _own_keys(target) if k not in state]
    if missing:
        msg = (
            f"{source}: {len(missing)} of the {what} tensors are missing (e.g. {missing[:3]}); "
            f"pass weights saved from a {what}"
        )
        raise ModelError(msg)
    bad = [
        f"{k} {tuple(state[k].shape)}!={tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if bad:
        msg = f"{source}: {len(bad)} tensors have the wrong shape for a {what} (e.g. {bad[:3]})"
        raise ModelError(msg)
    target.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    return sorted(set(state) - set(own))
