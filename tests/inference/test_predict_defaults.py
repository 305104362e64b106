"""Prediction defaults that bound memory and CPU use: batch per device, torch threads, ``--no-strips``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.cli import app
from wsiseg.export.slide_mask import predict_to_tiff
from wsiseg.inference.predictor import CPU_BATCH, PredictSettings, cpu_threads, default_batch_size
from wsiseg.models import create_model
from wsiseg.testing.synthetic import make_slide
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.train.card import ModelCard, ModelSpec
from wsiseg.train.checkpoint import load_checkpoint, save_checkpoint

runner = CliRunner()
TILING = TilingConfig(window=256, stride=128, size=32)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "s.svs"
    make_slide(path, width=1536, height=1024, seed=3)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = create_model("unet_tiny", pretrained=False)
    card = ModelCard(ModelSpec("unet_tiny", {}), DEFAULT_CLASSES.to_list(), TILING.to_dict())
    path = tmp_path_factory.mktemp("ckpt") / "init"
    save_checkpoint(path, net, card)
    return path


def test_batch_and_thread_defaults() -> None:
    assert PredictSettings().batch_size is None  # resolved per device at run time
    assert default_batch_size("cpu") == CPU_BATCH < default_batch_size("cuda") == default_batch_size("cuda:1")
    assert cpu_threads(2, cores=2, limit=2) == 1  # never below one
    assert cpu_threads(3, cores=16, limit=16) == 13
    assert cpu_threads(0, cores=8, limit=8) == 8
    assert cpu_threads(0, cores=8, limit=3) == 3  # OMP_NUM_THREADS / set_num_threads is an upper bound
    assert cpu_threads(0) >= 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_threads(0, cores=8) == 1  # the default limit is torch's own thread count
    finally:
        torch.set_num_threads(before)


def test_cpu_run_uses_small_batches_and_restores_threads(slide: Path, checkpoint: Path, tmp_path: Path) -> None:
    """Before: every CPU batch held 16 windows and torch kept all cores beside the reader processes."""
    ckpt = load_checkpoint(checkpoint)
    net = ckpt.build_model()
    seen: list[tuple[int, int]] = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        predict_to_tiff(slide, net, tmp_path / "m.tif", tiling=TILING, classes=DEFAULT_CLASSES,
                        settings=PredictSettings(workers=0, device="cpu", threads=1),
                        progress=lambda d, t: seen.append((d, torch.get_num_threads())))  # fmt: skip
        assert torch.get_num_threads() == 2  # restored after the run
    finally:
        torch.set_num_threads(before)
    done = [d for d, _ in seen]
    steps = np.diff([0, *done])
    assert len(done) > 2
    assert set(steps[:-1].tolist()) == {CPU_BATCH}
    assert {n for _, n in seen} == {1}  # the forward passes ran on the asked-for thread count


def test_no_strips_gives_the_same_mask(slide: Path, checkpoint: Path, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    masks = {}
    for flag in ("--strips", "--no-strips"):
        out = tmp_path / f"{flag.strip('-')}.tif"
        with caplog.at_level(logging.INFO, logger="wsiseg.slide"):
            res = runner.invoke(app, ["predict", str(slide), "--out", str(out), "--checkpoint", str(checkpoint),
                                      "--workers", "0", "--device", "cpu", flag])  # fmt: skip
        assert res.exit_code == 0, res.output
        masks[flag] = tifffile.imread(out)
    logged = caplog.text
    assert "in strips (each tile decoded once)" in logged
    assert "one window at a time (strip reading turned off)" in logged
    np.testing.assert_array_equal(masks["--strips"], masks["--no-strips"])
