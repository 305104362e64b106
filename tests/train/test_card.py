"""The typed, versioned checkpoint card: today's cards read back, unknown versions and formats are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.errors import CheckpointError
from wsiseg.models import create_model
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.train.card import CARD_VERSION, ModelCard, ModelSpec
from wsiseg.train.checkpoint import load_checkpoint, save_checkpoint


def _saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("unet_tiny", num_classes=4)
    card = ModelCard(ModelSpec("unet_tiny", {"num_classes": 4}), DEFAULT_CLASSES.to_list(),
                     TilingConfig(window=500, stride=250, size=64).to_dict(), extra={"round": 3})  # fmt: skip
    return save_checkpoint(tmp_path / "ck", model, card)


def test_card_round_trip_and_typed_fields(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = json.loads(path.read_text())
    assert list(data)[:6] == ["format", "version", "versions", "model", "classes", "tiling"]
    assert data["round"] == 3  # extras stay at the top level, as cards always had them
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.model_card.model == ModelSpec("unet_tiny", {"num_classes": 4})
    assert ckpt.model_card.tiling_config.size == 64
    assert ckpt.model_card.class_table.names == DEFAULT_CLASSES.names
    assert ckpt.model_card.extra["round"] == 3
    assert ckpt.build_model().state_dict().keys() == ckpt.weights.keys()


def test_older_cards_read_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = json.loads(path.read_text())
    old = {k: v for k, v in data.items() if k not in ("version", "versions")}  # a card without a version
    assert ModelCard.from_dict(old).version == 1
    path.write_text(json.dumps({**data, "version": CARD_VERSION + 1}))
    with pytest.raises(CheckpointError, match="upgrade wsiseg"):
        load_checkpoint(tmp_path / "ck")
    path.write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a wsiseg checkpoint card"):
        load_checkpoint(tmp_path / "ck")
    path.write_text(json.dumps({**data, "model": {"args": {}}}))
    with pytest.raises(CheckpointError, match="malformed card"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="overwrite the typed fields"):
        ModelCard(ModelSpec("unet_tiny"), [], {}, extra={"model": "x"}).to_dict()
