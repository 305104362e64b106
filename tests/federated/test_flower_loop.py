"""The Flower server loop and the simulation are one loop: checked in one process over Flower's Grid API.

``LoopbackGrid`` stands in for Flower's ``Grid`` (the transport, not wsiseg code): every node is a site whose
messages are answered by the real ClientApp handlers (``handle_hello``, ``handle_train``). The ServerApp body
(:func:`wsiseg.federated.flower.server_loop.serve`) runs unchanged on it. The real-process path is covered by
``tests/integration/test_flower.py``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dp_accounting
import pytest
import torch
from dp_accounting import pld
from flwr.app import Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from wsiseg.data.dataset import load_sources
from wsiseg.data.units import unit_groups
from wsiseg.federated.config import FedConfig
from wsiseg.federated.flower.client_app import handle_hello, handle_train
from wsiseg.federated.flower.server_loop import ServerSpec, serve
from wsiseg.federated.rounds import run_federated
from wsiseg.train.checkpoint import load_checkpoint

SITES = ["site0", "site1"]
README = Path(__file__).resolve().parents[2] / "README.md"


@contextlib.contextmanager
def _identity(node_id: int) -> Iterator[None]:
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, node_id, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class LoopbackGrid:
    """Flower's Grid API in one process; node ``i + 1`` is site ``i``."""

    def __init__(self, nodes: dict[int, dict[str, Any]]) -> None:
        self.nodes = nodes
        self.sent: list[Message] = []

    def get_nodes(self) -> list[Any]:
        return [SimpleNamespace(node_id=nid, name=node["site"]) for nid, node in self.nodes.items()]

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        del timeout
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            node = self.nodes[nid]
            self.sent.append(msg)
            if msg.metadata.message_type == MessageType.QUERY:
                content = handle_hello(node)
            else:
                content = handle_train(node, msg.content)
            with _identity(nid):
                replies.append(Message(content=content, reply_to=msg))
        return replies


@pytest.fixture
def sites(tiles64: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for s in SITES:
        (root / s).symlink_to(tiles64, target_is_directory=True)
    return root


def _cfg(root: Path, **kw: Any) -> FedConfig:
    base = {"client_dirs": tuple(str(root / s) for s in SITES), "rounds": 3, "local_steps": 1, "batch_size": 8,
            "model": "dhunet_tiny", "model_args": {"img_size": 64}, "dp": "local", "sigma": 0.5, "clip": 0.5,
            "seed": 7, "noise_seed": 7, "device": "cpu", "amp": False, "eval_every": 100}  # fmt: skip
    return FedConfig(**{**base, **kw})  # type: ignore[arg-type]


def _serve(cfg: FedConfig, root: Path, work: Path) -> tuple[dict[str, Any], LoopbackGrid]:
    nodes = {i + 1: {"data": str(root / s), "site": s, "state-dir": str(work / f"state-{s}"), "device": "cpu",
                     "require-dp": "local", "noise-seed": str(cfg.client_noise_seed(i))}
             for i, s in enumerate(SITES)}  # fmt: skip
    spec = ServerSpec(fed_config=cfg.to_dict(), sites=SITES, run_dir=str(work / "run"), min_clients=2,
                      round_timeout=10, wait_timeout=10, round_retries=0)  # fmt: skip
    grid = LoopbackGrid(nodes)
    with _identity(0):
        result = serve(grid, spec, log=lambda _: None)
    return result, grid


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_flower_loop_equals_the_simulation(sites: Path, tmp_path: Path) -> None:
    cfg = _cfg(sites, rounds=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sim = run_federated(cfg, runs_root=tmp_path / "sim")
        result, grid = _serve(cfg, sites, tmp_path / "fl")
    finally:
        torch.set_num_threads(threads)
    fl = load_checkpoint(Path(result["run_dir"]) / "checkpoints" / "final")
    ref = load_checkpoint(sim.run_dir / "checkpoints" / "final")
    for k, v in ref.weights.items():
        assert torch.equal(v, fl.weights[k]), k
    assert fl.card["privacy"]["epsilon"] == pytest.approx(ref.card["privacy"]["epsilon"], rel=1e-12)
    # the same round records on both paths: nothing data-dependent beyond the released tensors
    for name in ("rounds.csv", "clients.csv", "privacy.csv"):
        a, b = _rows(sim.run_dir / name), _rows(Path(result["run_dir"]) / name)
        # held-out evaluation is the simulation's own (Flower sites keep their held-out slides); timings differ
        keep = [k for k in a[0] if not k.endswith("seconds") and k != "dp_overhead" and not k.startswith("test_")]
        assert [{k: r[k] for k in keep} for r in a] == [{k: r[k] for k in keep} for r in b], name
    assert all(math.isnan(float(r["train_loss"])) for r in _rows(sim.run_dir / "rounds.csv"))  # the loss stays home
    assert {r["steps"] for r in _rows(sim.run_dir / "clients.csv")} == {"0"}
    train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert len(train) == 4


def test_target_epsilon_stop_records_the_last_round_run(sites: Path, tmp_path: Path) -> None:
    """Both paths stop before a round would exceed the budget and say which round they released last."""
    cfg = _cfg(sites, sigma=4.0, target_epsilon=3.5, rounds=5)
    sim = run_federated(cfg, runs_root=tmp_path / "sim")
    result, _ = _serve(cfg, sites, tmp_path / "fl")
    assert sim.stopped_early.startswith("stopped before round")
    assert 1 <= sim.rounds_done < 5
    assert result["rounds_done"] == sim.rounds_done  # the Flower path wrote cfg.rounds (5) here before
    card = json.loads((Path(result["run_dir"]) / "checkpoints" / "final.json").read_text())
    assert card["round"] == sim.rounds_done
    assert card["privacy"]["rounds_released"] == sim.rounds_done
    assert card["privacy"]["epsilon"] <= 3.5


def _sample(root: Path, **kw: Any) -> FedConfig:
    """Sample-level DP-SGD per slide, a few steps (q = 2 / the site's training slides)."""
    base = {"dp": "sample", "privacy_unit": "slide", "sigma": 1.2, "clip": 1.0, "rounds": 2, "local_steps": 2,
            "batch_size": 2, "tiles_per_unit": 3, "physical_batch": 4}  # fmt: skip
    return _cfg(root, **{**base, **kw})


def _independent_epsilon(q: float, sigma: float, steps: int, delta: float = 1e-5) -> float:
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))  # fmt: skip
    return acc.get_epsilon(delta)


def _documented_sample_keys() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- shareable-card-sample -->")[1].split("<!-- /shareable-card-sample -->")[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in cells for i, name in enumerate(cell.split("`")) if i % 2}


def test_sample_mode_flower_equals_simulation_and_accounts_per_site(sites: Path, tmp_path: Path) -> None:
    cfg = _sample(sites)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sim = run_federated(cfg, runs_root=tmp_path / "sim")
        result, grid = _serve(cfg, sites, tmp_path / "fl")
    finally:
        torch.set_num_threads(threads)
    fl = load_checkpoint(Path(result["run_dir"]) / "checkpoints" / "final")
    ref = load_checkpoint(sim.run_dir / "checkpoints" / "final")
    for k, v in ref.weights.items():
        assert torch.equal(v, fl.weights[k]), k
    priv = ref.card["privacy"]
    assert priv["dp"] == "sample"
    assert priv["unit"] == "slide"
    assert "group privacy" in priv["unit_protected"]
    assert fl.card["privacy"]["sites"] == priv["sites"]
    # each site's epsilon is dp_accounting's Poisson-subsampled Gaussian over its own 2 rounds x 2 steps
    train = load_sources([sites / SITES[0]])
    for site in priv["sites"]:
        assert site["steps"] == 4
        assert site["epsilon"] == pytest.approx(_independent_epsilon(site["q"], 1.2, 4), rel=2e-3)
    n_units = len(unit_groups(train, "slide"))
    assert max(s["q"] for s in priv["sites"]) >= 2 / n_units  # q = batch / the site's training slides
    assert priv["epsilon"] == max(s["epsilon"] for s in priv["sites"])
    assert _keys(ref.card) == _documented_sample_keys()
    assert "patients" not in ref.card["fed_config"]
    # the same per-site privacy rows on both paths; the reply carries the account and nothing data-dependent
    assert _rows(sim.run_dir / "privacy.csv") == _rows(Path(result["run_dir"]) / "privacy.csv")
    replies = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert len(replies) == 4
    site_ledger = json.loads((tmp_path / "fl" / "state-site0" / "privacy-ledger.json").read_text())
    assert [r["round"] for r in site_ledger["releases"]] == [1, 2]
    with (sim.run_dir / "site_log.csv").open(newline="") as fh:
        assert {r["refused"] for r in csv.DictReader(fh)} == {""}


def _keys(card: dict[str, Any]) -> set[str]:
    out = set(card) | {f"model.{k}" for k in card["model"]} | {f"privacy.{k}" for k in card["privacy"]}
    out |= {f"privacy.sites[].{k}" for s in card["privacy"]["sites"] for k in s}
    out |= {f"privacy.ledger[].{k}" for led in card["privacy"]["ledger"] for k in led}
    out |= {f"privacy.ledger[].entries[].{k}" for led in card["privacy"]["ledger"] for e in led["entries"] for k in e}
    return out
