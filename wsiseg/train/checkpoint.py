"""Checkpoints: safetensors weights plus a JSON card. Loading never unpickles anything.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``. The card holds the model name and
arguments, the class table, the tiling settings (so ``predict`` repeats nothing), the training config, the
privacy ledger when there is one, and package versions. Training state for ``--resume`` (optimizer buffers
and RNG states) goes in ``NAME.state.safetensors`` and the card's ``state`` entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from wsiseg.config import package_versions
from wsiseg.errors import CheckpointError
from wsiseg.fileio import default_mode
from wsiseg.train.card import CARD_FORMAT, CARD_VERSION, ModelCard

__all__ = [
    "CARD_FORMAT",
    "Checkpoint",
    "checkpoint_paths",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


class Checkpoint:
    """A loaded checkpoint: weights, card (as JSON and as a typed :class:`ModelCard`), optional training state."""

    def __init__(self, path: Path, weights: dict[str, torch.Tensor], card: dict[str, Any],
                 state: dict[str, torch.Tensor] | None) -> None:  # fmt: skip
        self.path = path
        self.weights = weights
        self.card = card
        self.model_card = ModelCard.from_dict(card, source=str(path))
        self.state = state

    def build_model(self, *, strict: bool = True) -> nn.Module:
        """Create the model named in the card and load the weights into it.

        Raises:
            CheckpointError: If the weights do not fit the model.
        """
        from wsiseg.models import create_model

        spec = self.model_card.model
        model = create_model(spec.name, **{**spec.args, "pretrained": False})
        try:
            model.load_state_dict(self.weights, strict=strict)
        except RuntimeError as err:
            msg = f"{self.path}: weights do not fit model {spec.name!r} ({str(err).splitlines()[0]})"
            raise CheckpointError(msg) from err
        return model


def checkpoint_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """Return ``(weights, card, state)`` paths for a checkpoint given as ``NAME``, ``NAME.json`` or a file."""
    p = Path(path)
    for suffix in (".state.safetensors", ".safetensors", ".json"):
        if p.name.endswith(suffix):
            p = p.with_name(p.name[: -len(suffix)])
            break
    return (p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json"),
            p.with_name(p.name + ".state.safetensors"))  # fmt: skip


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; contiguous CPU clones are safe and cheap at these sizes.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, mode: int, meta: dict[str, str] | None = None) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(mode)
    return tmp


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    card: dict[str, Any] | ModelCard,
    *,
    state: dict[str, torch.Tensor] | None = None,
    private: bool = False,
) -> Path:
    """Write weights, card and optional training state; each file appears complete or not at all.

    Args:
        path: Checkpoint name (``run/checkpoints/last``); suffixes are added.
        model: The model (its ``state_dict`` is saved, buffers included).
        card: The card (a :class:`ModelCard` or its JSON-ready dict); ``format``, ``version`` and ``versions``
            are filled in.
        state: Extra tensors for resuming (optimizer buffers, RNG states).
        private: Owner-only files (0600), for checkpoints that hold resume state (generator states, seeds);
            otherwise the usual umask-based mode of a file meant to be shared.

    Returns:
        The card path.
    """
    weights_path, card_path, state_path = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    data = card.to_dict() if isinstance(card, ModelCard) else dict(card)
    fixed = {"format": CARD_FORMAT, "version": CARD_VERSION, "versions": package_versions()}
    full = {**fixed, **{k: v for k, v in data.items() if k not in fixed}}
    ModelCard.from_dict(full, source=str(card_path))  # a card that predict could not read is never written
    mode = 0o600 if private else default_mode()
    pending = [(_atomic_save(_tensors(model.state_dict()), weights_path, mode, {"format": CARD_FORMAT}),
                weights_path)]  # fmt: skip
    if state is not None:
        pending.append((_atomic_save(_tensors(state), state_path, mode), state_path))
    tmp_card = card_path.with_name(f".{card_path.name}.tmp{os.getpid()}")
    fd = os.open(tmp_card, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(full, indent=2, default=_json_default))
    tmp_card.chmod(mode)
    pending.append((tmp_card, card_path))
    for tmp, final in pending:  # card last: a card always points at complete weights
        os.replace(tmp, final)
    return card_path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    msg = f"cannot serialise {type(obj).__name__} in a checkpoint card"
    raise TypeError(msg)


def load_checkpoint(path: str | Path, *, with_state: bool = False) -> Checkpoint:
    """Load a checkpoint's weights and card (and training state when asked).

    Raises:
        CheckpointError: Missing files, a card that is not a wsiseg card, or unreadable weights.
    """
    weights_path, card_path, state_path = checkpoint_paths(path)
    if not card_path.is_file() or not weights_path.is_file():
        msg = f"{card_path.with_suffix('')}: checkpoint not found (need .safetensors and .json); check --checkpoint"
        raise CheckpointError(msg)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        msg = f"{card_path}: corrupt checkpoint card ({err})"
        raise CheckpointError(msg) from err
    ModelCard.from_dict(card, source=str(card_path))  # refuses foreign, newer or malformed cards
    try:
        weights = load_file(str(weights_path))
        state = load_file(str(state_path)) if with_state and state_path.is_file() else None
    except (SafetensorError, OSError) as err:
        msg = f"{weights_path}: unreadable weights ({err}); the file may be truncated"
        raise CheckpointError(msg) from err
    if with_state and state is None:
        msg = f"{state_path}: training state missing; cannot resume from this checkpoint"
        raise CheckpointError(msg)
    return Checkpoint(card_path.with_suffix(""), weights, card, state)


def rng_state() -> dict[str, torch.Tensor]:
    """Global torch RNG states (CPU and every CUDA device) as tensors, for a resumable checkpoint."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda{i}"] = st
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what ``rng_state`` saved."""
    if "rng.cpu" in state:
        torch.set_rng_state(state["rng.cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(state) if k.startswith("rng.cuda")]
        if cuda:
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])
