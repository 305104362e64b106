"""The DP modes: one registered class each, owning its release, reply fields, sample-rate rule and relation."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.errors import ConfigError
from wsiseg.federated.clients import ClientResult
from wsiseg.federated.distributed import DistributedDp
from wsiseg.federated.modes import DP_MODES
from wsiseg.federated.registry import STRATEGIES, make_strategy, strategy_class
from wsiseg.federated.strategies import CentralDp, FedAvg, LocalDp
from wsiseg.privacy.clipping import global_l2_norm
from wsiseg.privacy.noise import make_generator


def _result() -> ClientResult:
    update = {"w": np.full(1000, 0.1, np.float32)}  # norm 3.16, above C = 0.5
    return ClientResult("site-a", update, {"bn.running_mean": np.ones(3, np.float32)}, 120, 5, 0.7, 1.0)


def test_registry_holds_exactly_the_declared_modes() -> None:
    assert tuple(STRATEGIES) == DP_MODES
    for mode in DP_MODES:
        strategy = make_strategy(mode, clip=0.5, noise_multiplier=1.0, rng=make_generator(0)[0])
        assert strategy.mode == mode
        assert isinstance(strategy, strategy_class(mode))
    with pytest.raises(ConfigError, match="none, central, distributed, local"):
        strategy_class("bogus")


def test_what_each_mode_lets_leave_a_site() -> None:
    res = _result()
    plain = FedAvg()
    assert plain.release(res).buffers  # no DP: buffers travel and the counts weight the mean
    assert plain.reply_meta(res) == {"steps": 5, "n_examples": 120, "loss": pytest.approx(0.7)}
    central = CentralDp(clip=0.5, noise_multiplier=1.0, rng=make_generator(0)[0])
    out = central.release(res)
    assert out.buffers == {}
    assert out.update["w"] is res.update["w"]  # raw: the server clips
    assert central.reply_meta(out) == {}
    local = LocalDp(clip=0.5, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="own noise generator"):
        local.release(res)
    noised = local.release(res, make_generator(1)[0])
    assert noised.buffers == {}
    assert local.reply_meta(noised) == {}
    assert global_l2_norm(noised.update) > 10  # sqrt(1000) * 0.5 ~ 15.8 of noise on a clipped 0.5
    got = local.received(noised)
    assert (got.n_examples, got.steps, np.isnan(got.loss)) == (1, 0, True)  # nothing data-dependent arrives


def test_mode_rules() -> None:
    assert CentralDp.accounted_rate(0.3, secret_sampling=True) == 0.3
    assert CentralDp.accounted_rate(0.3, secret_sampling=False) == 1.0
    assert LocalDp.accounted_rate(0.3, secret_sampling=True) == 1.0
    assert (FedAvg.sensitivity, CentralDp.sensitivity, LocalDp.sensitivity) == (1.0, 1.0, 2.0)
    assert FedAvg.protection < CentralDp.protection < DistributedDp.protection < LocalDp.protection
    assert CentralDp.noise_std_mean(1.0, 4.0) == pytest.approx(0.25)
    assert LocalDp.noise_std_mean(1.0, 4.0) == pytest.approx(0.5)
    empty = CentralDp(clip=0.5, noise_multiplier=1.0, rng=make_generator(0)[0]).empty_round(
        {"w": np.zeros(100, np.float32)}, expected_clients=2.0
    )
    assert empty.stats.noise_norm
    assert empty.stats.noise_norm > 0
    assert FedAvg().empty_round({"w": np.zeros(3)}, expected_clients=2.0).update == {}


def test_cli_lists_the_choices_and_refuses_others() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["fed-train", "--dp", "bogus"], env={"COLUMNS": "200"})
    assert res.exit_code == 2
    assert "'none', 'central', 'distributed', 'local', 'sample'" in res.output
    text = runner.invoke(app, ["fed-train", "--help"], env={"COLUMNS": "200"}).output
    for panel in ("Data", "Model", "Optimiser", "Privacy", "Federation", "Run"):
        assert f"─ {panel} ─" in text, panel
    for choice in (
        "[none|central|distributed|local|sample]",
        "[iid|dirichlet|by-site]",
        "[auto|cpu|cuda]",
        "[tile|slide|patient]",
    ):
        assert choice in text, choice
    server = runner.invoke(app, ["fed-server", "--help"], env={"COLUMNS": "200"}).output
    assert "[none|central|distributed|local|sample]" in server
    assert "--round-timeout" in server
    assert "1800" in server


def test_shared_options_have_one_default_and_help_across_commands() -> None:
    import typer.main

    commands = {c.name: c for c in typer.main.get_command(app).commands.values()}  # type: ignore[attr-defined]
    seen: dict[str, tuple[object, str | None, str]] = {}
    for name in ("train", "fed-train", "fed-server", "fed-client", "predict", "evaluate"):
        for param in commands[name].params:
            key = param.name or ""
            if key in (
                "data",
                "model",
                "seed",
                "batch_size",
                "config",
                "resume",
                "runs",
                "workers",
                "certs",
                "port",
                "insecure",
                "out",
                "host",
                "test_fraction",
                "time_budget",  # train stretches its LR schedule to the budget; fed-train stops after a round
                "min_clients",  # fed-server: when a round may close; fed-train (no dropouts): the noise shares
            ):
                continue  # meanings differ by command on purpose (e.g. a site's single --data, predict's batch)
            if (name, key) == ("fed-client", "noise_seed"):
                continue  # a site seeds only its own noise
            now = (param.default, getattr(param, "help", None), name)
            if key in seen:
                assert now[:2] == seen[key][:2], f"--{key}: {name} differs from {seen[key][2]}"
            else:
                seen[key] = now
    assert {"dp", "sigma", "clip", "device", "rounds"} <= set(seen)
