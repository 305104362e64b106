"""Norm conversion for existing module trees, so any backbone can be made DP-safe.

Torchvision and timm backbones are built with BatchNorm. ``batchnorm_to_groupnorm`` replaces every BatchNorm
layer by a GroupNorm over the same channels and keeps the module names and nesting, so the state-dict keys of
all other layers (and the ``weight``/``bias`` keys of the norms) stay the same.
"""

from __future__ import annotations

import copy

from torch import nn

from wsiseg.models.layers.norm import canonical_norm, group_count

__all__ = ["apply_norm", "batchnorm_names", "batchnorm_to_groupnorm", "check_norm"]


def batchnorm_to_groupnorm(module: nn.Module, max_groups: int = 32) -> nn.Module:
    """Return a copy of ``module`` with every BatchNorm layer replaced by a GroupNorm.

    Each ``BatchNorm{1,2,3}d`` with ``C`` channels becomes ``GroupNorm(g, C)`` with ``g`` the largest
    divisor of ``C`` that is at most ``max_groups``. The epsilon is kept, and the affine ``weight``/``bias``
    are copied so pretrained scale and shift survive; running statistics are dropped (GroupNorm has none).
    Module names and nesting are unchanged. The input module is not modified.

    Args:
        module: Any module tree.
        max_groups: Upper bound on the number of groups.

    Returns:
        The converted copy.
    """
    return _swap_batchnorm(copy.deepcopy(module), max_groups)


def _swap_batchnorm(module: nn.Module, max_groups: int) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _group_norm_like(module, max_groups)
    for name, child in list(module.named_children()):
        new = _swap_batchnorm(child, max_groups)
        if new is not child:
            setattr(module, name, new)
    return module


def batchnorm_names(module: nn.Module) -> list[str]:
    """Return the qualified names of all BatchNorm layers in ``module`` (empty when DP-safe)."""
    return [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def apply_norm(module: nn.Module, norm: str) -> nn.Module:
    """Apply the ``norm`` choice of a model entry point to a model built with BatchNorm.

    Args:
        module: The model.
        norm: ``"batchnorm"`` (keep as built) or ``"groupnorm"`` (convert every BatchNorm).

    Returns:
        ``module`` itself for ``"batchnorm"``, a converted copy for ``"groupnorm"``.

    Raises:
        ModelError: For an unknown norm name.
    """
    key = check_norm(norm)
    return batchnorm_to_groupnorm(module) if key == "groupnorm" else module


def check_norm(norm: str) -> str:
    """Return the canonical norm name (``"batchnorm"`` or ``"groupnorm"``) for ``norm``.

    Raises:
        ModelError: For an unknown norm name.
    """
    return canonical_norm(norm)


def _group_norm_like(bn: nn.modules.batchnorm._BatchNorm, max_groups: int) -> nn.GroupNorm:
    gn = nn.GroupNorm(group_count(bn.num_features, max_groups), bn.num_features, eps=bn.eps)
    if bn.affine:
        gn.weight.data.copy_(bn.weight.data)
        gn.bias.data.copy_(bn.bias.data)
    if bn.weight is not None:
        gn.weight.requires_grad_(bn.weight.requires_grad)
        gn.bias.requires_grad_(bn.bias.requires_grad)
    return gn
