"""Patch datasets: images smaller than the window get advice, and throughput counts the whole batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from wsiseg.cli import app

runner = CliRunner()


def _patches(folder: Path, n: int = 5) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        tissue = rng.integers(0, 40, size=(80, 100, 3)) + np.array([150, 70, 160])
        Image.fromarray(tissue.astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_small_images_get_one_line_of_advice(tmp_path: Path) -> None:
    src = _patches(tmp_path / "img")
    res = runner.invoke(app, ["tile", str(src), "-o", str(tmp_path / "t"), "--window", "128", "--stride", "64",
                              "--size", "64", "--workers", "1"], terminal_width=400)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "5 of 5 images are smaller than the 128 px window" in res.output
    assert "--window 80 --stride 40" in res.output
    assert res.output.count("padded with white background") == 0  # said once, not once per image
    assert "5 image(s), 5 windows checked, 5 tiles written" in res.output


def test_a_patch_lost_in_a_big_window_says_why(tmp_path: Path) -> None:
    src = _patches(tmp_path / "img", n=1)
    res = runner.invoke(app, ["tile", str(src), "-o", str(tmp_path / "t"), "--workers", "1"], terminal_width=400)
    assert res.exit_code != 0
    assert "smaller than the 1000 px window" in res.output
    assert "--window 80 or less" in res.output
