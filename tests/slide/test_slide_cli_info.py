"""``wsiseg info`` on generated and missing slides, through a tiny Typer app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer.testing import CliRunner

from wsiseg.cli.info import info

if TYPE_CHECKING:
    from conftest import SyntheticSlide


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(info)
    return app


def test_info_table(aperio_slide: SyntheticSlide) -> None:
    result = CliRunner().invoke(_app(), [str(aperio_slide.path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # tables go to stderr
    err = result.stderr
    assert "synthetic slide (1).svs" in err
    assert "openslide" in err
    assert "aperio" in err
    assert "2048 x 1536 px" in err
    assert "2: 128 x 96  (downsample 16)" in err
    assert "0.5000 x 0.5000 µm/px" in err
    assert "20x" in err
    assert "label, macro, thumbnail" in err


def test_info_json(aperio_slide: SyntheticSlide) -> None:
    args = ["--json", "--backend", "tiffslide", str(aperio_slide.path)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data) == 1
    facts = data[0]
    assert facts["path"] == str(aperio_slide.path)
    assert facts["backend"] == "tiffslide"
    assert facts["dimensions"] == [2048, 1536]
    assert facts["level_count"] == 3
    assert [lv["downsample"] for lv in facts["levels"]] == [1.0, 4.0, 16.0]
    assert facts["mpp"] == [0.5, 0.5]
    assert facts["objective_power"] == 20.0
    assert facts["vendor"] == "aperio"


def test_info_one_good_one_missing(aperio_slide: SyntheticSlide, tmp_path: Path) -> None:
    missing = tmp_path / "missing slide.svs"
    for extra in ([], ["--json"]):
        args = [*extra, str(missing), str(aperio_slide.path)]
        result = CliRunner().invoke(_app(), args, terminal_width=300)
        assert result.exit_code == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1
        assert str(missing) in errors[0]
        assert "not found" in errors[0]
        if extra:
            assert [f["path"] for f in json.loads(result.stdout)] == [str(aperio_slide.path)]
        else:
            assert "2048 x 1536 px" in result.stderr


def test_info_bad_backend(aperio_slide: SyntheticSlide) -> None:
    result = CliRunner().invoke(_app(), ["--backend", "vips", str(aperio_slide.path)])
    assert result.exit_code != 0
    assert "unknown --backend 'vips'" in str(result.exception)


def test_info_exit_code_when_every_slide_fails(tmp_path: Path) -> None:
    # Nothing readable: the error's own code (3, unreadable slide), not the "some items failed" 1.
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide")
    result = CliRunner().invoke(_app(), [str(tmp_path / "missing.svs"), str(bad)])
    assert result.exit_code == 3
    assert result.stderr.count("error:") == 2


def test_batch_exit_rule() -> None:
    import pytest
    import typer

    from wsiseg.cli._console import batch_exit

    batch_exit([], 3)  # nothing failed: returns
    for codes, total, expected in (([3], 2, 1), ([3, 3], 2, 3), ([3, 5], 2, 1), ([7], 1, 7)):
        with pytest.raises(typer.Exit) as info:
            batch_exit(codes, total)
        assert info.value.exit_code == expected


def test_info_hint_names_the_real_flag(tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from wsiseg.cli import app

    Image.new("RGB", (64, 48), (200, 120, 180)).save(tmp_path / "patch.png")
    res = CliRunner().invoke(app, ["info", str(tmp_path / "patch.png")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "--slide-mpp" in res.output
