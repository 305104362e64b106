"""examples/reproduce_tables.py: every cell holds out the same slides, and the tables carry the baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "reproduce_tables.py"


def test_table1_cells_share_one_heldout_set_and_show_baselines(tiles64: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    cmd = [sys.executable, str(SCRIPT), "--data", str(tiles64), "--tiny", "--models", "unet", "--epochs", "1",
           "--rounds", "1", "--clients", "2", "--batch-size", "8", "--table", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    held = json.loads((out / "split.json").read_text())["heldout"]
    assert held
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3  # centralised, FL, FedDP
    for run in runs:
        split = json.loads((run / "split.json").read_text())
        if "clients" in split:  # federated: the held-out slides of all clients together
            got = sorted(s for c in split["clients"] for s in c["heldout_slides"])
            trained = {s for c in split["clients"] for s in c["train_slides"]}
        else:
            got, trained = sorted(split["test"]), set(split["train"])
        assert got == sorted(held), run.name
        assert not trained & set(held)
        baselines = json.loads((run / "metrics.json").read_text())["baselines"]
        assert baselines["majority class"]["num_slides"] == len(held)
    table = (out / "table1.md").read_text()
    assert "| baseline: majority class (no training) |" in table
    assert "| baseline: colour rule (no training) |" in table
    results = json.loads((out / "results.json").read_text())["table1"]
    colour = results["baselines"]["colour rule"]
    assert f"| baseline: colour rule (no training) | {colour[0]:.2f} |" in table
