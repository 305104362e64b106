"""Every output of a prediction says which model made it: the mask sidecar, the GeoJSON and the areas CSV carry
the checkpoint id and card digest, the privacy ledger's epsilon and unit (when trained with DP), the wsiseg
version and the tiling settings. Each output is read back with a plain reader (json, csv) and checked against
digests computed here from the checkpoint files."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsiseg import __version__
from wsiseg.cli import app

PRIVACY = {"dp": "sample", "epsilon": 7.5, "delta": 1e-5, "unit": "patient", "ledger": [{"round": 1}]}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _predict_and_export(tmp_path: Path, extra: dict | None) -> tuple[dict, dict, list[dict[str, str]], Path]:
    from wsiseg.testing.checkpoints import tiny_checkpoint
    from wsiseg.testing.synthetic import make_patch_image

    make_patch_image(tmp_path / "slides" / "p0.png", size=(256, 192), seed=5)
    ckpt = tiny_checkpoint(tmp_path / "ckpt", extra=extra)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(tmp_path / "slides"), "--out", str(tmp_path / "masks"), "--checkpoint",
                              str(ckpt), "--workers", "0", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(tmp_path / "masks" / "p0.tif"), "--slides", str(tmp_path / "slides"),
                              "--out", str(tmp_path / "export")])  # fmt: skip
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "masks" / "p0.json").read_text())["provenance"]
    geojson = json.loads((tmp_path / "export" / "p0.geojson").read_text())
    with (tmp_path / "export" / "p0_areas.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return sidecar, geojson, rows, ckpt


def test_outputs_carry_checkpoint_privacy_version_and_tiling(tmp_path: Path) -> None:
    sidecar, geojson, rows, ckpt = _predict_and_export(tmp_path, {"privacy": PRIVACY})
    card = json.loads(ckpt.with_name("ckpt.json").read_text())
    want = {
        "checkpoint": str(ckpt), "checkpoint_id": _sha256(ckpt.with_name("ckpt.safetensors"))[:16],
        "card_sha256": _sha256(ckpt.with_name("ckpt.json")), "dp": "sample", "epsilon": 7.5, "delta": 1e-5,
        "privacy_unit": "patient", "wsiseg_version": __version__, "tiling": card["tiling"],
    }  # fmt: skip
    assert {k: sidecar[k] for k in want} == want
    assert geojson["type"] == "FeatureCollection"
    assert geojson["properties"]["provenance"] == want
    assert geojson["features"]  # the features are still there, untouched by the collection's properties
    assert rows
    for row in rows:  # every row, so CSVs of many slides can be concatenated
        assert row["checkpoint_id"] == want["checkpoint_id"]
        assert row["card_sha256"] == want["card_sha256"]
        assert float(row["epsilon"]) == pytest.approx(7.5)
        assert float(row["delta"]) == pytest.approx(1e-5)
        assert row["privacy_unit"] == "patient"
        assert row["dp"] == "sample"
        assert row["wsiseg_version"] == __version__
        assert json.loads(row["tiling"]) == card["tiling"]
    assert rows[-1]["class_name"] == "tissue"  # the area columns come first, as before


def test_no_dp_leaves_the_privacy_fields_empty(tmp_path: Path) -> None:
    sidecar, geojson, rows, _ = _predict_and_export(tmp_path, None)
    for key in ("dp", "epsilon", "delta", "privacy_unit"):
        assert sidecar[key] is None
        assert geojson["properties"]["provenance"][key] is None
        assert {row[key] for row in rows} == {""}
    assert len(sidecar["checkpoint_id"]) == 16
