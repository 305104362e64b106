"""fed-train on the generated cohort: learning, DP modes, accounting, budget stop, resume, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.data.dataset import load_sources, load_tile
from wsiseg.errors import ConfigError, DataError, PrivacyError
from wsiseg.federated.config import FedConfig
from wsiseg.federated.rounds import FedResult, run_federated
from wsiseg.train.baselines import BASELINE_NAMES
from wsiseg.train.checkpoint import load_checkpoint

TINY = {"model": "dhunet_tiny", "model_args": {"img_size": 64}}
TINY_FLAGS = ["--model", "dhunet_tiny", "--img-size", "64"]


def _cfg(tiles: Path, **kw: object) -> FedConfig:
    base = {"data": (str(tiles),), "clients": 2, "partition": "by-site", "rounds": 2, "local_steps": 2,
            "batch_size": 8, "seed": 3, "eval_every": 1, **TINY}  # fmt: skip
    return FedConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_plain_fl_learns_above_chance(tiles64: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiles64, dp="none", rounds=5, local_steps=None, local_epochs=1, lr=0.02)
    res = run_federated(cfg, runs_root=tmp_path)
    assert res.epsilon is None
    dice = res.final_metrics["paper"]["dice"]
    assert dice > 0.6, dice
    rows = (res.run_dir / "rounds.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5
    assert (res.run_dir / "curves.png").is_file()
    card = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())
    assert card["privacy"]["dp"] == "none"
    assert card["roster"] == ["client0", "client1"]
    _check_baselines(res, tiles64)


def _check_baselines(res: FedResult, tiles: Path) -> None:
    """The baselines are fitted on every site's training slides and scored on the model's held-out tiles."""
    split = json.loads((res.run_dir / "split.json").read_text())["clients"]
    train_ids = [s for c in split for s in c["train_slides"]]
    heldout = [s for c in split for s in c["heldout_slides"]]
    source = load_sources([tiles])
    pixels = np.zeros(len(source.classes), dtype=np.int64)
    for root, rec in source.subset(train_ids).records:
        mask = load_tile(root, rec)[1]
        assert mask is not None
        pixels += np.bincount(np.asarray(mask).reshape(-1), minlength=len(pixels))[: len(pixels)]
    majority = int(np.argmax(pixels[1:])) + 1  # most frequent tissue class of the pooled training slides
    assert res.final_report is not None
    assert set(res.baselines) == set(BASELINE_NAMES)
    for rep in res.baselines.values():
        assert rep.num_slides == res.final_report.num_slides == len(heldout)
        assert rep.num_pixels == res.final_report.num_pixels
    cmm = res.baselines["majority class"].confusion_metrics
    assert cmm["dice"][majority] > 0
    assert all(cmm["dice"][c] == 0 for c in cmm["present_classes"] if c != majority)
    saved = json.loads((res.run_dir / "metrics.json").read_text())["baselines"]
    assert saved["majority class"]["mean_dice"] == pytest.approx(res.baselines["majority class"].mean_dice)


def test_fed_train_prints_the_model_beside_the_baselines(tiles64: Path, tmp_path: Path) -> None:
    args = ["fed-train", "--data", str(tiles64), "--clients", "2", "--partition", "by-site", "--rounds", "1",
            "--local-steps", "1", "--dp", "none", "--runs", str(tmp_path), *TINY_FLAGS]  # fmt: skip
    res = CliRunner().invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "majority class" in text
    assert "colour rule" in text
    assert "baselines fitted on the training slides of all sites pooled" in text
    assert "beats the best baseline" in text or "does NOT beat" in text


def test_central_dp_ledger_and_logs(tiles64: Path, tmp_path: Path) -> None:
    res = run_federated(_cfg(tiles64, dp="central", sigma=0.05, clip=0.5), runs_root=tmp_path)
    # paper setting, all clients: one round is already epsilon ~284 at delta 1e-5 (privacy.md 2.2)
    rows = (res.run_dir / "privacy.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(","), strict=True))
    assert abs(float(first["epsilon_pld"]) - 284.4) < 1.0
    assert float(first["noise_std_sum"]) == pytest.approx(0.025)
    assert float(first["noise_std_mean"]) == pytest.approx(0.0125)
    assert res.epsilon is not None
    assert res.epsilon > float(first["epsilon_pld"])
    card = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())
    assert card["privacy"]["noise_source"] == "os-entropy"  # --seed 3 never seeds the noise
    assert "seed" not in card["fed_config"]
    assert card["model"]["args"]["norm"] == "groupnorm"
    assert "resume" not in card  # the noise generator state never leaves checkpoints/last
    last = json.loads((res.run_dir / "checkpoints" / "last.json").read_text())
    assert last["resume"]["train_seed"] == 3


def test_local_dp_accounts_without_amplification(tiles64: Path, tmp_path: Path) -> None:
    res = run_federated(_cfg(tiles64, dp="local", sigma=1.0, fraction=0.5, rounds=1), runs_root=tmp_path)
    ledger = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())["privacy"]["ledger"]
    assert ledger["entries"][0]["sample_rate"] == 1.0


def test_resume_after_interruption_matches(tiles64: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiles64, dp="central", sigma=0.5, clip=0.5, rounds=3, eval_every=3, noise_seed=3)
    full = run_federated(cfg, runs_root=tmp_path / "a")
    part = run_federated(cfg, runs_root=tmp_path / "b", stop_after=1)
    assert not (part.run_dir / "checkpoints" / "final.json").exists()
    resumed = run_federated(cfg, resume_dir=part.run_dir)
    w1 = load_checkpoint(full.run_dir / "checkpoints" / "final").weights
    w2 = load_checkpoint(resumed.run_dir / "checkpoints" / "final").weights
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert resumed.epsilon == pytest.approx(full.epsilon)
    privacy_rows = (resumed.run_dir / "privacy.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in privacy_rows[1:]] == ["1", "2", "3"]


def test_target_epsilon_calibrates_and_stops(tiles64: Path, tmp_path: Path) -> None:
    cal = run_federated(_cfg(tiles64, target_epsilon=30.0, rounds=2, eval_every=5), runs_root=tmp_path / "c")
    assert cal.epsilon is not None
    assert 27.0 < cal.epsilon <= 30.0
    # sigma given explicitly: train until the next round would exceed the budget
    stop = run_federated(_cfg(tiles64, sigma=0.5, target_epsilon=16.0, rounds=10, eval_every=5),
                         runs_root=tmp_path / "s")  # fmt: skip
    assert stop.stopped_early.startswith("stopped before round")
    assert stop.rounds_done < 10
    assert stop.epsilon is not None
    assert stop.epsilon <= 16.0


def test_dp_refuses_batchnorm(tiles64: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiles64, model="dhunet_tiny", model_args={"img_size": 64, "norm": "batchnorm"})
    with pytest.raises(PrivacyError, match="groupnorm"):
        run_federated(cfg, runs_root=tmp_path)


def test_bad_client_data(tiles64: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(tiles64, site)
    for img in site.glob("*/images/*.jpg"):
        img.write_bytes(b"not a jpeg")
    cfg = _cfg(tiles64, client_dirs=(str(site), str(tiles64)), partition="iid")
    with pytest.raises(DataError, match="corrupt tile"):
        run_federated(cfg, runs_root=tmp_path / "r")
    with pytest.raises(DataError, match="no manifest"):
        run_federated(_cfg(tiles64, client_dirs=(str(tmp_path / "empty"), str(tiles64))), runs_root=tmp_path)


def test_dry_run_prints_plan_and_warning(tiles64: Path) -> None:
    args = ["fed-train", "--data", str(tiles64), "--clients", "5", "--sigma", "0.05", "--clip", "0.5",
            "--model", "dhunet_tiny", "--img-size", "64", "--dry-run"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "284.4" in text  # round 1
    assert "3.104e+04" in text  # round 150, privacy.md: about 31,000
    assert "WARNING" in text
    assert "no meaningful formal privacy" in text
    assert "C/sigma" not in text.replace(" ", "")
    assert np.isfinite(float(text.split("noise std on the sum ")[1].split(",")[0]))


def test_time_budget_stops_after_a_round_with_a_final_checkpoint(tiles64: Path, tmp_path: Path) -> None:
    # a budget that every round exceeds: the run stops after round 1 of 3, cleanly, whatever the machine's speed
    res = run_federated(_cfg(tiles64, dp="central", sigma=1.0, rounds=3, local_steps=1, time_budget=1e-9),
                        runs_root=tmp_path)  # fmt: skip
    assert res.rounds_done == 1
    assert "time budget" in res.stopped_early
    card = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())
    assert card["round"] == 1
    assert len(card["privacy"]["ledger"]["entries"]) == 1  # only what was released is accounted
    with pytest.raises(ConfigError, match="--time-budget"):
        _cfg(tiles64, time_budget=0)
