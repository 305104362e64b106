"""What every prediction output records about the model that made it: checkpoint id, card digest, privacy.

``wsiseg predict`` puts :func:`checkpoint_provenance` into the mask's provenance (TIFF description and JSON
sidecar), next to the slide, the tiling settings and the wsiseg version that :func:`wsiseg.inference.slide.
predict_slide` adds; ``wsiseg export`` copies the :data:`OUTPUT_PROVENANCE_KEYS` of a mask into its GeoJSON
(``FeatureCollection`` ``properties``) and its areas CSV (one column each), so any output traces back to the
exact weights, card and privacy guarantee.

Fields:
    checkpoint: The checkpoint's path as given (``runs/.../checkpoints/final``).
    checkpoint_id: The first 16 hex digits of the SHA-256 of the weights file: the same weights give the same
        id wherever they are copied.
    card_sha256: SHA-256 (hex) of the card file's bytes.
    dp: The differential-privacy mode the model was trained with (``central``, ``local``, ``sample``), or
        ``None`` when it was not trained with DP.
    epsilon: The privacy ledger's final epsilon (at ``delta``), or ``None`` without DP.
    delta: The delta that epsilon holds for, or ``None``.
    privacy_unit: What one unit of privacy protects (``one client (all of its slides)``, ``tile``, ``slide``,
        ``patient``), or ``None``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsiseg.train.checkpoint import Checkpoint

__all__ = ["OUTPUT_PROVENANCE_KEYS", "checkpoint_provenance", "file_sha256"]

#: The provenance fields that every output of a prediction carries (mask sidecar, GeoJSON, areas CSV).
OUTPUT_PROVENANCE_KEYS = (
    "checkpoint", "checkpoint_id", "card_sha256", "dp", "epsilon", "delta", "privacy_unit", "wsiseg_version",
    "tiling",
)  # fmt: skip


def file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_provenance(ckpt: Checkpoint) -> dict[str, Any]:
    """The provenance fields of a loaded checkpoint (see the module docstring)."""
    from wsiseg.train.checkpoint import checkpoint_paths  # torch: only when a checkpoint is at hand

    weights, card, _ = checkpoint_paths(ckpt.path)
    found = ckpt.card.get("privacy")
    privacy: dict[str, Any] = found if isinstance(found, dict) else {}
    private = privacy.get("epsilon") is not None
    return {
        "checkpoint": str(ckpt.path),
        "checkpoint_id": file_sha256(weights)[:16],
        "card_sha256": file_sha256(card),
        "dp": privacy.get("dp") if private else None,
        "epsilon": float(privacy["epsilon"]) if private else None,
        "delta": privacy.get("delta") if private else None,
        "privacy_unit": privacy.get("unit") if private else None,
    }
