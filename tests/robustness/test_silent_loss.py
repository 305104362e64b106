"""The four silent data-loss / wrong-result cases of issue 18, through the CLI, plus the stain check."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wsiseg.export.maskio import read_label_mask
from wsiseg.export.tiff import sidecar_path
from wsiseg.testing.synthetic import make_patch_image, write_wsss4luad_palette_mask
from wsiseg.tiling.label_images import load_label_image
from wsiseg.tiling.manifest import load_manifest
from wsiseg.tiling.tissue import stain_check, tissue_mask

GRID = ["--window", "200", "--stride", "200", "--size", "32", "--workers", "1"]


def _patch(path: Path, seed: int) -> Path:
    make_patch_image(path, size=(400, 300), seed=seed)
    return path


def test_same_name_in_two_folders_gets_two_outputs(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: ``siteA/slide.png`` and ``siteB/slide.png`` went into one folder; one was skipped as done."""
    a, b = _patch(tmp_path / "in" / "siteA" / "slide.png", 1), _patch(tmp_path / "in" / "siteB" / "slide.png", 2)
    out = tmp_path / "tiles"
    run = wsiseg("same file name in two folders", "tile", tmp_path / "in", "--out", out, *GRID)
    assert run.exit_code == 0, run.output
    slides = {s.id: Path(s.source) for s in load_manifest(out).slides}
    assert slides == {"siteA__slide": a, "siteB__slide": b}


def test_same_stem_two_formats_gets_two_outputs(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: ``case1.png`` and ``case1.jpg`` mapped to one ``case1`` folder."""
    png = _patch(tmp_path / "in" / "case1.png", 3)
    jpg = tmp_path / "in" / "case1.jpg"
    Image.open(png).convert("RGB").save(jpg, quality=95)
    out = tmp_path / "tiles"
    run = wsiseg("same stem, two formats", "tile", png, jpg, "--out", out, "--no-masks", *GRID)
    assert run.exit_code == 0, run.output
    assert {s.id for s in load_manifest(out).slides} == {"case1_png", "case1_jpg"}


def test_other_slide_of_the_same_name_is_refused_not_skipped(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: a later run's ``siteB/slide.png`` was reported as already tiled (the tiles of siteA's)."""
    out = tmp_path / "tiles"
    a = _patch(tmp_path / "siteA" / "slide.png", 1)
    b = _patch(tmp_path / "siteB" / "slide.png", 2)
    assert wsiseg("first slide of a name", "tile", a, "--out", out, *GRID).exit_code == 0
    run = wsiseg("other slide, same name, later run", "tile", b, "--out", out, *GRID)
    assert run.exit_code == 4, run.output
    assert str(a) in run.output.replace("\n", "")
    assert "--overwrite" in run.output
    assert [Path(s.source) for s in load_manifest(out).slides] == [a]  # siteA's tiles are kept


def test_export_reads_a_wsss4luad_palette_mask_like_tile(tmp_path: Path) -> None:
    """Before: export read palette indices as class ids (tumour as background, stroma as tumour)."""
    labels = np.zeros((40, 60), np.uint8)
    labels[:, 20:40], labels[:, 40:] = 1, 2  # background | tumour | stroma
    labels[:5] = 3
    path = write_wsss4luad_palette_mask(labels, tmp_path / "wsss_mask.png")
    np.testing.assert_array_equal(read_label_mask(path).labels, labels)
    tiled, _ = load_label_image(path, level0_size=(60, 40))
    np.testing.assert_array_equal(tiled, labels)


def _fluorescence() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 20, (256, 256, 3), dtype=np.uint8)  # black background
    yy, xx = np.mgrid[0:256, 0:256]
    for cy, cx in rng.integers(20, 236, (30, 2)):
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        img[blob] = (20, 220, 40)  # green nuclei
    return img


def _dab() -> np.ndarray:
    img = np.full((256, 256, 3), 235, np.uint8)
    img[40:220, 40:220] = (150, 95, 45)  # brown DAB
    return img


@pytest.mark.parametrize(("image", "words"), [(_fluorescence, "fluorescence"), (_dab, "another stain")])
def test_stain_check_flags_non_he(image: Callable[[], np.ndarray], words: str) -> None:
    thumb = image()
    assert words in stain_check(thumb, tissue_mask(thumb))


def test_stain_check_passes_he_and_tile_notes_fluorescence(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    he = _patch(tmp_path / "he.png", 4)
    thumb = np.asarray(Image.open(he).convert("RGB"))
    assert stain_check(thumb, tissue_mask(thumb)) == ""
    fluo = tmp_path / "fluo.png"
    Image.fromarray(np.tile(_fluorescence(), (2, 2, 1))).save(fluo)
    run = wsiseg("fluorescence image (black background)", "tile", fluo, "--out", tmp_path / "t", *GRID,
                 "--min-tissue", "0.01")  # fmt: skip
    assert "fluorescence" in run.output.replace("\n", "")
    assert "no scanner mpp" in run.output.replace("\n", "")


def test_predict_notes_fluorescence_and_the_cohort_table_flags_it(
    wsiseg: Callable[..., Any], trained_run: Path, tmp_path: Path
) -> None:
    """Before: ``tile`` said a fluorescence scan is not H&E, ``predict`` wrote its mask without a word."""
    fluo = tmp_path / "in" / "fluo.png"
    _patch(tmp_path / "in" / "he.png", 5)
    Image.fromarray(np.tile(_fluorescence(), (4, 4, 1))).save(fluo)
    masks = tmp_path / "masks"
    run = wsiseg("fluorescence image, predicted", "predict", tmp_path / "in", "--checkpoint",
                 trained_run / "checkpoints" / "final", "--out", masks, "--min-tissue", "0.01")  # fmt: skip
    assert run.exit_code == 0, run.output
    text = " ".join(run.output.split())
    assert "fluo.png: 9" in text  # "fluo.png: 9x% of the image is dark ..."
    assert "fluorescence" in text
    assert "he.png:" not in text.replace("he.png │", "")  # the H&E patch gets no note
    fluo_meta = json.loads(sidecar_path(masks / "fluo.tif").read_text())["provenance"]
    assert "fluorescence" in fluo_meta["stain_note"]
    assert "stain_note" not in json.loads(sidecar_path(masks / "he.tif").read_text())["provenance"]
    report = wsiseg("cohort table of it", "cohort-report", masks)
    assert report.exit_code == 0, report.output
    with (masks / "cohort.csv").open(newline="") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh)}
    assert rows["fluo"]["not_he"] == "True"
    assert "not_he" in rows["fluo"]["qc"]
    assert rows["he"]["not_he"] == "False"
