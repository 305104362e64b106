"""``--dp distributed``: noise shares at the sites, the secure sum in the simulation, accounting, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.errors import PrivacyError
from wsiseg.federated.clients import ClientResult
from wsiseg.federated.config import FedConfig
from wsiseg.federated.distributed import DistributedDp, check_secure_plan, secure_round
from wsiseg.federated.registry import make_strategy
from wsiseg.federated.rounds import run_federated

TINY = {"model": "dhunet_tiny", "model_args": {"img_size": 64}}


def _pld_epsilon(zs: list[float], delta: float = 1e-5) -> float:
    acc = dp_accounting.pld.PLDAccountant()
    for z in zs:
        acc.compose(dp_accounting.GaussianDpEvent(z))
    return float(acc.get_epsilon(delta))


def test_release_is_clipped_update_plus_a_share_on_the_grid() -> None:
    s = make_strategy("distributed", clip=0.5, noise_multiplier=1.0, min_sites=4, n_sites=5)
    assert isinstance(s, DistributedDp)
    rng = np.random.default_rng(0)
    upd = {"w": np.full(100_000, 0.01, np.float32), "b": np.zeros(10, np.float32)}  # norm 3.16: clipped to 0.5
    out = s.release(ClientResult("a", upd, {}, 1, 1, 0.0, 0.0), rng).update
    r = s.ranges(100_010)
    j = out["w"] / r.step
    assert np.array_equal(j, np.rint(j))  # on the secure-aggregation grid
    noise = out["w"] - 0.5 * 0.01 / math.sqrt(0.01**2 * 100_000)
    assert noise.std() == pytest.approx(1.0 * 0.5 / math.sqrt(4), rel=0.02)  # sigma C / sqrt(m)
    assert abs(noise.mean()) < 0.01  # the clipped signal is there, unbiased


def test_simulated_secure_sum_equals_the_sum_of_releases() -> None:
    s = make_strategy("distributed", clip=0.5, noise_multiplier=1.0, min_sites=3, n_sites=3)
    rngs = [np.random.default_rng(i) for i in range(3)]
    rel = [s.release(ClientResult(f"c{i}", {"w": np.ones(50, np.float32) * i}, {}, 1, 1, 0.0, 0.0), rngs[i]).update
           for i in range(3)]  # fmt: skip
    out = secure_round([(i, f"c{i}", r) for i, r in enumerate(rel)], s.ranges(50), rngs)
    assert np.array_equal(out.total["w"], rel[0]["w"] + rel[1]["w"] + rel[2]["w"])
    assert out.names == ["c0", "c1", "c2"]
    agg = s.aggregate_sum(out.total, 3, expected_clients=3)
    assert agg.stats.noise_std_sum == pytest.approx(0.5)
    with pytest.raises(PrivacyError, match="below --min-clients"):
        s.aggregate_sum(out.total, 2, expected_clients=3)
    with pytest.raises(PrivacyError, match="secure sum"):
        s.aggregate([], expected_clients=3)


def test_fed_train_distributed_accounts_the_shares_present(tiles64: Path, tmp_path: Path) -> None:
    cfg = FedConfig(data=(str(tiles64),), clients=3, partition="iid", rounds=2, local_steps=1, batch_size=8, seed=3,
                    dp="distributed", sigma=1.0, clip=0.5, min_clients=2, noise_seed=1, **TINY)  # type: ignore[arg-type]  # fmt: skip
    res = run_federated(cfg, runs_root=tmp_path)
    card = json.loads((res.run_dir / "checkpoints" / "final.json").read_text())
    priv = card["privacy"]
    assert priv["noise_shares"] == [3, 3]
    assert priv["min_clients"] == 2
    z = math.sqrt(3 / 2)  # three shares calibrated to two: more noise than sigma
    assert priv["epsilon"] == pytest.approx(_pld_epsilon([z, z]), rel=2e-3)
    assert priv["epsilon_one_site_colluding"] == pytest.approx(_pld_epsilon([1.0, 1.0]), rel=2e-3)
    assert priv["epsilon"] < _pld_epsilon([1.0, 1.0])
    assert "SecAgg+" in priv["secure_aggregation"]


def test_secure_plans_that_cannot_keep_their_promise_are_refused() -> None:
    assert check_secure_plan(4, 3) == 3
    assert check_secure_plan(5, 3, 4) == 4
    for n, m, t, what in [(2, 2, None, "at least 3 sites"), (4, 1, None, "--min-clients"),
                          (4, 5, None, "--min-clients"), (4, 3, 5, "above the number of sites"),
                          (4, 3, 2, "below --min-clients")]:  # fmt: skip
        with pytest.raises(PrivacyError, match=what):
            check_secure_plan(n, m, t)
    with pytest.raises(PrivacyError, match="--dp distributed"):
        FedConfig(dp="central", secure_aggregation=True)
    with pytest.raises(PrivacyError, match="--fraction 1"):
        FedConfig(dp="distributed", fraction=0.5)
    assert FedConfig(dp="distributed").secure


def test_cli_refuses_bad_secure_settings_with_exit_8(tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["fed-server", "--site", "a", "--site", "b", "--site", "c", "--dp", "distributed",
                              "--min-clients", "2", "--secagg-threshold", "4", "--insecure", "--runs",
                              str(tmp_path / "runs")])  # fmt: skip
    assert res.exit_code == 8, res.output
    assert "above the number of sites" in res.output
    assert not (tmp_path / "runs").exists()  # refused before anything was created
    res = runner.invoke(app, ["fed-server", "--site", "a", "--site", "b", "--dp", "distributed", "--insecure",
                              "--runs", str(tmp_path / "runs")])  # fmt: skip
    assert res.exit_code == 8, res.output
    res = runner.invoke(app, ["fed-train", "--data", str(tmp_path), "--dp", "central", "--secure-aggregation",
                              "--dry-run"])  # fmt: skip
    assert res.exit_code == 8, res.output
    assert "--dp distributed" in res.output


def test_local_dp_releases_summed_securely_stay_within_the_grid_bound() -> None:
    from wsiseg.federated.distributed import aggregate_secure, secure_ranges
    from wsiseg.privacy.secure_sum import quantisation_bound

    s = make_strategy("local", clip=0.5, noise_multiplier=0.5)
    rngs = [np.random.default_rng(10 + i) for i in range(3)]
    rel = [s.release(ClientResult(f"c{i}", {"w": np.full(2000, 0.001 * i, np.float32)}, {}, 1, 1, 0.0, 0.0),
                     rngs[i]).update for i in range(3)]  # fmt: skip
    ranges = secure_ranges(s, 2000, 3)
    out = secure_round([(i, f"c{i}", r) for i, r in enumerate(rel)], ranges, rngs)
    plain = sum(r["w"].astype(np.float64) for r in rel)
    assert np.abs(out.total["w"] - plain).max() <= quantisation_bound(ranges, 3, noise_rounded=False)
    agg = aggregate_secure(s, out, expected_clients=3)
    assert np.allclose(agg.update["w"], plain / 3, atol=ranges.step)
    assert s.round_multiplier(3) is None  # local DP is accounted as before (sigma, replace-one)
    with pytest.raises(PrivacyError, match="not --dp central"):
        secure_ranges(make_strategy("central", clip=0.5, noise_multiplier=1.0), 10, 3)
