"""A cohort that cannot run fails at once with one line and exit 2: an output folder that cannot be written, a
scheduler that does not answer, missing dask-jobqueue, contradictory flags. Plus the progress arithmetic."""

from __future__ import annotations

import importlib.util
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsiseg.cli import app


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsiseg.testing.checkpoints import tiny_checkpoint
    from wsiseg.testing.synthetic import make_patch_image

    root = tmp_path_factory.mktemp("cohort_opts")
    make_patch_image(root / "slides" / "p0.png", size=(256, 192), seed=3)
    tiny_checkpoint(root / "ckpt")
    return root


def _predict(inputs: Path, *args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["predict", str(inputs / "slides"), "--checkpoint", str(inputs / "ckpt"),
                                   "--device", "cpu", *[str(a) for a in args]])  # fmt: skip
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, " ".join(res.output.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_output_folder_that_cannot_be_written(inputs: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out = _predict(inputs, "--out", blocker / "masks", "--cluster", "local", "--dask-workers", "1")
    assert code == 2, out
    assert f"--out {blocker / 'masks'} is not a writable folder" in out
    assert out.count("error:") == 1


def test_read_only_output_folder(inputs: Path, tmpfs: Callable[[str], Path]) -> None:
    code, out = _predict(inputs, "--out", tmpfs("ro,size=1m"), "--cluster", "local")
    assert code == 2, out
    assert "is not a writable folder (read-only file system)" in out


def test_scheduler_that_does_not_answer(inputs: Path, tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    code, out = _predict(inputs, "--out", tmp_path / "out", "--scheduler", address)
    assert code == 2, out
    assert f"--scheduler {address}: no Dask scheduler answered within 5 s" in out
    assert not list((tmp_path / "out").glob("*.tif"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scheduler", "localhost:8786"], "is not an address; write it like tcp://host:8786"),
        (["--cluster", "local", "--scheduler", "tcp://127.0.0.1:1"], "give --cluster or --scheduler, not both"),
        (["--cluster", "kubernetes"], "--cluster must be one of local, slurm, pbs"),
        (["--dask-workers", "2"], "--dask-workers goes with --cluster"),
        (["--cluster", "local", "--dask-workers", "0"], "--dask-workers must be at least 1"),
        (["--scheduler", "tcp://127.0.0.1:1", "--dask-workers", "2"], "an existing --scheduler has its own"),
        (["--cluster", "local", "--retries", "-1"], "--retries must be at least 0"),
    ],
)
def test_contradictory_flags(inputs: Path, tmp_path: Path, flags: list[str], message: str) -> None:
    code, out = _predict(inputs, "--out", tmp_path / "out", *flags)
    assert code == 2, out
    assert message in out


@pytest.mark.skipif(importlib.util.find_spec("dask_jobqueue") is not None, reason="dask-jobqueue is installed")
def test_slurm_without_dask_jobqueue(inputs: Path, tmp_path: Path) -> None:
    code, out = _predict(inputs, "--out", tmp_path / "out", "--cluster", "slurm")
    assert code == 2, out
    assert "--cluster slurm needs dask-jobqueue: pip install 'wsiseg[cluster]'" in out


def test_progress_rate_and_eta() -> None:
    from wsiseg.cohort.run import CohortProgress

    p = CohortProgress(total=10, done=3, failed=1, skipped=2, started=0.0)
    assert p.finished == 6
    # rate counts predicted and failed slides only (skipped ones cost nothing)
    hours = time.monotonic() / 3600
    assert p.rate() == pytest.approx(4 / hours, rel=1e-3)
    assert p.eta_s() == pytest.approx(4 / p.rate() * 3600, rel=1e-3)
    assert p.line().startswith("6/10 done 3 failed 1 skipped 2 | ")
    assert CohortProgress(total=5).eta_s() is None
    assert CohortProgress(total=5).line().endswith("ETA ?")
