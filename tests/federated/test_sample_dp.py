"""``--dp sample``: DP-SGD at every site, in the simulation and over Flower's Grid API, with per-site accounting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.data.dataset import load_sources
from wsiseg.data.units import load_patient_table, unit_groups
from wsiseg.errors import PrivacyError
from wsiseg.federated.config import FedConfig
from wsiseg.federated.flower.client_app import handle_train
from wsiseg.federated.flower.site import SiteLedger
from wsiseg.federated.rounds import run_federated


@pytest.fixture
def two_sites(tiles64: Path, tmp_path: Path) -> tuple[str, ...]:
    for s in ("a", "b"):
        (tmp_path / s).symlink_to(tiles64, target_is_directory=True)
    return (str(tmp_path / "a"), str(tmp_path / "b"))


def _sample(dirs: tuple[str, ...], **kw: Any) -> FedConfig:
    base = {"client_dirs": dirs, "rounds": 2, "local_steps": 2, "batch_size": 2,
            "model": "dhunet_tiny", "model_args": {"img_size": 64}, "dp": "sample", "privacy_unit": "slide",
            "sigma": 1.2, "clip": 1.0, "tiles_per_unit": 3, "physical_batch": 4, "seed": 7, "device": "cpu",
            "amp": False, "eval_every": 100}  # fmt: skip
    return FedConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_sample_budget_stops_the_simulation(two_sites: tuple[str, ...], tmp_path: Path) -> None:
    cfg = _sample(two_sites, rounds=3, sigma=1.0, target_epsilon=5.5, seed=2)  # q = 2/4 slides: round 2 passes
    res = run_federated(cfg, runs_root=tmp_path / "runs")
    card = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())
    assert res.rounds_done == 1
    assert "epsilon would" in res.stopped_early
    assert card["privacy"]["epsilon"] <= 5.5
    assert card["round"] == res.rounds_done
    assert card["privacy"]["noise_source"] == "os-entropy"


def test_site_refuses_a_round_past_its_budget_and_a_spent_budget_at_start(tiles64: Path, tmp_path: Path) -> None:
    cfg = _sample((str(tiles64),))
    node = {"data": str(tiles64), "site": "a", "state-dir": str(tmp_path / "state"), "device": "cpu",
            "max-epsilon": "0.05"}  # fmt: skip
    from flwr.app import ConfigRecord, RecordDict

    from wsiseg.federated.flower.messages import numpy_to_arrays
    from wsiseg.models import create_model

    model = create_model("dhunet_tiny", num_classes=4, img_size=64, norm="groupnorm")
    conf = {"round": 1, "train-seed": 7, "sigma": 1.2, "fed-config": json.dumps(cfg.to_dict()), "client-index": 0,
            "model-args": json.dumps({"img_size": 64, "norm": "groupnorm"}), "run-key": "r"}  # fmt: skip
    content = RecordDict({"global": numpy_to_arrays({k: v.numpy() for k, v in model.state_dict().items()}),
                          "config": ConfigRecord(conf)})  # fmt: skip
    with pytest.raises(PrivacyError, match="above --max-epsilon"):
        handle_train(node, content)
    assert not (tmp_path / "state" / "privacy-ledger.json").exists()  # refused before any step
    spent = SiteLedger(tmp_path / "spent", delta=1e-5, max_epsilon=None)
    spent.record("old-run", 1, sigma=0.5, q=0.5, clip=1.0, steps=20)
    args = ["fed-client", "--data", str(tiles64), "--server", "127.0.0.1:1", "--insecure", "--site", "a",
            "--state-dir", str(tmp_path / "spent"), "--max-epsilon", "1"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 8, res.output
    assert "already exceeds --max-epsilon" in res.output
    assert not (tmp_path / "spent" / "node-config.toml").exists()  # no SuperNode started


def test_patient_units_and_their_table(tiles64: Path, tmp_path: Path) -> None:
    src = load_sources([tiles64])
    ids = src.slide_ids
    table = tmp_path / "patients.csv"
    table.write_text("slide,patient\n" + "".join(f"{s},p{i % 2}\n" for i, s in enumerate(ids)), encoding="utf-8")
    groups = unit_groups(src, "patient", patients=load_patient_table(table))
    assert len(groups) == 2
    assert sorted(i for g in groups for i in g) == list(range(len(src.records)))
    partial = tmp_path / "partial.csv"
    partial.write_text("slide,patient\n" + f"{ids[0]},p0\n", encoding="utf-8")
    runs = tmp_path / "runs"
    base = ["fed-train", "--data", str(tiles64), "--clients", "2", "--partition", "by-site", "--model",
            "dhunet_tiny", "--img-size", "64", "--dp", "sample", "--rounds", "1", "--local-steps", "1", "--runs",
            str(runs)]  # fmt: skip
    cases = [
        (["--privacy-unit", "patient", "--patients", str(partial), "--batch-size", "1"], "have no patient"),
        (["--sample-rate", "1.5"], "--sample-rate"),
        (["--norm", "batchnorm"], "is BatchNorm"),
        (["--privacy-unit", "slide", "--batch-size", "50"], "lower --batch-size or pass --sample-rate"),
    ]
    for extra, needle in cases:
        res = CliRunner().invoke(app, [*base, *extra], env={"COLUMNS": "300"})
        assert res.exit_code == 8, (extra, res.output)
        assert needle in res.output, (extra, res.output)
        assert not runs.exists()  # refused before any run folder
