"""ImageNet initialisation of DHUnet's two encoders, with the authors' stage-3 block renumbering.

DHUnet's encoders are shallower than Swin-T (2,2,6,2) and ConvNeXt-T (3,3,9,3) in stage 3 (index 2). Like the
authors' ``load_from``, we load selected deep blocks there, keeping Swin's unshifted/shifted alternation:

* Swin ``layers.2.blocks``: 2 -> 0, 5 -> 1;
* ConvNeXt ``stages.2.blocks``: 2 -> 0, 5 -> 1, 8 -> 2.

Every other encoder tensor loads by name; heads and final norms are not used. The decoder keeps its random
initialisation. Sources are either local files (safetensors or ``.pth``, in timm naming or in the original
Microsoft/FB naming, optionally wrapped in ``{"model": ...}``) or ``True``: download the timm weights
``swin_tiny_patch4_window7_224.ms_in1k`` and ``convnext_tiny.fb_in1k`` (needs network access).

``create_model("dhunet", pretrained=X)`` accepts ``X=True`` or a *directory* that holds exactly one weights
file whose name contains ``swin`` and one whose name contains ``convnext`` (e.g.
``swin_tiny_patch4_window7_224.pth`` and ``convnext_tiny_1k_224.pth``, the authors' file names).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn

from wsiseg.errors import ModelError
from wsiseg.models._weights import load_weights_file

__all__ = [
    "CONVNEXT_HUB_NAME",
    "CONVNEXT_STAGE3_MAP",
    "SWIN_HUB_NAME",
    "SWIN_STAGE3_MAP",
    "BranchReport",
    "load_dhunet_pretrained",
    "renumber_stage_blocks",
    "resolve_pretrained_dir",
]

SWIN_HUB_NAME = "swin_tiny_patch4_window7_224.ms_in1k"
CONVNEXT_HUB_NAME = "convnext_tiny.fb_in1k"
#: Source block -> DHUnet block in stage 3 (index 2), from the authors' ``load_from``.
SWIN_STAGE3_MAP: dict[int, int] = {2: 0, 5: 1}
CONVNEXT_STAGE3_MAP: dict[int, int] = {2: 0, 5: 1, 8: 2}
#: Stage-3 block keys: Swin (same in both namings), ConvNeXt timm (``blocks.``) and FB naming.
_SWIN_BLOCK = re.compile(r"^(layers\.2\.blocks\.)(\d+)(\..+)$")
_CONVNEXT_BLOCK = re.compile(r"^(stages\.2\.(?:blocks\.)?)(\d+)(\..+)$")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

Source = bool | str | Path


@dataclass(frozen=True)
class BranchReport:
    """What happened when one encoder was initialised.

    Attributes:
        source: The file or timm name the weights came from.
        loaded: Number of tensors loaded into the encoder.
        missing: Encoder tensors the source did not provide (empty after a strict load).
        mismatched: Encoder tensors whose source shape differs (empty after a strict load).
        unexpected: Source tensors the encoder has no place for (head, final norm).
        dropped: Stage-3 source blocks left out by the renumbering.
    """

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def renumber_stage_blocks(
    state: Mapping[str, torch.Tensor], pattern: re.Pattern[str], mapping: Mapping[int, int]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Renumber the stage-3 blocks of a state dict and drop the blocks the mapping leaves out.

    Args:
        state: Source tensors.
        pattern: Regex with groups (prefix, block index, rest) that matches stage-3 block keys.
        mapping: Source block index -> target block index.

    Returns:
        The renumbered state dict and the sorted list of dropped keys.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        m = pattern.match(key)
        if m is None:
            out[key] = value
        elif int(m.group(2)) in mapping:
            out[f"{m.group(1)}{mapping[int(m.group(2))]}{m.group(3)}"] = value
        else:
            dropped.append(key)
    return out, sorted(dropped)


def resolve_pretrained_dir(path: str | Path) -> tuple[Path, Path]:
    """Find the Swin and ConvNeXt weight files in a directory.

    Args:
        path: Directory with exactly one ``*swin*`` and one ``*convnext*`` weights file.

    Returns:
        ``(swin_file, convnext_file)``.

    Raises:
        ModelError: If ``path`` is not such a directory.
    """
    d = Path(path)
    hint = "pass a directory with one *swin*.pth|.safetensors and one *convnext* weights file, or True"
    if not d.is_dir():
        msg = f"{d}: DHUnet pretrained= must be a directory; {hint}"
        raise ModelError(msg)
    files = [p for p in sorted(d.iterdir()) if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]
    found = []
    for word in ("swin", "convnext"):
        hits = [p for p in files if word in p.name.lower()]
        if len(hits) != 1:
            msg = f"{d}: found {len(hits)} weights files named *{word}* (need exactly 1); {hint}"
            raise ModelError(msg)
        found.append(hits[0])
    return found[0], found[1]


def load_dhunet_pretrained(
    model: nn.Module, swin: Source = True, convnext: Source = True, *, strict: bool = True
) -> dict[str, BranchReport]:
    """Initialise DHUnet's encoders from ImageNet Swin-T and ConvNeXt-T weights.

    Args:
        model: A DHUnet (any module with ``global_encoder`` and ``local_encoder``).
        swin: Swin-T weights: a file, ``True`` to download ``SWIN_HUB_NAME``, or ``False`` to skip.
        convnext: ConvNeXt-T weights: a file, ``True`` to download ``CONVNEXT_HUB_NAME``, or ``False``.
        strict: Raise if an encoder tensor is missing from the source or has another shape.

    Returns:
        ``{"global": BranchReport, "local": BranchReport}`` for the branches that were loaded.

    Raises:
        ModelError: Unreadable or missing source, failed download, or (strict) weights that do not fit.
    """
    from timm.models import convnext as timm_convnext
    from timm.models import swin_transformer as timm_swin

    global_encoder = cast(nn.Module, model.global_encoder)
    local_encoder = cast(nn.Module, model.local_encoder)
    branches = (
        ("global", swin, global_encoder, SWIN_HUB_NAME, _SWIN_BLOCK, SWIN_STAGE3_MAP,
         timm_swin.checkpoint_filter_fn),
        ("local", convnext, local_encoder, CONVNEXT_HUB_NAME, _CONVNEXT_BLOCK, CONVNEXT_STAGE3_MAP,
         timm_convnext.checkpoint_filter_fn),
    )  # fmt: skip
    reports: dict[str, BranchReport] = {}
    for name, src, encoder, hub, pattern, mapping, filter_fn in branches:
        if src is False or src is None:
            continue
        label = hub if src is True else str(src)
        state = _download(hub) if src is True else load_weights_file(src)
        reports[name] = _load_branch(encoder, state, label, pattern, mapping, filter_fn, strict=strict)
    return reports


def _load_branch(
    encoder: nn.Module,
    state: dict[str, torch.Tensor],
    label: str,
    pattern: re.Pattern[str],
    mapping: Mapping[int, int],
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]],
    *,
    strict: bool,
) -> BranchReport:
    target = encoder.state_dict()
    depth = 1 + max((int(m.group(2)) for k in target if (m := pattern.match(k))), default=-1)
    src_depth = 1 + max((int(m.group(2)) for k in state if (m := pattern.match(k))), default=-1)
    dropped: list[str] = []
    if src_depth > depth:  # a deeper ImageNet model: apply the authors' renumbering
        state, dropped = renumber_stage_blocks(state, pattern, mapping)
    try:
        state = filter_fn(state, encoder)
    except (KeyError, RuntimeError, ValueError, AttributeError) as err:
        msg = f"{label}: weights do not fit the DHUnet encoder ({err}); use Swin-T/ConvNeXt-T weights"
        raise ModelError(msg) from err
    missing = sorted(k for k in target if k not in state)
    mismatched = sorted(k for k in target if k in state and state[k].shape != target[k].shape)
    unexpected = sorted(k for k in state if k not in target)
    if strict and (missing or mismatched):
        bad = [*missing[:3], *(f"{k} {tuple(state[k].shape)}" for k in mismatched[:3])]
        msg = f"{label}: {len(missing)} missing and {len(mismatched)} mis-shaped encoder tensors (e.g. "
        msg += f"{', '.join(bad)}); pass ImageNet Swin-T/ConvNeXt-T weights or strict=False"
        raise ModelError(msg)
    ok = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    encoder.load_state_dict(ok, strict=False)
    return BranchReport(label, len(ok), missing, mismatched, unexpected, dropped)


def _download(hub_name: str) -> dict[str, torch.Tensor]:
    import timm

    try:
        reference = timm.create_model(hub_name, pretrained=True)
    except Exception as err:
        msg = f"cannot download {hub_name} ({type(err).__name__}: {err}); offline? pass a local weights "
        msg += "directory as pretrained=DIR or use pretrained=False"
        raise ModelError(msg) from err
    return reference.state_dict()
