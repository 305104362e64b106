"""``wsiseg predict`` over a cohort on a real local Dask cluster (2 worker processes on loopback).

Six generated slides and two bad files: the masks equal the single-process run byte for byte, the bad files are
reported with their exit codes, a worker killed (SIGKILL, by its pid) while it predicts a slide costs only that
slide, which the scheduler runs again, and a rerun after an interrupted run predicts only the unfinished slides.
No assertion depends on timing: the kill is sent when the worker reports that it started the slide.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from wsiseg.cli import app

pytestmark = pytest.mark.integration

GOOD = [f"s{i}" for i in range(6)]
BAD = {"bad.svs": 3, "trunc.svs": 3}  # a text file named like a slide, a slide cut to a third: SlideError
BIG = "s5"  # four times the windows of the others: the slide the kill test catches in flight
#: The privacy facts of the card (as fed-train writes them) that the outputs must carry.
PRIVACY = {"dp": "central", "epsilon": 3.25, "delta": 1e-5, "unit": "one client (all of its slides)"}


@pytest.fixture(scope="module")
def cohort_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsiseg.testing.checkpoints import tiny_checkpoint
    from wsiseg.testing.synthetic import make_slide

    root = tmp_path_factory.mktemp("cohort_dask")
    slides = root / "slides"
    for i, name in enumerate(GOOD):
        w, h = (3072, 2048) if name == BIG else (1536, 1024)
        make_slide(slides / f"{name}.svs", width=w, height=h, seed=40 + i, tile=256, min_level_size=512)
    for mask in slides.glob("*_mask.png"):  # ground truth is not needed here; keep the folder to slides
        mask.unlink()
    (slides / "bad.svs").write_text("this is not a slide\n")
    data = (slides / "s0.svs").read_bytes()
    (slides / "trunc.svs").write_bytes(data[: len(data) // 3])
    tiny_checkpoint(root / "ckpt", extra={"privacy": PRIVACY})
    return root


@pytest.fixture(scope="module")
def reference(cohort_inputs: Path) -> Path:
    """The single-process ``wsiseg predict`` of the cohort (exit 1: the two bad files fail)."""
    out = cohort_inputs / "reference"
    res = CliRunner().invoke(app, ["predict", str(cohort_inputs / "slides"), "--out", str(out), "--checkpoint",
                                   str(cohort_inputs / "ckpt"), "--workers", "0", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert sorted(p.stem for p in out.glob("*.tif")) == GOOD
    return out


def outputs(folder: Path) -> dict[str, bytes]:
    """The masks and their sidecars of a predict folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".tif", ".json")
            and not p.name.startswith("cohort")}  # fmt: skip


def leftovers(folder: Path) -> list[str]:
    """Scratch folders and temporary files left in ``folder`` (none after a finished run)."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith((".tmp", ".partial"))]


def _jobs(inputs: Path, out: Path) -> tuple[list[Any], dict[str, Any]]:
    from wsiseg.cohort.jobs import plan_jobs
    from wsiseg.inference.predictor import PredictSettings
    from wsiseg.inference.provenance import checkpoint_provenance
    from wsiseg.tiling.batch import expand_sources
    from wsiseg.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(inputs / "ckpt")
    prov = checkpoint_provenance(ckpt)
    card = ckpt.model_card
    jobs = plan_jobs(expand_sources([str(inputs / "slides")]), out, tiling=card.tiling_config,
                     classes=card.class_table, settings=PredictSettings(workers=0, device="cpu",
                                                                        min_tissue=card.tiling_config.min_tissue),
                     provenance=prov)  # fmt: skip
    return jobs, prov


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from wsiseg.cohort.cluster import CohortOptions, open_client

    with open_client(CohortOptions(cluster="local", workers=2, retries=2)) as c:
        yield c


def test_cli_cohort_equals_single_process_and_reports_bad_slides(
    cohort_inputs: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dask"
    res = CliRunner().invoke(app, ["predict", str(cohort_inputs / "slides"), "--out", str(out), "--checkpoint",
                                   str(cohort_inputs / "ckpt"), "--device", "cpu", "--cluster", "local",
                                   "--dask-workers", "2"])  # fmt: skip
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output  # some slides failed, others were predicted
    assert "6 predicted, 0 already complete, 2 failed" in text
    for name, code in BAD.items():
        assert f"exit {code} {name}:" in text
    assert outputs(out) == outputs(reference)
    assert not leftovers(out)
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert {Path(o["slide"]).name: (o["status"], o["exit_code"]) for o in summary} == {
        **{f"{s}.svs": ("done", 0) for s in GOOD}, **{n: ("failed", c) for n, c in BAD.items()}}  # fmt: skip
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for o in summary:
        by_pid.setdefault(o["pid"], []).append(o)
    assert len(by_pid) == 2  # both workers took slides
    assert max(len(v) for v in by_pid.values()) >= 2
    for runs in by_pid.values():  # the model is loaded once per worker, not once per slide
        assert {o["model_loads"] for o in runs if o["status"] == "done"} <= {1}
    log = (out / "cohort.log").read_text()
    assert "progress 8/8 done 6 failed 2 skipped 0" in log
    assert log.count(" started ") == 8
    for name in GOOD:  # each worker exported the masks it predicted
        assert (out / f"{name}_areas.csv").is_file()
        assert (out / f"{name}.geojson").is_file()
    with (out / "cohort.csv").open(newline="") as fh:  # then the cohort table, the failures included
        table = {row["slide"]: row for row in csv.DictReader(fh)}
    assert set(table) == {*GOOD, "bad", "trunc"}
    assert table["bad"]["exit_code"] == "3"
    assert (
        table["s0"]["checkpoint_id"]
        == hashlib.sha256((cohort_inputs / "ckpt.safetensors").read_bytes()).hexdigest()[:16]
    )


def test_cli_on_an_existing_scheduler(cohort_inputs: Path, reference: Path, tmp_path: Path, client: Any) -> None:
    out = tmp_path / "sched"
    slides = [str(cohort_inputs / "slides" / f"{n}.svs") for n in ("s0", "s1")]
    res = CliRunner().invoke(app, ["predict", *slides, "--out", str(out), "--checkpoint",
                                   str(cohort_inputs / "ckpt"), "--device", "cpu", "--scheduler",
                                   client.scheduler.address, "--no-export"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 predicted, 0 already complete, 0 failed" in " ".join(res.output.split())
    assert outputs(out) == {k: v for k, v in outputs(reference).items() if k.startswith(("s0.", "s1."))}
    assert not (out / "s0_areas.csv").exists()  # --no-export: masks only


def test_worker_killed_mid_slide_is_retried(cohort_inputs: Path, reference: Path, tmp_path: Path, client: Any) -> None:
    from wsiseg.cohort.run import run_cohort

    out = tmp_path / "killed"
    out.mkdir()
    jobs, prov = _jobs(cohort_inputs, out)
    starts: list[dict[str, Any]] = []
    killed: list[int] = []
    early: list[bool] = []
    target = out / f"{BIG}.tif"

    def on_event(msg: dict[str, Any]) -> None:
        starts.append(msg)
        if Path(msg["slide"]).stem == BIG and not killed:
            early.append(not target.exists())
            os.kill(int(msg["pid"]), signal.SIGKILL)  # the worker process that reported the start
            killed.append(int(msg["pid"]))

    summary = run_cohort(client, jobs, checkpoint=prov["checkpoint"], checkpoint_id=prov["checkpoint_id"],
                         device="cpu", retries=2, out_dir=out, on_event=on_event)  # fmt: skip
    big_starts = [m for m in starts if Path(m["slide"]).stem == BIG]
    assert early == [True], "the slide was finished before its worker was killed: nothing was tested"
    assert killed
    assert len(big_starts) >= 2, big_starts  # started, killed, started again
    assert big_starts[-1]["pid"] != killed[0]
    status = {Path(o.slide).name: o.status for o in summary.outcomes}
    assert status == {**{f"{s}.svs": "done" for s in GOOD}, **dict.fromkeys(BAD, "failed")}
    assert outputs(out) == outputs(reference)
    assert not leftovers(out)
    assert (out / "cohort.log").read_text().count(f"started {BIG}.svs") >= 2


def test_rerun_after_interruption_redoes_only_unfinished(
    cohort_inputs: Path, reference: Path, tmp_path: Path, client: Any
) -> None:
    from wsiseg.cohort.run import run_cohort

    out = tmp_path / "rerun"
    out.mkdir()
    finished, partial = ["s0", "s1", "s2"], "s3"  # s4 and s5 never started
    for name in finished:
        for suffix in (".tif", ".json"):
            shutil.copy2(reference / f"{name}{suffix}", out / f"{name}{suffix}")
    scratch = out / f".{partial}.tif.interrupted"  # what a writer killed mid-slide leaves (see export.tiff)
    scratch.mkdir()
    (scratch / "level0.raw").write_bytes(b"\0" * 4096)
    jobs, prov = _jobs(cohort_inputs, out)
    summary = run_cohort(client, jobs, checkpoint=prov["checkpoint"], checkpoint_id=prov["checkpoint_id"],
                         device="cpu", retries=2, out_dir=out)  # fmt: skip
    status = {Path(o.slide).stem: o.status for o in summary.outcomes}
    assert sorted(s for s, v in status.items() if v == "skipped") == finished
    assert sorted(s for s, v in status.items() if v == "done") == [partial, "s4", "s5"]
    assert summary.count("failed") == len(BAD)
    assert outputs(out) == outputs(reference)
    assert not leftovers(out)


def test_slide_that_kills_every_worker_fails_after_bounded_retries(cohort_inputs: Path, tmp_path: Path) -> None:
    from wsiseg.cohort.cluster import CohortOptions, open_client
    from wsiseg.cohort.run import WORKER_LOST_CODE, run_cohort

    out = tmp_path / "doomed"
    out.mkdir()
    jobs, prov = _jobs(cohort_inputs, out)
    jobs = [j for j in jobs if j.slide.stem in (BIG, "s0")]
    big_starts: list[int] = []

    def on_event(msg: dict[str, Any]) -> None:
        if Path(msg["slide"]).stem == BIG:  # this slide "crashes" its worker on every attempt
            big_starts.append(int(msg["pid"]))
            os.kill(int(msg["pid"]), signal.SIGKILL)

    with open_client(CohortOptions(cluster="local", workers=2, retries=1)) as c:
        summary = run_cohort(c, jobs, checkpoint=prov["checkpoint"], checkpoint_id=prov["checkpoint_id"],
                             device="cpu", retries=1, out_dir=out, on_event=on_event)  # fmt: skip
    assert len(big_starts) == 2  # the first run and one retry, then the scheduler gives up
    by_name = {Path(o.slide).stem: o for o in summary.outcomes}
    assert by_name["s0"].status == "done"
    lost = by_name[BIG]
    assert (lost.status, lost.exit_code) == ("failed", WORKER_LOST_CODE)
    assert "its worker died on every attempt" in lost.reason
    assert not (out / f"{BIG}.tif").exists()
    # only the killed writer's scratch may be left (the next run of the cohort removes it)
    assert all(name.startswith(f".{BIG}.tif.") for name in leftovers(out))


def test_full_disk_stops_the_cohort_and_keeps_finished_masks(
    cohort_inputs: Path, reference: Path, client: Any, tmpfs: Callable[[str], Path]
) -> None:
    from wsiseg.cohort.run import run_cohort
    from wsiseg.errors import StorageError

    mnt = tmpfs("size=192k")
    jobs, prov = _jobs(cohort_inputs, mnt)
    with pytest.raises(StorageError, match=r"no space left on the device.*cohort stopped"):
        run_cohort(client, jobs, checkpoint=prov["checkpoint"], checkpoint_id=prov["checkpoint_id"], device="cpu",
                   retries=2, out_dir=mnt)  # fmt: skip
    for mask in mnt.glob("*.tif"):  # what is there under a final name is complete (atomic renames)
        assert mask.read_bytes() == (reference / mask.name).read_bytes()
    assert len(list(mnt.glob("*.tif"))) < len(GOOD)
