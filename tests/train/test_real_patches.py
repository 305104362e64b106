"""A brief training run on the real WSSS4LUAD patches in ../shared beats the majority class on held-out patches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATCHES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wsss4luad"
RECIPE = Path(__file__).resolve().parents[2] / "examples" / "patch_recipe.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (PATCHES / "img").is_dir(), reason="shared WSSS4LUAD patches not present"),
]


def test_brief_training_beats_majority_class_on_held_out_patches(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("patch_recipe", RECIPE)
    assert spec is not None
    assert spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    from wsiseg.train.trainer import run_training

    tiles = recipe.tile_patches(PATCHES / "img", PATCHES / "mask", tmp_path / "tiles")
    cfg = recipe.recipe_config(tiles, fold=0, folds=5, budget=None, epochs=8, seed=1)
    summary = run_training(cfg, runs_root=tmp_path / "runs").final_metrics
    majority = summary["baselines"]["majority class"]["mean_dice"]
    assert summary["mean_dice"] > majority + 0.1
