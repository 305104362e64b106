"""Centralised training on the generated cohort: learning, run folder, checkpoints, resume, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsiseg.data.dataset import TileDataset, load_sources
from wsiseg.errors import CheckpointError, DataError
from wsiseg.train.checkpoint import load_checkpoint
from wsiseg.train.report import MetricAccumulator
from wsiseg.train.trainer import TrainConfig, run_training, slide_split

TINY = {"model": "dhunet_tiny", "model_args": {"img_size": 64}}


def _constant_baseline_dice(tiles: Path, cfg: TrainConfig) -> float:
    """Best paper Dice of a model that predicts one class everywhere (what a broken pipeline can reach)."""
    source = load_sources([tiles])
    _, test_ids = slide_split(source, cfg)
    ds = TileDataset(source.subset(test_ids))
    best = 0.0
    for cls in range(1, 4):
        acc = MetricAccumulator(4)
        for i in range(len(ds)):
            item = ds[i]
            target = item["mask"].numpy()
            acc.update(np.full_like(target, cls), target, str(item["slide"]))
        best = max(best, float(np.nan_to_num(acc.compute().paper["dice"])))
    return best


def test_tiny_dhunet_learns_above_chance(trained_run: Path, tiles64: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    dice = metrics["paper"]["dice"]
    cfg = TrainConfig(data=(str(tiles64),), seed=5, **TINY)
    chance = _constant_baseline_dice(tiles64, cfg)
    assert chance < 0.45
    assert dice > 0.7
    assert dice > chance + 0.3


def test_run_folder_contents(trained_run: Path) -> None:
    for name in ("config.toml", "metrics.csv", "curves.png", "metrics.json"):
        assert (trained_run / name).is_file(), name
    rows = (trained_run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 10
    for ck in ("best", "last", "final"):
        assert (trained_run / "checkpoints" / f"{ck}.safetensors").is_file()
        assert (trained_run / "checkpoints" / f"{ck}.json").is_file()
    card = json.loads((trained_run / "checkpoints" / "final.json").read_text())
    assert card["model"]["name"] == "dhunet_tiny"
    assert card["tiling"]["window"] == 500
    assert card["tiling"]["size"] == 64
    assert card["tiling"]["resize"] == "bilinear"
    assert [c["name"] for c in card["classes"]] == ["background", "tumor", "stroma", "normal"]
    assert "torch" in card["versions"]


def test_checkpoint_rebuilds_same_model(trained_run: Path) -> None:
    ckpt = load_checkpoint(trained_run / "checkpoints" / "final")
    a = ckpt.build_model().eval()
    b = load_checkpoint(trained_run / "checkpoints" / "final.json").build_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_checkpoint_is_not_pickle(trained_run: Path, tmp_path: Path) -> None:
    # A pickle renamed to .safetensors must be refused, not executed.
    shutil.copy(trained_run / "checkpoints" / "final.json", tmp_path / "evil.json")
    torch.save({"x": torch.zeros(1)}, tmp_path / "evil.safetensors")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_checkpoint(tmp_path / "evil")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")


def test_resume_gives_same_weights(tiles64: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=(str(tiles64),), epochs=2, batch_size=8, max_steps_per_epoch=3, seed=9, **TINY)
    full = run_training(cfg, runs_root=tmp_path / "a")
    part = run_training(cfg, runs_root=tmp_path / "b", stop_after_epoch=1)
    assert not (part.run_dir / "checkpoints" / "final.json").exists()
    resumed = run_training(cfg, run_dir=part.run_dir, resume=True)
    w1 = load_checkpoint(full.run_dir / "checkpoints" / "final").weights
    w2 = load_checkpoint(resumed.run_dir / "checkpoints" / "final").weights
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert len((resumed.run_dir / "metrics.csv").read_text().strip().splitlines()) == 3


def _copy_tiles(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_tile_inputs(tiles64: Path, tmp_path: Path) -> None:
    tiles = _copy_tiles(tiles64, tmp_path / "t")
    source = load_sources([tiles])
    ds = TileDataset(source)
    root, rec = source.records[0]
    (root / rec.image).unlink()
    with pytest.raises(DataError, match="tile missing"):
        ds[0]
    root, rec = source.records[1]
    Image.fromarray(np.full((64, 64), 9, dtype=np.uint8)).save(root / rec.mask)
    with pytest.raises(DataError, match=r"class ids \[9\]"):
        ds[1]
    root, rec = source.records[2]
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(root / rec.mask)
    with pytest.raises(DataError, match="mask is"):
        ds[2]
    with pytest.raises(DataError, match="empty"):
        TileDataset(source.subset([]))
    with pytest.raises(DataError, match="no manifest"):
        load_sources([tmp_path / "nowhere"])


def test_class_weights_from_training_pixels_reach_the_loss_and_the_card(tiles64: Path, tmp_path: Path) -> None:
    from wsiseg.errors import ConfigError
    from wsiseg.train.baselines import fit_baselines
    from wsiseg.train.losses import balanced_class_weights
    from wsiseg.train.trainer import class_weights_for

    cfg = TrainConfig(data=(str(tiles64),), epochs=1, batch_size=8, max_steps_per_epoch=1, seed=9,
                      class_weights="balanced", **TINY)  # fmt: skip
    source = load_sources([tiles64])
    train_ids, _ = slide_split(source, cfg)
    pixels = fit_baselines(source.subset(train_ids)).class_pixels
    expected = balanced_class_weights([int(c) for c in pixels])
    assert len(set(expected)) > 1  # the generated cohort's classes are not balanced
    card = load_checkpoint(run_training(cfg, runs_root=tmp_path).run_dir / "checkpoints" / "final").card
    assert card["class_weights"] == pytest.approx(expected)
    assert class_weights_for("1,1,1,4", pixels) == [1.0, 1.0, 1.0, 4.0]
    assert class_weights_for("none", pixels) is None
    with pytest.raises(ConfigError, match="3 weights for 4 classes"):
        class_weights_for("1,1,4", pixels)
    with pytest.raises(ConfigError, match="--class-weights must be"):
        TrainConfig(class_weights="rare")
    with pytest.raises(ConfigError, match="--class-weights must be"):
        TrainConfig(class_weights="1,-1,1,1")
