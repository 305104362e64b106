"""The privacy plan both CLIs print, the local (replace-one) figures, and fed-server's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import pld
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.federated.config import FedConfig
from wsiseg.federated.privacy_plan import plan_rows
from wsiseg.federated.rounds import run_federated
from wsiseg.privacy.ledger import PrivacyLedger

TINY = ["--model", "dhunet_tiny", "--img-size", "64"]


def _independent(z: float, rounds: int, delta: float) -> float:
    """Replace-one local DP: each round one Gaussian release of sensitivity 2C, noise std zC (dp_accounting)."""
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z / 2.0), rounds)
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (2.0, 10), (4.0, 150)])
def test_local_mode_reports_replace_one_epsilon(z: float, rounds: int) -> None:
    ledger = PrivacyLedger(delta=1e-5)
    for r in range(1, rounds + 1):
        ledger.record_round(round=r, noise_multiplier=z, sample_rate=1.0, clip=0.5, n_clients_released=3,
                            sensitivity=2.0)  # fmt: skip
    want = _independent(z, rounds, 1e-5)
    assert ledger.epsilon() == pytest.approx(want, rel=2e-3)
    plan = plan_rows(FedConfig(dp="local", sigma=z, rounds=rounds, clients=3, model="dhunet_tiny",
                               model_args={"img_size": 64}), with_params=False)  # fmt: skip
    assert plan["rows"][-1]["epsilon_pld"] == pytest.approx(want, rel=2e-3)
    assert "replace-one" in plan["relation"]
    # the zero-out figure (sensitivity C) that local mode reported before is markedly smaller
    assert PrivacyLedger(delta=1e-5).projected_epsilon(noise_multiplier=z, sample_rate=1.0,
                                                       extra_rounds=rounds) < 0.75 * want  # fmt: skip


def test_local_run_ledger_and_calibration(tiles64: Path, tmp_path: Path) -> None:
    cfg = FedConfig(data=(str(tiles64),), clients=2, partition="by-site", rounds=1, local_steps=1, batch_size=8,
                    dp="local", target_epsilon=20.0, eval_every=5, model="dhunet_tiny",
                    model_args={"img_size": 64})  # fmt: skip
    res = run_federated(cfg, runs_root=tmp_path)
    card = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())
    sigma = card["privacy"]["noise_multiplier"]
    assert card["privacy"]["sensitivity"] == 2.0
    assert res.epsilon == pytest.approx(_independent(sigma, 1, 1e-5), rel=2e-3)
    assert 19.0 < res.epsilon <= 20.0


def test_fed_server_dry_run_prints_the_plan_and_warnings() -> None:
    args = ["fed-server", "--site", "a", "--site", "b", "--sigma", "0.05", "--clip", "0.5", "--seed", "3", *TINY,
            "--insecure", "--host", "127.0.0.1", "--dry-run"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "284.4" in text  # round 1 at the paper's sigma
    assert "no meaningful formal privacy" in text
    assert "reproducible only from that private state" in text
    assert "zero-out with the public roster of 2 sites" in text


def test_fed_server_refuses_batchnorm_under_dp(tmp_path: Path) -> None:
    args = ["fed-server", "--site", "a", "--site", "b", *TINY, "--norm", "batchnorm", "--insecure", "--host",
            "127.0.0.1", "--runs", str(tmp_path)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 8, res.output  # PrivacyError: a setting DP cannot protect, one line
    assert "is BatchNorm" in res.output
    assert "use --norm groupnorm" in res.output
    assert not list(tmp_path.iterdir())  # refused before any run folder or SuperLink


def test_noise_seed_warns_and_claims_no_amplification(tiles64: Path) -> None:
    args = ["fed-train", "--data", str(tiles64), "--clients", "2", "--fraction", "0.5", "--noise-seed", "5", *TINY,
            "--dry-run"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "--noise-seed makes the DP noise" in text
    assert "client sampling q 1" in text
    assert "no amplification (--noise-seed makes the schedule predictable)" in text
