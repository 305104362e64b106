"""Cohort table (CSV + Parquet, read back by independent readers) and the static HTML report, without a browser."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.errors import DataError
from wsiseg.export.cohort import build_cohort_table, find_masks, missing_exports, write_cohort_table
from wsiseg.export.cohort_report import render_cohort_html, tsr_histogram, write_cohort_report

# ``cohort_outputs`` (tests/export/conftest.py): four generated slides' masks as ``wsiseg predict`` writes them.
FAILURE = {"/data/broken.svs": (3, "cannot open /data/broken.svs: not a slide")}
runner = CliRunner()


@pytest.fixture(scope="module")
def table(cohort_outputs: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    exp = tmp_path_factory.mktemp("exp")
    rows = build_cohort_table(cohort_outputs.pred_dir, export_dir=exp, failures=FAILURE, min_tissue_mm2=0.01)
    return rows, exp


def expected(labels: np.ndarray, mpp: float) -> dict[str, float]:
    counts = np.bincount(labels.ravel(), minlength=4).astype(float)
    tissue = counts[1:].sum()
    out = {"tissue_um2": tissue * mpp**2, "tissue_mm2": tissue * mpp**2 / 1e6,
           "tsr": counts[2] / (counts[1] + counts[2]) if counts[1] + counts[2] else math.nan}  # fmt: skip
    for cid, name in ((1, "tumor"), (2, "stroma"), (3, "normal")):
        out[f"{name}_um2"] = counts[cid] * mpp**2
        out[f"{name}_mm2"] = counts[cid] * mpp**2 / 1e6
        out[f"{name}_fraction"] = counts[cid] / tissue
    return out


def test_rows_areas_qc_and_provenance(table: tuple[list[dict], Path], cohort_outputs: Any) -> None:
    rows, exp = table
    assert [r["slide"] for r in rows] == sorted([*cohort_outputs.labels, "broken"])
    assert len({tuple(r) for r in rows}) == 1  # one schema
    by = {r["slide"]: r for r in rows}
    for name, labels in cohort_outputs.labels.items():
        row, want = by[name], expected(labels, cohort_outputs.mask_mpp)
        assert row["status"] == "ok"
        for key, value in want.items():
            if math.isnan(value):
                assert row[key] is None, (name, key)
            else:
                assert row[key] == pytest.approx(value, rel=1e-9), (name, key)
        assert row["tumor_per_stroma"] == pytest.approx(want["tumor_um2"] / want["stroma_um2"]) if want[
            "stroma_um2"] else row["tumor_per_stroma"] is None  # fmt: skip
        assert row["overlay"] == str(exp / f"{name}_overlay.png")
        assert (exp / f"{name}_areas.csv").is_file()
        assert row["checkpoint_id"].startswith("abc")
        assert row["card_sha256"] == "f" * 64
        assert row["privacy_unit"] == "one client (all of its slides)"
        assert row["dp"] == "central"
        assert row["tiling_window"] == 1000
        assert row["window_level0"] == 1000
        assert row["wsiseg_version"]
    assert 0.0 < by["case_a"]["tsr"] < 1.0
    assert by["case_a"]["epsilon"] == pytest.approx(3.5)
    assert by["case_b"]["mpp_assumed"]
    assert "mpp_assumed" in by["case_b"]["qc"]
    assert not by["case_a"]["mpp_assumed"]
    assert by["case_c"]["low_tissue"]
    assert not by["case_a"]["low_tissue"]
    assert by["case_c"]["tsr"] == pytest.approx(0.0)  # tumour only: no stroma
    broken = by["broken"]
    assert broken["failed"]
    assert broken["status"] == "failed"
    assert broken["exit_code"] == 3
    assert broken["tumor_mm2"] is None
    assert "not a slide" in broken["failure"]


def test_csv_and_parquet_read_back(table: tuple[list[dict], Path], cohort_outputs: Any,
                                   tmp_path: Path) -> None:  # fmt: skip
    rows, _ = table
    csv_path, pq_path = write_cohort_table(rows, tmp_path / "out")
    assert (csv_path.name, pq_path.name) == ("cohort.csv", "cohort.parquet")
    assert not list(csv_path.parent.glob(".*.tmp"))
    with csv_path.open(newline="", encoding="utf-8") as fh:
        records = {r["slide"]: r for r in csv.DictReader(fh)}
    tab = pq.read_table(pq_path)
    assert tab.schema.field("tumor_mm2").type == "double"
    assert str(tab.schema.field("low_tissue").type) == "bool"
    assert b"stroma area / (tumour + stroma) area" in tab.schema.metadata[b"tsr_definition"]
    parquet = {r["slide"]: r for r in tab.to_pylist()}
    assert set(records) == set(parquet) == {r["slide"] for r in rows}
    for name, labels in cohort_outputs.labels.items():
        want = expected(labels, cohort_outputs.mask_mpp)
        for key in ("tumor_um2", "stroma_mm2", "normal_fraction", "tissue_mm2"):
            assert float(records[name][key]) == pytest.approx(want[key], rel=1e-9)
            assert parquet[name][key] == pytest.approx(want[key], rel=1e-9)
    assert records["case_c"]["low_tissue"] == "True"
    assert parquet["case_c"]["low_tissue"] is True
    assert records["broken"]["tumor_mm2"] == ""
    assert parquet["broken"]["tumor_mm2"] is None
    assert parquet["broken"]["exit_code"] == 3


def test_pandas_reads_the_table(table: tuple[list[dict], Path], cohort_outputs: Any, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    rows, _ = table
    csv_path, pq_path = write_cohort_table(rows, tmp_path)
    frame = pd.read_csv(csv_path).set_index("slide")
    want = expected(cohort_outputs.labels["case_a"], cohort_outputs.mask_mpp)
    assert frame.loc["case_a", "tumor_um2"] == pytest.approx(want["tumor_um2"])
    assert pd.read_parquet(pq_path).shape == (len(rows), len(rows[0]))


def test_export_reused_until_the_mask_changes(cohort_outputs: Any, tmp_path: Path) -> None:
    import shutil

    pred, exp = tmp_path / "pred", tmp_path / "exp"
    shutil.copytree(cohort_outputs.pred_dir, pred)  # this test changes a mask's time: not the shared fixture's
    assert len(missing_exports(pred, exp)) == len(cohort_outputs.labels)
    build_cohort_table(pred, export_dir=exp)
    assert missing_exports(pred, exp) == []
    areas = exp / "case_a_areas.csv"
    first = areas.stat().st_mtime_ns
    build_cohort_table(pred, export_dir=exp)
    assert areas.stat().st_mtime_ns == first  # up to date: not exported again
    mask = pred / "case_a.tif"
    os.utime(mask, ns=(first + 10**9, first + 10**9))  # a newer mask (predicted again)
    assert missing_exports(pred, exp) == [mask]
    build_cohort_table(pred, export_dir=exp)
    assert areas.stat().st_mtime_ns > first


def test_without_export_a_mask_gives_a_failed_row(cohort_outputs: Any, tmp_path: Path) -> None:
    rows = build_cohort_table(cohort_outputs.pred_dir, export_dir=tmp_path, export_missing=False)
    assert all(r["failed"] and "run 'wsiseg export'" in r["failure"] for r in rows)
    assert not list(tmp_path.iterdir())


def test_failures_by_id_or_path_replace_rows(table: tuple[list[dict], Path], cohort_outputs: Any) -> None:
    _, exp = table  # exported already: nothing is written again
    rows = build_cohort_table(cohort_outputs.pred_dir, export_dir=exp,
                              failures={"case_a": "worker died twice", "/in/y z.svs": (9, "disk full")})  # fmt: skip
    by = {r["slide"]: r for r in rows}
    assert by["case_a"]["failed"]
    assert by["case_a"]["exit_code"] is None
    assert by["case_a"]["tumor_um2"] is None
    assert (by["y_z"]["exit_code"], by["y_z"]["slide_path"]) == (9, "/in/y z.svs")
    assert not by["case_b"]["failed"]


def test_find_masks_skips_other_files(cohort_outputs: Any, tmp_path: Path) -> None:
    for p in cohort_outputs.pred_dir.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (8, 8)).save(tmp_path / "slide.tif")  # a TIFF without a sidecar: not a mask
    (tmp_path / ".case_a.tif.x.tmp").write_bytes(b"")
    assert [p.name for p in find_masks(tmp_path)] == sorted(f"{n}.tif" for n in cohort_outputs.labels)
    with pytest.raises(DataError, match="not a folder"):
        build_cohort_table(tmp_path / "missing")


def test_tsr_histogram_bins() -> None:
    assert tsr_histogram([0.0, 0.05, 0.1, 0.55, 0.999, 1.0, None], bins=10) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert tsr_histogram([], bins=4) == [0, 0, 0, 0]


def test_report_escapes_names_and_loads_nothing_external(table: tuple[list[dict], Path], cohort_outputs: Any,
                                                          tmp_path: Path) -> None:  # fmt: skip
    rows, _ = table
    page_path = write_cohort_report(rows, tmp_path / "rep")
    page = page_path.read_text(encoding="utf-8")
    hostile = cohort_outputs.hostile
    assert hostile not in page
    assert "<script>alert" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from the network
    assert "Content-Security-Policy" in page
    assert "stroma area / (tumour + stroma) area" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 4  # one per segmented slide; the failed one shows its reason instead
    for src in srcs:
        assert not src.startswith("/")
        thumb = page_path.parent / src.replace("%3C", "<").replace("%3E", ">")
        with Image.open(thumb) as img:
            assert max(img.size) <= 256
    assert page.count('<tr data-i="') == len(rows)
    assert 'fill="#00e5ff"/></svg> tumor' in page  # the legend draws the overlay's colours (tumour replaced)
    assert "> background</span>" not in page
    assert render_cohort_html([], []).count("<tr data-i=") == 0


def test_cli_writes_table_and_report(cohort_outputs: Any, tmp_path: Path) -> None:
    res = runner.invoke(app, ["cohort-report", str(cohort_outputs.pred_dir), "--export-dir", str(tmp_path / "exp"),
                              "--out", str(tmp_path / "rep"), "--min-tissue-mm2", "0.01"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"cohort.csv", "cohort.parquet", "cohort.html",
                                                              "cohort_thumbs"}  # fmt: skip
    assert "4 slide(s): 4 ok, 0 failed, 2 with QC flags" in res.output


def test_cli_bad_folders_exit_2(cohort_outputs: Any, tmp_path: Path) -> None:
    res = runner.invoke(app, ["cohort-report", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no such folder" in res.output
    res = runner.invoke(app, ["cohort-report", str(tmp_path)])
    assert res.exit_code == 2
    assert "holds no mask.tif" in res.output
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["cohort-report", str(cohort_outputs.pred_dir), "--out", str(tmp_path / "file" / "r")])
    assert res.exit_code == 2
    assert "is a file, not a folder" in res.output
    assert not (tmp_path / "exp").exists()


def test_mask_without_mpp_flags_no_mpp_and_low_tissue_by_share(tmp_path: Path) -> None:
    from wsiseg.classes import DEFAULT_CLASSES
    from wsiseg.export.sinks import write_label_pyramid

    lab = np.zeros((100, 120), dtype=np.uint8)
    lab[:5, :10] = 2  # 50 of 12,000 px: 0.4 % tissue
    write_label_pyramid(tmp_path / "nompp.tif", lab, mpp=None, classes=DEFAULT_CLASSES,  # type: ignore[arg-type]
                        provenance={"slide": "/gone/nompp.png", "mpp_source": "none"})  # fmt: skip
    (row,) = build_cohort_table(tmp_path)
    assert row["no_mpp"]
    assert row["tissue_mm2"] is None
    assert row["stroma_um2"] is None
    assert row["tissue_px_level0"] == pytest.approx(50.0)
    assert row["tissue_share"] == pytest.approx(50 / 12_000)
    assert row["low_tissue"]
    assert row["stroma_fraction"] == pytest.approx(1.0)
    assert row["qc"] == "no_mpp;low_tissue"
    assert build_cohort_table(tmp_path, min_tissue_share=0.001)[0]["qc"] == "no_mpp"


def test_cli_lists_the_failures_of_a_cohort_run(cohort_outputs: Any, tmp_path: Path) -> None:
    import json
    import shutil
    from dataclasses import asdict

    from wsiseg.cohort.run import SUMMARY_NAME
    from wsiseg.cohort.worker import SlideOutcome
    from wsiseg.export.cohort import COHORT_SUMMARY, failures_from_summary

    assert COHORT_SUMMARY == SUMMARY_NAME
    pred = tmp_path / "pred"
    shutil.copytree(cohort_outputs.pred_dir, pred)
    outcomes = [SlideOutcome("/in/bad.svs", str(pred / "bad.tif"), "failed", reason="not a slide", exit_code=3),
                SlideOutcome("/in/case_a.svs", str(pred / "case_a.tif"), "failed", reason="worker lost", exit_code=1),
                SlideOutcome("/in/case_b.svs", str(pred / "case_b.tif"), "done")]  # fmt: skip
    summary = pred / SUMMARY_NAME
    summary.write_text(json.dumps([asdict(o) for o in outcomes]))
    later = summary.stat().st_mtime_ns + 10**9
    os.utime(pred / "case_a.tif", ns=(later, later))  # predicted again after that run: complete now
    assert failures_from_summary(pred) == {"bad": (3, "not a slide")}
    res = runner.invoke(app, ["cohort-report", str(pred), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "5 slide(s): 4 ok, 1 failed" in res.output
    assert "bad: not a slide" in res.output
    with (tmp_path / "rep" / "cohort.csv").open(newline="", encoding="utf-8") as fh:
        by = {r["slide"]: r for r in csv.DictReader(fh)}
    assert (by["bad"]["status"], by["bad"]["exit_code"]) == ("failed", "3")
    assert by["case_a"]["status"] == "ok"
