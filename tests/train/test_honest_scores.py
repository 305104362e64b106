"""Headline metrics over present classes, the two baselines, fixed held-out lists and bounded runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.cli._options import resolve_heldout
from wsiseg.cli._scores import verdict
from wsiseg.data.dataset import load_sources
from wsiseg.data.partition import explicit_split
from wsiseg.errors import ConfigError
from wsiseg.train.baselines import BASELINE_NAMES, colour_bin_index, evaluate_baselines, fit_baselines
from wsiseg.train.metrics import confusion_metrics
from wsiseg.train.trainer import RunClock, TrainConfig, run_training

TINY = {"model": "unet_tiny"}
runner = CliRunner()


def test_headline_mean_counts_only_classes_present_in_truth() -> None:
    # rows = truth, cols = prediction. Class 3 is absent from the truth: 2 stroma pixels predicted as it.
    cm = np.array([[5, 0, 0, 0], [0, 4, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]])
    m = confusion_metrics(cm)
    assert m["present_classes"] == [1, 2]
    assert m["present_mean_dice"] == pytest.approx((1.0 + 4 / 6) / 2)  # the stroma Dice carries the error
    assert m["mean_dice"] == pytest.approx((1.0 + 4 / 6 + 0.0) / 3)  # the old mean also punished class 3


def test_headline_mean_of_a_truth_without_tissue_is_nan() -> None:
    m = confusion_metrics(np.array([[4, 0], [0, 0]]))
    assert m["present_classes"] == []
    assert np.isnan(m["present_mean_dice"])


def test_colour_bins() -> None:
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    assert colour_bin_index(rgb, 2).tolist() == [[0, 4, 1, 7]]


def test_baselines_on_the_same_tiles(tiles64: Path) -> None:
    source = load_sources([tiles64])
    train, test = source.subset(source.slide_ids[:4]), source.subset(source.slide_ids[4:])
    fitted = fit_baselines(train)
    assert fitted.majority == int(np.argmax(fitted.class_pixels[1:])) + 1
    assert fitted.lut.shape == (16**3,)
    reports = evaluate_baselines(fitted, test)
    assert list(reports) == list(BASELINE_NAMES)
    majority = reports["majority class"]
    # the majority baseline predicts one class: its Dice is 0 for every other class present
    dice = majority.confusion_metrics["dice"]
    assert all(dice[c] == 0 for c in majority.confusion_metrics["present_classes"] if c != fitted.majority)
    assert reports["colour rule"].num_pixels == majority.num_pixels


def test_explicit_split_and_its_errors() -> None:
    assert explicit_split(["a", "b", "c"], ["c"]) == (["a", "b"], ["c"])
    with pytest.raises(ConfigError, match="not in the dataset"):
        explicit_split(["a", "b"], ["z"])
    with pytest.raises(ConfigError, match="leave some for training"):
        explicit_split(["a", "b"], ["a", "b"])
    with pytest.raises(ConfigError, match="0 goes with --heldout"):
        TrainConfig(test_fraction=0.0)
    assert TrainConfig(test_fraction=0.0, heldout=("a",)).heldout == ("a",)


def test_resolve_heldout_from_ids_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("# held out\ns1\n\ns2\n", encoding="utf-8")
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "s3.svs").write_bytes(b"")
    got = resolve_heldout([str(tmp_path / "list.txt"), str(tmp_path / "slides"), "s4", "s1"])
    assert got == ("s1", "s2", "s3", "s4")


def test_train_refuses_heldout_with_a_test_fraction(tiles64: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--data", str(tiles64), "--heldout", "x", "--test-fraction", "0.3",
                              "--runs", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 2
    assert "--heldout fixes the held-out slides" in res.output


def test_time_budget_ends_cleanly_with_a_final_checkpoint(tiles64: Path, tmp_path: Path) -> None:
    source = load_sources([tiles64])
    held = source.slide_ids[:2]
    cfg = TrainConfig(data=(str(tiles64),), epochs=50, batch_size=8, seed=3, heldout=tuple(held), test_fraction=0,
                      time_budget=1e-3, **TINY)  # fmt: skip
    res = run_training(cfg, runs_root=tmp_path)
    assert res.epochs_done == 1
    assert "time budget" in res.stop_reason
    assert (res.run_dir / "checkpoints" / "final.json").is_file()
    split = json.loads((res.run_dir / "split.json").read_text())
    assert split["test"] == held
    summary = json.loads((res.run_dir / "metrics.json").read_text())
    assert set(summary["baselines"]) == set(BASELINE_NAMES)
    assert summary["stop_reason"] == res.stop_reason


def test_budgeted_schedule_decays_to_zero_when_time_is_out() -> None:
    assert RunClock(None, 100, 0.9).lr_factor(50) == pytest.approx(0.5**0.9)
    spent = RunClock(1e-9, 100, 0.9)
    assert spent.out_of_time()
    assert spent.lr_factor(0) == 0.0


def test_evaluate_makes_a_trivial_model_visible(tiles64: Path, tmp_path: Path) -> None:
    # one step at a negligible learning rate: an untrained network, evaluated beside the baselines
    cfg = TrainConfig(data=(str(tiles64),), epochs=1, batch_size=8, max_steps_per_epoch=1, lr=1e-9, seed=4, **TINY)
    run = run_training(cfg, runs_root=tmp_path / "runs").run_dir
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "checkpoints" / "final"), "--data", str(tiles64),
                              "--out", str(tmp_path / "ev")], terminal_width=200)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "colour rule" in res.output
    assert "majority class" in res.output
    assert "does NOT beat" in res.output
    assert "paper Dice (DHUnet/FedDP)" in res.output
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    best = max(b["mean_dice"] for b in saved["baselines"].values())
    assert saved["mean_dice"] < best


def test_fed_clients_train_on_what_a_central_run_trains_on(tiles64: Path) -> None:
    from wsiseg.federated.clients import build_clients

    source = load_sources([tiles64])
    held = tuple(source.slide_ids[1:3])
    central_train, central_test = explicit_split(source.slide_ids, held)
    clients = build_clients(data=(str(tiles64),), client_dirs=(), n_clients=2, partition="iid", alpha=0.5,
                            test_fraction=0.0, seed=1, heldout=held)  # fmt: skip
    assert sorted(s for c in clients for s in c.train.slide_ids) == central_train
    assert sorted(s for c in clients if c.heldout for s in c.heldout.slide_ids) == central_test


def test_fed_train_help_shows_the_held_out_fraction() -> None:
    res = runner.invoke(app, ["fed-train", "--help"], terminal_width=200)
    assert res.exit_code == 0
    assert "--test-fraction" in res.output
    assert "--heldout" in res.output
    assert "0.3" in res.output


def test_train_prints_progress_lines_into_a_non_tty_log(tiles64: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--data", str(tiles64), "--model", "unet_tiny", "--epochs", "1",
                              "--batch-size", "4", "--max-steps-per-epoch", "3", "--log-every", "1",
                              "--runs", str(tmp_path)], terminal_width=200)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert [f"step {n:>6}" in res.output for n in (1, 2, 3)] == [True, True, True]
    assert "held-out mean Dice" in res.output


def test_verdict_names_what_the_model_beats() -> None:
    base = {"majority class": 0.19, "colour rule": 0.86}
    ok, line = verdict(0.90, base)
    assert ok
    assert "beats the best baseline (colour rule, 0.8600) by +0.0400" in line
    ok, line = verdict(0.52, base)
    assert not ok
    assert "does NOT beat the colour rule baseline (mean Dice 0.5200 vs 0.8600)" in line
    assert "beats only the majority class baseline" in line
    ok, line = verdict(0.10, base)
    assert not ok
    assert "learned nothing that a trivial rule does not do" in line
    assert not verdict(float("nan"), base)[0]
