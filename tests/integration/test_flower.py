"""Multi-site training over real Flower processes (SuperLink, SuperNodes, ``flwr run``) on 127.0.0.1.

The integration tests start everything as separate processes with TLS and SuperNode authentication and
stop only the processes they started. Run with ``pytest tests/integration/test_flower.py -m integration``.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from wsiseg.errors import ConfigError
from wsiseg.federated.config import FedConfig

SITES = ["site0", "site1", "site2"]


def _make_cohort(root: Path) -> Path:
    from wsiseg.testing.synthetic import make_slide
    from wsiseg.tiling.batch import tile_many
    from wsiseg.tiling.geometry import TilingConfig

    for i, site in enumerate(SITES):
        for j in range(2):  # two slides per site: one trains, one is held out (as in the simulation)
            s = make_slide(root / "raw" / site / f"{site}_s{j}.svs", width=512, height=512, seed=10 + 3 * i + j,
                           site=i, tile=256, min_level_size=512)  # fmt: skip
            tile_many([s.slide_path], root / site, TilingConfig(window=128, stride=128, size=64), workers=1)
    return root


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_cohort(tmp_path_factory.mktemp("cohort"))


def _cfg(root: Path, rounds: int = 2) -> FedConfig:
    return FedConfig(client_dirs=tuple(str(root / s) for s in SITES), rounds=rounds, local_steps=2, batch_size=4,
                     model="unet_tiny", dp="local", sigma=0.5, clip=0.5, seed=7, noise_seed=7, device="cpu",
                     amp=False, augment=False, eval_every=100)  # fmt: skip


def _certs(out: Path, sites: list[str]) -> Path:
    from wsiseg.cli.fed_certs import fed_certs

    app = typer.Typer()
    app.command()(fed_certs)
    args = ["--out", str(out), "--host", "127.0.0.1", "--days", "1"]
    for s in sites:
        args += ["--site", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


def _weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from wsiseg.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoints" / "final")
    return ckpt.weights, ckpt.card


def _released_counts(run_dir: Path) -> list[int]:
    """Clients per round from the private ledger (the shareable card leaves the counts out)."""
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return [e["n_clients_released"] for e in last["resume"]["ledger"]["entries"]]


def _federate(root: Path, certs: Path, cfg: FedConfig, tag: str, *, min_clients: int, round_timeout: float,
              extra: list[str] = (), on_started: Any = None, resume: bool = False,
              sites: list[str] = SITES) -> tuple[int, Path, dict[str, Any]]:  # fmt: skip
    """Run the server in this process (it spawns SuperLink and flwr run) and one SuperNode per site."""
    from wsiseg.federated.flower import launch
    from wsiseg.federated.flower.federation import SiteOptions, run_server, start_site
    from wsiseg.federated.flower.server_loop import ServerSpec

    work = root / tag
    port = launch.free_port()
    spec = ServerSpec(fed_config=cfg.to_dict(), sites=SITES, run_dir=str(work / "run"), min_clients=min_clients,
                      round_timeout=round_timeout, wait_timeout=120, round_retries=0, resume=resume)  # fmt: skip
    procs: dict[str, Any] = {}

    def site(name: str, data: str) -> Any:
        d = certs / "sites" / name
        # each site seeds its own noise as the simulation seeds client i (the server's seed never reaches it)
        noise_seed = cfg.client_noise_seed(SITES.index(data))
        return start_site(SiteOptions(data=root / data, site=data, server=f"127.0.0.1:{port}",
                                      state_dir=work / f"state-{name}", ca_cert=d / "ca.crt", node_key=d / "node.key",
                                      port=launch.free_port(), device="cpu", threads=1,
                                      noise_seed=noise_seed))  # fmt: skip

    def ready() -> None:
        for s in sites:
            procs[s] = site(s, s)
        for name in extra:  # same CA, key never registered, claims to be site0
            procs[name] = site(name, "site0")
        if on_started is not None:
            on_started(procs, work / "run")

    srv = server_dir = certs / "server"
    tls = launch.Tls(srv / "ca.crt", srv / "server.pem", srv / "server.key")
    try:
        code = run_server(spec, host="127.0.0.1", port=port, tls=tls, site_keys=server_dir / "site-keys",
                          timeout=420, on_ready=ready, say=lambda _: None)  # fmt: skip
    finally:
        for p in procs.values():
            launch.stop(p)
    return code, work, procs


def _simulate_one_thread(cfg: FedConfig, runs_root: Path) -> Any:
    """The in-process run with one torch thread, as the sites train: reductions then run in the same order."""
    from wsiseg.federated.rounds import run_federated

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_federated(cfg, runs_root=runs_root)
    finally:
        torch.set_num_threads(threads)


def _kill_site2_after_round_one(killed: list[float]) -> Any:
    """An ``on_started`` hook: stop site2 once round 1 is logged, and note when in ``killed``."""
    from wsiseg.federated.flower import launch

    def hook(procs: dict[str, Any], run_dir: Path) -> None:
        def watch() -> None:
            log = run_dir / "flower_rounds.csv"
            end = time.monotonic() + 400
            while time.monotonic() < end:
                if log.is_file() and len(log.read_text().splitlines()) >= 2:
                    launch.stop(procs["site2"])
                    killed.append(time.monotonic())
                    return
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()

    return hook


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_flower_tls_auth_matches_simulation(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _cfg(cohort)
    t0 = time.perf_counter()
    sim = _simulate_one_thread(cfg, tmp_path / "sim")
    sim_seconds = time.perf_counter() - t0
    certs = _certs(tmp_path / "certs", [*SITES, "intruder"])
    t0 = time.perf_counter()
    code, work, procs = _federate(cohort, certs, cfg, "tls", min_clients=3, round_timeout=240, extra=["intruder"])
    flower_seconds = time.perf_counter() - t0
    assert code == 0, (work / "run" / "flower" / "flwr-run.log").read_text(errors="replace")[-3000:]
    # the unregistered key is refused by the SuperLink and the node gives up
    assert procs["intruder"].returncode not in (None, 0)
    assert "Exit Code: 305" in (work / "state-intruder" / "supernode.log").read_text(errors="replace")
    fl_w, fl_card = _weights(work / "run")
    sim_w, sim_card = _weights(sim.run_dir)
    diff = max(float((fl_w[k].float() - sim_w[k].float()).abs().max()) for k in sim_w)
    assert set(fl_w) == set(sim_w)
    assert diff <= 1e-6, f"Flower and simulation final weights differ by {diff}"
    moved = max(float((sim_w[k].float() - v.float()).abs().max()) for k, v in _init_weights(cfg).items())
    assert moved > 1e-3  # training did change the model, so equality means something
    assert fl_card["privacy"]["epsilon"] == pytest.approx(sim_card["privacy"]["epsilon"], rel=1e-9)
    assert _released_counts(work / "run") == [3, 3]
    assert "n_clients_released" not in json.dumps(fl_card)
    assert fl_card["federation"] == {"engine": "flower", "min_clients": 3}
    rows = list(csv.DictReader((work / "run" / "flower_rounds.csv").open()))
    per_round = [round(float(r["seconds"]), 2) for r in rows]
    print(f"\nsimulation {sim_seconds:.1f} s for 2 rounds; flower {flower_seconds:.1f} s total, rounds {per_round} s, "
          f"max |w_flower - w_sim| = {diff:.3g}")  # fmt: skip


def _init_weights(cfg: FedConfig) -> dict[str, torch.Tensor]:
    from wsiseg.models import create_model
    from wsiseg.seeds import stream_seed

    torch.manual_seed(stream_seed(cfg.train_seed, "init"))
    return create_model(cfg.model, num_classes=4, norm="groupnorm").state_dict()


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_flower_run_survives_a_killed_site(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    certs = _certs(tmp_path / "certs", SITES)
    killed: list[float] = []
    code, work, _ = _federate(cohort, certs, _cfg(cohort), "drop", min_clients=2, round_timeout=60,
                              on_started=_kill_site2_after_round_one(killed))  # fmt: skip
    assert killed, "round 1 never finished"
    assert code == 0, (work / "run" / "flower" / "flwr-run.log").read_text(errors="replace")[-3000:]
    rows = list(csv.DictReader((work / "run" / "flower_rounds.csv").open()))
    assert [r["answered"] for r in rows] == ["site0;site1;site2", "site0;site1"]
    _, card = _weights(work / "run")
    assert _released_counts(work / "run") == [3, 2]
    assert card["round"] == 2


def test_site_split_matches_simulation_clients(cohort: Path) -> None:
    from wsiseg.federated.clients import build_clients
    from wsiseg.federated.flower.site import load_site

    cfg = _cfg(cohort)
    sim = build_clients(data=(), client_dirs=cfg.client_dirs, n_clients=3, partition="iid", alpha=0.5,
                        test_fraction=cfg.test_fraction, seed=cfg.train_seed)  # fmt: skip
    for i, c in enumerate(sim):
        site = load_site(cohort / SITES[i], name=SITES[i], index=i, test_fraction=cfg.test_fraction,
                         seed=cfg.train_seed)  # fmt: skip
        assert site.name == c.name
        assert site.train.slide_ids == c.train.slide_ids
        assert (site.heldout.slide_ids if site.heldout else []) == (c.heldout.slide_ids if c.heldout else [])
    # a site's own --heldout list fixes its split exactly as fed-train --heldout fixes the simulation's
    held = (sim[0].train.slide_ids[0],)
    fixed = build_clients(data=(), client_dirs=cfg.client_dirs, n_clients=3, partition="iid", alpha=0.5,
                          test_fraction=cfg.test_fraction, seed=cfg.train_seed, heldout=held)  # fmt: skip
    site = load_site(cohort / SITES[0], name=SITES[0], index=0, test_fraction=cfg.test_fraction, seed=cfg.train_seed,
                     heldout=held)  # fmt: skip
    assert site.heldout is not None
    assert site.heldout.slide_ids == list(held) == fixed[0].heldout.slide_ids  # type: ignore[union-attr]
    assert site.train.slide_ids == fixed[0].train.slide_ids
    with pytest.raises(ConfigError, match="not in the dataset"):
        load_site(cohort / SITES[0], name=SITES[0], index=0, test_fraction=0.3, seed=1, heldout=("nope",))


def test_site_noise_state_continues_across_processes(tmp_path: Path) -> None:
    """Each round runs in a fresh ClientApp process: the site's generator resumes where the last release left it."""
    from wsiseg.federated.flower.site import NoiseState
    from wsiseg.privacy.noise import make_generator

    ref, _ = make_generator(5)
    expected = [ref.standard_normal(3) for _ in range(3)]
    for want in expected:
        state = NoiseState(tmp_path, "site", seed=5)  # a new process reads the state file
        rng = state.generator()
        np.testing.assert_array_equal(rng.standard_normal(3), want)
        state.save(rng)
    assert (tmp_path / "noise-site.json").stat().st_mode & 0o077 == 0
    fresh = [NoiseState(tmp_path / d, "site", seed=None).generator().standard_normal(3) for d in ("a", "b")]
    assert not np.array_equal(fresh[0], fresh[1])  # without a site seed: OS entropy, never the server's seed


def test_certificates_and_insecure_guard(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    from wsiseg.federated.flower import launch

    certs = _certs(tmp_path / "c", ["a", "b"])
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((certs / "server" / "server.pem").read_bytes())
    assert srv.issuer == ca.subject
    ca.public_key().verify(srv.signature, srv.tbs_certificate_bytes, ec.ECDSA(srv.signature_hash_algorithm))
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    key = load_ssh_private_key((certs / "sites" / "a" / "node.key").read_bytes(), None)
    assert key.curve.name == "secp384r1"
    assert (certs / "sites" / "a" / "node.key").stat().st_mode & 0o077 == 0
    assert (certs / "server" / "site-keys" / "b.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(ConfigError, match="loopback"):
        launch.check_insecure("10.1.2.3", insecure=True)
    launch.check_insecure("127.0.0.1", insecure=True)


def _refused(res: Any, text: str) -> None:
    assert isinstance(res.exception, ConfigError), res.output
    assert text in str(res.exception)


def test_cli_requires_tls_or_loopback(tmp_path: Path) -> None:
    from wsiseg.cli.fed_client import fed_client
    from wsiseg.cli.fed_server import fed_server

    server, client = typer.Typer(), typer.Typer()
    server.command()(fed_server)
    client.command()(fed_client)
    sites = ["--site", "a", "--site", "b", "--runs", str(tmp_path)]
    res = CliRunner().invoke(server, [*sites, "--host", "127.0.0.1"])
    _refused(res, "--certs")
    res = CliRunner().invoke(server, [*sites, "--insecure"])  # default host 0.0.0.0 is not loopback
    _refused(res, "loopback")
    res = CliRunner().invoke(client, ["--data", str(tmp_path), "--server", "10.0.0.5:9092", "--insecure"])
    _refused(res, "loopback")
    res = CliRunner().invoke(client, ["--data", str(tmp_path), "--server", "10.0.0.5:9092"])
    _refused(res, "--certs")


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_flower_resume_after_a_short_round_with_the_site_back(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that stays short stops the server; the site comes back, --resume completes the run, and the
    final model equals the uninterrupted simulation's (the resent round replays the same noise)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _cfg(cohort)
    sim = _simulate_one_thread(cfg, tmp_path / "sim")
    certs = _certs(tmp_path / "certs", SITES)
    code, work, _ = _federate(cohort, certs, cfg, "resume", min_clients=3, round_timeout=90,
                              on_started=_kill_site2_after_round_one([]))  # fmt: skip
    assert code != 0  # round 2 could not reach --min-clients 3
    assert not (work / "run" / "checkpoints" / "final.json").exists()
    code, work, _ = _federate(cohort, certs, cfg, "resume", min_clients=3, round_timeout=240, resume=True)
    assert code == 0, (work / "run" / "flower" / "flwr-run.log").read_text(errors="replace")[-3000:]
    fl_w, _ = _weights(work / "run")
    sim_w, _ = _weights(sim.run_dir)
    diff = max(float((fl_w[k].float() - sim_w[k].float()).abs().max()) for k in sim_w)
    assert diff <= 1e-6, f"resumed Flower run and simulation differ by {diff}"
    assert _released_counts(work / "run") == [3, 3]
