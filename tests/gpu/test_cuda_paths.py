"""The CUDA paths (bf16 autocast, channels_last, pinned loaders) against the CPU results.

Marked ``gpu`` and skipped without CUDA; ``make test-all`` (or ``pytest -m gpu``) runs them on a GPU host.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from wsiseg.cli import app

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TINY = {"model": "dhunet_tiny", "model_args": {"img_size": 64}}
runner = CliRunner()


def test_training_on_cuda_learns(tiles64: Path, tmp_path: Path) -> None:
    from wsiseg.train.trainer import TrainConfig, run_training

    cfg = TrainConfig(data=(str(tiles64),), epochs=10, batch_size=8, lr=0.02, seed=5, device="cuda", **TINY)
    res = run_training(cfg, runs_root=tmp_path)
    assert res.best_dice > 0.7, res.best_dice  # the CPU test's bar: bf16 must not break learning
    rows = (res.run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 10


def test_prediction_on_cuda_agrees_with_cpu(trained_run: Path, cohort: Path, tmp_path: Path) -> None:
    model = str(trained_run / "checkpoints" / "final")
    masks = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.tif"
        res = runner.invoke(app, ["predict", str(cohort / "slide_005.svs"), "--out", str(out), "--model", model,
                                  "--device", device, "--workers", "2"])  # fmt: skip
        assert res.exit_code == 0, res.output
        masks[device] = tifffile.imread(out, level=0)
    assert masks["cpu"].shape == masks["cuda"].shape
    agree = float(np.mean(masks["cpu"] == masks["cuda"]))
    assert agree > 0.97, agree  # bf16 moves only near-tied pixels


def test_federated_dp_round_on_cuda(tiles64: Path, tmp_path: Path) -> None:
    from wsiseg.federated.config import FedConfig
    from wsiseg.federated.rounds import run_federated

    cfg = FedConfig(data=(str(tiles64),), clients=2, partition="by-site", rounds=2, local_steps=2, batch_size=8,
                    seed=3, dp="central", sigma=1.0, clip=0.5, device="cuda", **TINY)  # fmt: skip
    res = run_federated(cfg, runs_root=tmp_path)
    cpu = run_federated(FedConfig(**{**cfg.to_dict(), "device": "cpu"}), runs_root=tmp_path / "cpu")
    assert res.rounds_done == 2
    assert res.epsilon is not None
    assert math.isclose(res.epsilon, cpu.epsilon or math.nan, rel_tol=1e-9)  # the ledger does not depend on the device
    card = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())
    assert card["privacy"]["dp"] == "central"
