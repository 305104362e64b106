"""``tile_slide`` reads in strips by default and writes the same tiles as per-window reads."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from wsiseg.testing.synthetic import make_slide
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.writer import tile_slide


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("strip_tiling") / "s.svs"
    make_slide(path, width=3072, height=2048, seed=4)
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").iterdir())}


@pytest.mark.parametrize("workers", [1, 2])
def test_strip_tiles_equal_per_window_tiles(slide_path: Path, tmp_path: Path, workers: int) -> None:
    # level 1 (downsample 4) at whole level pixels, where strips are exact; 128 px reads at 64 px stride
    config = TilingConfig(window=512, stride=256, size=64, min_tissue=0.05)
    ref = tile_slide(slide_path, tmp_path / "ref", config, strips=False, workers=1)
    got = tile_slide(slide_path, tmp_path / "got", config, strips=True, workers=workers)
    assert got.n_tiles == ref.n_tiles > 20
    a, b = _digests(tmp_path / "ref" / ref.id), _digests(tmp_path / "got" / got.id)
    assert a == b  # same pixels, same resize, same JPEG bytes, same names
    csv_ref = (tmp_path / "ref" / ref.id / "tiles.csv").read_text()
    assert (tmp_path / "got" / got.id / "tiles.csv").read_text() == csv_ref  # same order


def test_tile_cli_no_strips(slide_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``wsiseg tile --no-strips`` reads one window at a time and writes the same tiles."""
    from typer.testing import CliRunner

    from wsiseg.cli import app

    args = ["--window", "512", "--stride", "256", "--size", "64", "--min-tissue", "0.05", "--workers", "1"]
    with caplog.at_level(logging.INFO, logger="wsiseg.slide"):
        off = CliRunner().invoke(app, ["tile", str(slide_path), "--out", str(tmp_path / "off"), *args, "--no-strips"])
    assert off.exit_code == 0, off.output
    assert "one window at a time (strip reading turned off)" in caplog.text
    on = CliRunner().invoke(app, ["tile", str(slide_path), "--out", str(tmp_path / "on"), *args])
    assert on.exit_code == 0, on.output
    sid = slide_path.stem
    assert _digests(tmp_path / "off" / sid) == _digests(tmp_path / "on" / sid) != {}
