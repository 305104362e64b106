"""kill -9 in the middle of a fed-train run, then --resume: same final weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from wsiseg.train.checkpoint import load_checkpoint


def _args(tiles: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "wsiseg", "fed-train", "--data", str(tiles), "--clients", "2", "--partition",
            "by-site", "--rounds", "4", "--local-steps", "3", "--batch-size", "8", "--seed", "3", "--noise-seed", "5",
            "--model",
            "dhunet_tiny", "--img-size", "64", "--dp", "central", "--sigma", "0.5", "--eval-every", "4",
            "--runs", str(runs)]  # fmt: skip


def _final(runs: Path) -> dict[str, torch.Tensor]:
    (run,) = list(runs.iterdir())
    return load_checkpoint(run / "checkpoints" / "final").weights


def test_kill9_mid_run_then_resume_matches(tiles64: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_args(tiles64, tmp_path / "full"), check=True, env=env, capture_output=True, timeout=600)
    runs = tmp_path / "killed"
    proc = subprocess.Popen(_args(tiles64, runs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            cards = list(runs.glob("*/checkpoints/last.json"))
            if cards and json.loads(cards[0].read_text()).get("round", 0) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # only the process this test started
    finally:
        proc.wait(timeout=60)
    (run,) = list(runs.iterdir())
    assert not (run / "checkpoints" / "final.json").exists()
    subprocess.run([sys.executable, "-m", "wsiseg", "fed-train", "--resume", str(run)], check=True, env=env,
                   capture_output=True, timeout=600)  # fmt: skip
    a, b = _final(tmp_path / "full"), _final(runs)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ledger = json.loads((run / "checkpoints" / "final.json").read_text())["privacy"]["ledger"]
    assert [e["round"] for e in ledger["entries"]] == [1, 2, 3, 4]
