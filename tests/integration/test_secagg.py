"""Secure aggregation (Flower SecAgg+) with distributed DP over real Flower processes on 127.0.0.1.

Four SuperNodes with TLS and node authentication train ``--dp distributed`` for two rounds. Round 1: the
server's aggregate equals the sum of what the sites released, and what the server received from each site is
masked. Round 2: one site is killed after the key-sharing stage and the round still closes with the others.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from safetensors.numpy import load_file
from typer.testing import CliRunner

from wsiseg.federated.config import FedConfig

SITES = ["site0", "site1", "site2", "site3"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsiseg.testing.synthetic import make_slide
    from wsiseg.tiling.batch import tile_many
    from wsiseg.tiling.geometry import TilingConfig

    root = tmp_path_factory.mktemp("secagg")
    for i, site in enumerate(SITES):
        for j in range(2):
            s = make_slide(root / "raw" / site / f"{site}_s{j}.svs", width=512, height=512, seed=40 + 3 * i + j,
                           site=i % 3, tile=256, min_level_size=512)  # fmt: skip
            tile_many([s.slide_path], root / site, TilingConfig(window=128, stride=128, size=64), workers=1)
    return root


def _cfg(root: Path) -> FedConfig:
    return FedConfig(client_dirs=tuple(str(root / s) for s in SITES), rounds=2, local_steps=2, batch_size=4,
                     model="unet_tiny", dp="distributed", sigma=0.5, clip=0.5, seed=7, noise_seed=7, device="cpu",
                     amp=False, augment=False, eval_every=100, secure_aggregation=True)  # fmt: skip


def _certs(out: Path) -> Path:
    from wsiseg.cli.fed_certs import fed_certs

    app = typer.Typer()
    app.command()(fed_certs)
    args = ["--out", str(out), "--host", "127.0.0.1", "--days", "1"]
    for s in SITES:
        args += ["--site", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _watch(work: Path, procs: dict[str, Any], snap: Path, events: list[str]) -> None:
    """Copy the round-1 state (checkpoint, site releases) once it exists; kill site3 in round 2 after share-keys."""
    from wsiseg.federated.flower import launch

    run = work / "run"
    end = time.monotonic() + 500
    while time.monotonic() < end and "killed" not in events:
        last = run / "checkpoints" / "last.json"
        if "snap" not in events and last.is_file():
            try:
                done = json.loads(last.read_text())["round"]
            except (ValueError, KeyError):
                done = 0
            if done == 1:
                shutil.copytree(run / "checkpoints", snap / "checkpoints")
                for s in SITES:
                    for f in (work / f"state-{s}").glob("release-*.safetensors"):
                        shutil.copy(f, snap / f"{s}.safetensors")
                events.append("snap")
        if any(r["round"] == "2" and r["stage"] == "share-keys" for r in _rows(run / "secagg_stages.csv")):
            launch.stop(procs["site3"])
            events.append("killed")
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_secagg_distributed_dp_over_flower(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsiseg.federated.flower import launch
    from wsiseg.federated.flower.federation import SiteOptions, run_server, start_site
    from wsiseg.federated.flower.server_loop import ServerSpec
    from wsiseg.privacy.secure_sum import choose_ranges, encode, noise_share_std
    from wsiseg.train.checkpoint import load_checkpoint

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _cfg(cohort)
    certs = _certs(tmp_path / "certs")
    work, snap = tmp_path / "fl", tmp_path / "snap"
    snap.mkdir()
    port = launch.free_port()
    spec = ServerSpec(fed_config=cfg.to_dict(), sites=SITES, run_dir=str(work / "run"), min_clients=3,
                      round_timeout=60, wait_timeout=120, round_retries=0, record_received=True)  # fmt: skip
    procs: dict[str, Any] = {}
    events: list[str] = []

    def ready() -> None:
        for s in SITES:
            d = certs / "sites" / s
            procs[s] = start_site(SiteOptions(data=cohort / s, site=s, server=f"127.0.0.1:{port}",
                                              state_dir=work / f"state-{s}", ca_cert=d / "ca.crt",
                                              node_key=d / "node.key", port=launch.free_port(), device="cpu",
                                              threads=1, require_dp="distributed",
                                              noise_seed=cfg.client_noise_seed(SITES.index(s))))  # fmt: skip
        threading.Thread(target=_watch, args=(work, procs, snap, events), daemon=True).start()

    srv = certs / "server"
    try:
        code = run_server(spec, host="127.0.0.1", port=port, tls=launch.Tls(srv / "ca.crt", srv / "server.pem",
                          srv / "server.key"), site_keys=srv / "site-keys", timeout=900, on_ready=ready,
                          say=lambda _: None)  # fmt: skip
    finally:
        for p in procs.values():
            launch.stop(p)
    run = work / "run"
    assert code == 0, (run / "flower" / "flwr-run.log").read_text(errors="replace")[-3000:]
    assert events == ["snap", "killed"], events

    # round 1: global(1) - global(0) is the sum of the four releases / 4, exact up to float32 weights
    w1 = load_checkpoint(snap / "checkpoints" / "last").weights
    torch.manual_seed(__import__("wsiseg.seeds", fromlist=["stream_seed"]).stream_seed(cfg.train_seed, "init"))
    from wsiseg.models import create_model

    w0 = create_model(cfg.model, num_classes=4, norm="groupnorm").state_dict()
    rel = {s: load_file(str(snap / f"{s}.safetensors")) for s in SITES}
    names = list(rel["site0"])
    d = sum(v.size for v in rel["site0"].values())
    ranges = choose_ranges(clip=0.5, noise_std=noise_share_std(0.5, 0.5, 3), n_params=d, n_sites=4)
    err = max(float(np.abs((w1[n].double() - w0[n].double()).numpy() - sum(rel[s][n] for s in SITES) / 4).max())
              for n in names)  # fmt: skip
    assert err <= 1e-6 + ranges.step, err
    moved = max(float((w1[n] - w0[n]).abs().max()) for n in names)
    assert moved > 1e-3

    # what the server received from each site is masked: no correlation with that site's release, while the
    # unmasked sum does correlate with it (the same check finds a signal when there is one)
    total = np.concatenate([sum(rel[s][n] for s in SITES).ravel() for n in names])
    for s in SITES:
        got = np.load(run / "received" / f"round1-{s}.npy").astype(np.float64)
        mine = np.concatenate([a.ravel() for a in encode(rel[s], ranges)]).astype(np.float64)
        assert got.size == mine.size + 1  # the weight factor SecAgg+ prepends
        masked_corr = abs(np.corrcoef(got[1:], mine)[0, 1])
        assert masked_corr < 0.05, (s, masked_corr)
        own = np.concatenate([rel[s][n].ravel() for n in names])
        assert np.corrcoef(total, own)[0, 1] > 0.3

    # round 2 closed with the three survivors; the ledger says so and epsilon matches dp_accounting run here
    last = json.loads((run / "checkpoints" / "last.json").read_text())
    entries = last["resume"]["ledger"]["entries"]
    assert [e["n_clients_released"] for e in entries] == [4, 3]
    card = load_checkpoint(run / "checkpoints" / "final").card
    priv = card["privacy"]
    assert priv["noise_shares"] == [4, 3]
    assert priv["min_clients"] == 3
    import dp_accounting

    def eps(zs: list[float]) -> float:
        acc = dp_accounting.pld.PLDAccountant()
        for z in zs:
            acc.compose(dp_accounting.GaussianDpEvent(z))
        return float(acc.get_epsilon(1e-5))

    assert priv["epsilon"] == pytest.approx(eps([0.5 * math.sqrt(4 / 3), 0.5]), rel=2e-3)
    assert priv["epsilon_one_site_colluding"] == pytest.approx(eps([0.5, 0.5 * math.sqrt(2 / 3)]), rel=2e-3)
    stages = _rows(run / "secagg_stages.csv")
    r2 = [r for r in stages if r["round"] == "2"]
    assert [r["stage"] for r in r2] == ["setup", "share-keys", "collect-masked-vectors", "unmask"]
    assert r2[2]["active"] == "3"
