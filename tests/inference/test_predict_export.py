"""predict -> mask.tif -> export/evaluate on generated slides (and the real slides in ../shared)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tifffile
import tiffslide
from PIL import Image
from shapely.geometry import shape
from typer.testing import CliRunner

from wsiseg.cli import app

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "slides"
runner = CliRunner()


@pytest.fixture(scope="module")
def predicted(trained_run: Path, cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pred") / "slide_005.tif"
    res = runner.invoke(app, ["predict", str(cohort / "slide_005.svs"), "--out", str(out), "--model",
                              str(trained_run / "checkpoints" / "final"), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def test_mask_geometry_and_readers(predicted: Path) -> None:
    s = 64 / 500  # model output px per level-0 px
    w, h = math.ceil(3072 * s), math.ceil(2048 * s)
    osl = openslide.OpenSlide(str(predicted))
    assert osl.dimensions == (w, h)
    assert osl.level_count >= 1
    assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(0.5 / s, rel=1e-3)
    ts = tiffslide.TiffSlide(str(predicted))
    assert ts.dimensions == (w, h)
    meta = json.loads(predicted.with_suffix(".json").read_text())
    assert [c["name"] for c in meta["classes"]] == ["background", "tumor", "stroma", "normal"]
    assert meta["downsample_to_level0"] == pytest.approx(1 / s)


def test_stitched_slide_matches_ground_truth(predicted: Path, cohort: Path, tmp_path: Path) -> None:
    # The slide-level Dice of a model with held-out tile Dice > 0.9 must be high: misplaced windows or a
    # wrong scale would destroy it.
    res = runner.invoke(app, ["evaluate", str(predicted), "--truth", str(cohort / "slide_005_mask.png"),
                              "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["paper"]["dice"] > 0.8
    # and a shifted ground truth is much worse
    gt = np.asarray(Image.open(cohort / "slide_005_mask.png"))
    Image.fromarray(np.roll(gt, 120, axis=1)).save(tmp_path / "shifted.png")
    res = runner.invoke(app, ["evaluate", str(predicted), "--truth", str(tmp_path / "shifted.png"),
                              "--out", str(tmp_path / "s")])  # fmt: skip
    shifted = json.loads((tmp_path / "s" / "metrics.json").read_text())["paper"]["dice"]
    assert shifted < metrics["paper"]["dice"] - 0.1


def test_evaluate_refuses_a_truth_without_tissue(predicted: Path, tmp_path: Path) -> None:
    # an empty (or off-slide) truth used to score paper mean Dice 1.0 for any prediction
    Image.fromarray(np.zeros((64, 96), dtype=np.uint8)).save(tmp_path / "empty.png")
    res = runner.invoke(app, ["evaluate", str(predicted), "--truth", str(tmp_path / "empty.png"),
                              "--out", str(tmp_path / "ev")])  # fmt: skip
    assert res.exit_code == 5, res.output
    assert "empty.png" in res.output
    assert "no annotated tissue" in res.output
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_export_geojson_csv_overlay(predicted: Path, cohort: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(predicted), "--slide", str(cohort / "slide_005.svs"), "--out",
                              str(tmp_path), "--min-area", "0", "--overlay-tiff"])  # fmt: skip
    assert res.exit_code == 0, res.output
    fc = json.loads((tmp_path / "slide_005.geojson").read_text())
    assert fc["type"] == "FeatureCollection"
    areas: dict[str, float] = {}
    for feat in fc["features"]:
        geom = shape(feat["geometry"])
        assert geom.geom_type in ("Polygon", "MultiPolygon")
        assert shapely.is_valid(geom)
        assert feat["properties"]["objectType"] == "annotation"
        name = feat["properties"]["classification"]["name"]
        assert name in ("tumor", "stroma", "normal")
        areas[name] = areas.get(name, 0.0) + geom.area * 0.5 * 0.5 / 1e6  # level-0 px^2 -> mm^2
    with (tmp_path / "slide_005_areas.csv").open() as fh:
        rows = {r["class_name"]: r for r in csv.DictReader(fh)}
    for name, mm2 in areas.items():
        assert float(rows[name]["area_mm2"]) == pytest.approx(mm2, rel=0.02)
    assert float(rows["tissue"]["tumor_stroma_ratio"]) > 0
    overlay = Image.open(tmp_path / "slide_005_overlay.png")
    assert overlay.size[0] > 500
    assert openslide.OpenSlide(str(tmp_path / "slide_005_overlay.tif")).level_count >= 1


def test_predict_uses_newest_run_or_explains(trained_run: Path, cohort: Path, tmp_path: Path) -> None:
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        res = runner.invoke(app, ["predict", str(cohort / "slide_000.svs"), "--out", "m.tif"])
        assert res.exit_code == 7
        assert "no trained run" in res.output
        (tmp_path / "runs").mkdir()
        (tmp_path / "runs" / trained_run.name).symlink_to(trained_run)
        res = runner.invoke(app, ["predict", str(cohort / "slide_000.svs"), "--out", "m.tif", "--workers", "0"])
        assert res.exit_code == 0, res.output
        assert "using the newest run" in res.output
        assert (tmp_path / "m.tif").is_file()
    finally:
        os.chdir(cwd)


def test_bad_slide_in_batch(trained_run: Path, cohort: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"garbage")
    out = tmp_path / "masks"
    res = runner.invoke(app, ["predict", str(bad), str(cohort / "slide_001.svs"), "--out", str(out), "--model",
                              str(trained_run / "checkpoints" / "final"), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 1
    assert "bad.svs" in res.output
    assert (out / "slide_001.tif").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["slide_001.json", "slide_001.tif"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared slides not present")
def test_real_slides_predict_and_export(trained_run: Path, tmp_path: Path) -> None:
    slides = [SHARED / "aperio_svs" / "CMU-1-Small-Region.svs", SHARED / "aperio_svs" / "tcga-cr-7395-01a-01-ts1.svs",
              SHARED / "ome_tiff" / "OS-1-detail.ome.tif"]  # fmt: skip
    out = tmp_path / "masks"
    res = runner.invoke(app, ["predict", *map(str, slides), "--out", str(out), "--model",
                              str(trained_run / "checkpoints" / "final"), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    cmu = openslide.OpenSlide(str(out / "CMU-1-Small-Region.tif"))
    assert cmu.dimensions == (math.ceil(2220 * 64 / 500), math.ceil(2967 * 64 / 500))
    assert float(cmu.properties["openslide.mpp-x"]) == pytest.approx(0.499 * 500 / 64, rel=0.01)
    tcga = json.loads((out / "tcga-cr-7395-01a-01-ts1.json").read_text())
    assert tcga["mpp"] is None  # the slide has no mpp, so neither has its mask
    for name, slide in zip(["CMU-1-Small-Region", "tcga-cr-7395-01a-01-ts1", "OS-1-detail"], slides, strict=True):
        res = runner.invoke(app, ["export", str(out / f"{name}.tif"), "--slide", str(slide), "--out",
                                  str(tmp_path / "exp")])  # fmt: skip
        assert res.exit_code == 0, res.output
        fc = json.loads((tmp_path / "exp" / f"{name}.geojson").read_text())
        assert all(shapely.is_valid(shape(f["geometry"])) for f in fc["features"])


def test_probs_and_ome(trained_run: Path, cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.ome.tif"
    args = ["predict", str(cohort / "slide_002.svs"), "--out", str(out), "--model",
            str(trained_run / "checkpoints" / "final"), "--workers", "0", "--probs", "--ome"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    ts = tiffslide.TiffSlide(str(out))
    assert ts.level_count >= 1
    labels = np.asarray(ts.read_region((0, 0), 0, ts.dimensions, as_array=True))[..., 0]
    names = ["background", "tumor", "stroma", "normal"]
    probs = [tifffile.imread(tmp_path / f"s.ome_prob_{n}.tif") for n in names]
    assert len(probs) == 4
    stack = np.stack([np.asarray(p, dtype=np.int32) for p in probs])
    covered = stack.sum(axis=0) > 0
    # probabilities of each pixel sum to ~255 and their argmax is the label
    assert np.abs(stack.sum(axis=0)[covered] - 255).max() <= 4
    agree = (stack.argmax(axis=0) == labels)[covered].mean()
    assert agree > 0.98


def test_slide_mpp_never_silently_replaces_a_recorded_mpp(trained_run: Path, cohort: Path, tmp_path: Path) -> None:
    # slide_003.svs records 0.5 um/px: --slide-mpp 1.0 used to override it and predict at the wrong scale
    ckpt = str(trained_run / "checkpoints" / "final")
    base = ["predict", str(cohort / "slide_003.svs"), "--model", ckpt, "--workers", "0", "--slide-mpp", "1.0"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a.tif")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "--slide-mpp 1 was not used" in res.output
    prov = json.loads((tmp_path / "a.json").read_text())["provenance"]
    assert prov["slide_mpp"] == pytest.approx(0.5)
    assert prov["mpp_source"] == "slide"
    res = runner.invoke(app, [*base, "--override-mpp", "--out", str(tmp_path / "b.tif")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output
    prov = json.loads((tmp_path / "b.json").read_text())["provenance"]
    assert prov["slide_mpp"] == pytest.approx(1.0)
    assert prov["mpp_source"] == "override"


def test_areas_from_an_assumed_mpp_are_flagged(trained_run: Path, cohort: Path, tmp_path: Path) -> None:
    # a PNG has no mpp: the user assumes one with --slide-mpp, and the areas must say so
    with tiffslide.TiffSlide(str(cohort / "slide_004.svs")) as s:
        region = np.asarray(s.read_region((0, 0), 0, (1500, 1000)))[..., :3]
    Image.fromarray(region).save(tmp_path / "crop.png")
    ckpt = str(trained_run / "checkpoints" / "final")
    res = runner.invoke(app, ["predict", str(tmp_path / "crop.png"), "--model", ckpt, "--workers", "0",
                              "--slide-mpp", "0.5", "--out", str(tmp_path / "crop.tif")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "(assumed)" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "crop.tif"), "--out", str(tmp_path / "ex")],
                        terminal_width=200)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "mpp assumed at prediction" in res.output
    with (tmp_path / "ex" / "crop_areas.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all("mpp assumed" in r["note"] for r in rows)
    assert rows[0]["area_mm2"] != ""


def test_export_slides_folder_missing_is_a_usage_error(predicted: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(predicted), "--slides", str(tmp_path / "nowhere"), "--out",
                              str(tmp_path / "ex")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "nowhere" in res.output
    assert not (tmp_path / "ex").exists()
