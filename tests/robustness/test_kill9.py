"""kill -9 at random points of ``tile``, ``predict`` and ``export``, then the same command again: the outputs are
byte-identical to an uninterrupted run, and nothing partial is left under a final name or as scratch.

Each kill lands mid-work: once the output folder holds a number of entries (scratch folders included) drawn from a
seeded generator below what the finished run holds, so at a different point of each command; the assertions
hold wherever it lands (none depends on timing).
(``fed-train`` has its kill -9 / ``--resume`` test in ``tests/federated/test_kill_resume.py``.)
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wsiseg.testing.synthetic import make_patch_image, make_slide

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
KILLS = 2  # kill points per command
# names that only volatile metadata (timings, absolute paths of a run) distinguish between two equal runs
VOLATILE = ("run.log",)


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "wsiseg", *[str(a) for a in args]]


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path: its SHA-256 (JSON files with the folder path normalised)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name in VOLATILE:
            continue
        data = p.read_bytes()
        if p.suffix in (".json", ".csv", ".geojson"):
            data = data.replace(str(folder).encode(), b"<out>")
        out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def _entries(folder: Path) -> int:
    """Entries under ``folder`` now (0 while it does not exist; the command renames things as we count)."""
    try:
        return sum(1 for _ in folder.rglob("*")) if folder.is_dir() else 0
    except FileNotFoundError:
        return 0


def _kill_then_rerun(cmd: list[str], out: Path, entries: int) -> bool:
    """Kill ``cmd`` once ``out`` holds ``entries`` entries; rerun it. Returns whether the kill came before the end."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and _entries(out) < entries:
            time.sleep(0.002)
        early = proc.poll() is None
        proc.send_signal(signal.SIGKILL)  # only the process this test started
    finally:
        proc.wait(timeout=120)
    done = subprocess.run(cmd, env=ENV, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return early


def _check(cmd_for: Callable[[Path], list[str]], ref: Path, work: Path, seed: int) -> None:
    done = subprocess.run(cmd_for(ref), env=ENV, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    want = _digest(ref)
    assert want
    total = sum(1 for _ in ref.rglob("*"))
    rng = np.random.default_rng(seed)
    early = 0
    for k in range(KILLS):
        out = work / f"kill{k}"
        early += _kill_then_rerun(cmd_for(out), out, int(rng.integers(1, max(2, total - 1))))
        got = _digest(out)
        assert got == want, sorted(set(got.items()) ^ set(want.items()))[:6]
        left = [p.name for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith((".partial", ".tmp"))]
        assert not left, left
    assert early, "every kill came after the command had finished: the test tested nothing"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from wsiseg.classes import DEFAULT_CLASSES
    from wsiseg.models import create_model
    from wsiseg.tiling.geometry import TilingConfig
    from wsiseg.train.card import ModelCard, ModelSpec
    from wsiseg.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("kill9")
    for i in range(3):
        make_slide(root / "slides" / f"s{i}.svs", width=1536, height=1024, seed=20 + i, tile=256, min_level_size=512)
        make_patch_image(root / "patches" / f"p{i}.png", size=(384, 256), seed=30 + i)
    torch.manual_seed(0)
    net = create_model("unet_tiny", pretrained=False)
    card = ModelCard(ModelSpec("unet_tiny", {}), DEFAULT_CLASSES.to_list(),
                     TilingConfig(window=128, stride=64, size=32).to_dict())  # fmt: skip
    save_checkpoint(root / "ckpt", net, card)
    return root


def test_kill9_during_tile_then_rerun(inputs: Path, tmp_path: Path) -> None:
    def cmd(out: Path) -> list[str]:
        return _cli("tile", inputs / "slides", "--out", out, "--window", "256", "--stride", "128", "--size", "64",
                    "--workers", "1")  # fmt: skip

    _check(cmd, tmp_path / "ref", tmp_path, seed=1)


def test_kill9_during_predict_then_rerun(inputs: Path, tmp_path: Path) -> None:
    def cmd(out: Path) -> list[str]:
        return _cli("predict", inputs / "patches", "--out", out, "--checkpoint", inputs / "ckpt", "--probs",
                    "--workers", "0", "--device", "cpu")  # fmt: skip

    _check(cmd, tmp_path / "ref", tmp_path, seed=2)


def test_kill9_during_export_then_rerun(inputs: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    cmd = _cli("predict", inputs / "patches", "--out", masks, "--checkpoint", inputs / "ckpt", "--workers", "0",
               "--device", "cpu")  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]

    def cmd(out: Path) -> list[str]:
        return _cli("export", *sorted(masks.glob("*.tif")), "--slides", inputs / "patches", "--out", out)

    _check(cmd, tmp_path / "ref", tmp_path, seed=3)
