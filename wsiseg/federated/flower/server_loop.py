"""The round loop of a multi-site run, driven through a Flower ``Grid`` (the ServerApp's body).

It runs the same pieces as the in-process simulation (:func:`wsiseg.federated.rounds.run_federated`):
client sampling, the strategy (:class:`FedAvg` / :class:`DpFedAvg`), the privacy ledger, the run logs and
checkpointing every round. Only the local training moves to the sites.

Sites are identified by name. Each site has a fixed client index (its position in ``sites``), so local
training and local-DP noise use the same seeds as the simulation's client ``i``, and results are
aggregated in index order. A SuperNode whose registered name (``flwr supernode register --name``)
differs from the site it claims is ignored.

Dropouts: a round proceeds with the sampled sites that answered within ``round_timeout`` if at least
``min(min_clients, sampled)`` did; otherwise the round is sent again (sites that came back in the
meantime join) up to ``round_retries`` times, then the run stops with the last round checkpointed for
``--resume``. The ledger records a round only once it is aggregated, with the number of sites released.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from wsiseg.classes import ClassTable
from wsiseg.errors import ConfigError, WsisegError
from wsiseg.federated.config import FedConfig
from wsiseg.federated.flower.messages import numpy_to_arrays, reply_to_result
from wsiseg.federated.server import RunLogs, ServerState, aggregate_round, calibrate_sigma, sample_clients
from wsiseg.federated.strategies import FedAvg
from wsiseg.fileio import atomic_write_text
from wsiseg.train.runlog import CsvLog, write_config

__all__ = ["ServerSpec", "serve"]


@dataclass(frozen=True)
class ServerSpec:
    """Everything the ServerApp needs, written by ``wsiseg fed-server`` as ``server-spec.json``."""

    fed_config: dict[str, Any]
    sites: list[str]
    run_dir: str
    min_clients: int = 2
    round_timeout: float = 600.0
    wait_timeout: float = 600.0
    round_retries: int = 2
    resume: bool = False

    @classmethod
    def load(cls, path: str | Path) -> ServerSpec:
        """Read a spec file."""
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


class _Server(ServerState):
    """The server state of a multi-site run: sites instead of local clients."""

    def __init__(self, spec: ServerSpec, classes: ClassTable, tiling: dict[str, Any]) -> None:
        cfg = FedConfig.from_dict(spec.fed_config)
        super().__init__(cfg, Path(spec.run_dir), "cpu", classes, tiling, list(spec.sites),
                         federation={"engine": "flower", "min_clients": spec.min_clients})  # fmt: skip
        self.spec = spec


class _Sites:
    """Which online SuperNode is which site (learned with a hello query, checked against its name)."""

    def __init__(self, grid: Any, sites: list[str], log: Any) -> None:
        self.grid, self.sites, self.log = grid, sites, log
        self.node_of: dict[int, int] = {}  # site index -> node id
        self.info: dict[str, Any] = {}
        self.refused: set[int] = set()

    def refresh(self, timeout: float) -> None:
        nodes = {n.node_id: n for n in self.grid.get_nodes()}
        self.node_of = {i: nid for i, nid in self.node_of.items() if nid in nodes}
        new = [nid for nid in nodes if nid not in self.node_of.values() and nid not in self.refused]
        if not new:
            return
        msgs = [Message(RecordDict({"hello": ConfigRecord({"v": 1})}), dst_node_id=nid,
                        message_type=MessageType.QUERY) for nid in new]  # fmt: skip
        for reply in self.grid.send_and_receive(msgs, timeout=timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error():
                self.log(f"node {nid}: hello failed: {reply.error.reason}")
                continue
            info = json.loads(str(reply.content.config_records["hello"]["json"]))
            site, registered = info["site"], nodes[nid].name
            if site not in self.sites or (registered and registered != site):
                self.log(f"node {nid} (registered as {registered!r}) claims unknown site {site!r}; ignored")
                self.refused.add(nid)
                continue
            self.node_of[self.sites.index(site)] = nid
            self.info.setdefault("classes", info["classes"])
            self.info.setdefault("tiling", info["tiling"])
            if info["classes"] != self.info["classes"]:
                msg = f"site {site} has another class table than the first site; the sites must share classes"
                raise ConfigError(msg)

    def wait(self, wanted: int, timeout: float, poll: float = 2.0) -> None:
        end = time.monotonic() + timeout
        while True:
            self.refresh(timeout=max(30.0, poll))
            if len(self.node_of) >= wanted or time.monotonic() > end:
                return
            time.sleep(poll)


def serve(grid: Any, spec: ServerSpec, log: Any = print) -> dict[str, Any]:
    """Run (or resume) the whole federated training through ``grid``.

    Args:
        grid: The ServerApp's Flower ``Grid``.
        spec: Settings (see :class:`ServerSpec`).
        log: Called with one line per event.

    Returns:
        ``{"rounds_done", "epsilon", "run_dir"}``.

    Raises:
        WsisegError: Fewer than ``min_clients`` sites connect, or a round stays short after its retries.
    """
    if spec.min_clients < 1 or spec.min_clients > len(spec.sites):
        msg = f"--min-clients must be in [1, {len(spec.sites)}] for {len(spec.sites)} sites, got {spec.min_clients}"
        raise ConfigError(msg)
    sites = _Sites(grid, list(spec.sites), log)
    sites.wait(len(spec.sites), spec.wait_timeout)
    if len(sites.node_of) < spec.min_clients:
        msg = (f"only {len(sites.node_of)} of {len(spec.sites)} sites connected within {spec.wait_timeout:g} s "
               f"(need --min-clients {spec.min_clients}); start the sites with `wsiseg fed-client`")  # fmt: skip
        raise WsisegError(msg)
    log(f"sites online: {sorted(spec.sites[i] for i in sites.node_of)}")
    srv = _Server(spec, ClassTable.from_list(sites.info["classes"]), sites.info["tiling"])
    if spec.resume:
        srv.restore()
    else:
        calibrate_sigma(srv)
        write_config(srv.run_dir, {**srv.cfg.to_dict(), "resolved_sigma": srv.sigma}, private=True)
    logs = RunLogs(srv.run_dir, srv.start_round - 1)
    flog = CsvLog(srv.run_dir / "flower_rounds.csv", keep_until=("round", float(srv.start_round - 1)))
    strategy = srv.strategy()
    last = srv.start_round - 1
    for rnd in range(srv.start_round, srv.cfg.rounds + 1):
        stopped = srv.budget_stop(rnd)
        if stopped:
            log(stopped)
            break
        _one_round(srv, sites, strategy, rnd, logs, flog, log)
        last = rnd
    srv.save_final(last)
    logs.plots()
    final_eps = srv.privacy_summary().get("epsilon")
    log(f"done: {srv.run_dir}  epsilon {final_eps}")
    result = {"rounds_done": last, "epsilon": final_eps, "run_dir": str(srv.run_dir)}
    atomic_write_text(srv.run_dir / "result.json", json.dumps(result, indent=2), private=True)
    return result


def _train_messages(srv: _Server, sites: _Sites, picked: list[int], rnd: int) -> list[Message]:
    glob = numpy_to_arrays({k: v.detach().cpu().numpy() for k, v in srv.global_weights.items()})
    base = {
        "round": rnd, "train-seed": srv.cfg.train_seed, "sigma": float(srv.sigma),
        "fed-config": json.dumps(srv.cfg.to_dict(), sort_keys=True), "model-args": json.dumps(srv.model_args),
        "run-key": srv.run_dir.resolve().as_posix(),
    }  # fmt: skip
    return [
        Message(
            RecordDict({"global": glob, "config": ConfigRecord({**base, "client-index": i})}),
            dst_node_id=sites.node_of[i],
            message_type=MessageType.TRAIN,
        )
        for i in picked
        if i in sites.node_of
    ]


def _collect(srv: _Server, sites: _Sites, picked: list[int], rnd: int, log: Any) -> list[tuple[int, Any]]:
    """Send round ``rnd`` to the picked sites until enough answer (retrying with returning sites)."""
    need = min(srv.spec.min_clients, len(picked))
    for attempt in range(srv.spec.round_retries + 1):
        sites.refresh(timeout=srv.spec.round_timeout)
        by_node = {nid: i for i, nid in sites.node_of.items()}
        msgs = _train_messages(srv, sites, picked, rnd)
        replies = list(sites.grid.send_and_receive(msgs, timeout=srv.spec.round_timeout)) if msgs else []
        got: dict[int, Any] = {}
        for reply in replies:
            i = by_node.get(reply.metadata.src_node_id)
            if i is None:
                continue
            if reply.has_error():
                log(f"round {rnd}: site {srv.spec.sites[i]} failed: {reply.error.reason}")
                continue
            res = reply_to_result(reply.content)
            if res.name != srv.spec.sites[i]:
                log(f"round {rnd}: node for {srv.spec.sites[i]} answered as {res.name!r}; ignored")
                continue
            got[i] = res
        if len(got) >= need:
            return sorted(got.items())
        missing = [srv.spec.sites[i] for i in picked if i not in got]
        log(f"round {rnd}: {len(got)} of {len(picked)} sites answered (need {need}); missing {missing}; "
            f"attempt {attempt + 1}/{srv.spec.round_retries + 1}")  # fmt: skip
    msg = (f"round {rnd}: fewer than --min-clients {need} sites answered within {srv.spec.round_timeout:g} s; "
           f"the last round is checkpointed: fix the sites and rerun with --resume")  # fmt: skip
    raise WsisegError(msg)


def _one_round(srv: _Server, sites: _Sites, strategy: FedAvg, rnd: int, logs: RunLogs, flog: CsvLog,
               log: Any) -> float | None:  # fmt: skip
    t0 = time.perf_counter()
    picked = sample_clients(srv)
    got = _collect(srv, sites, picked, rnd, log) if picked else []
    results = [res for _, res in got]
    t_train = time.perf_counter() - t0
    agg = aggregate_round(strategy, results, srv)
    srv.apply(agg)
    t_dp = time.perf_counter() - t0 - t_train
    eps = srv.record(rnd, len(results))
    loss = float(np.nanmean([r.loss for r in results])) if results and srv.cfg.dp == "none" else math.nan
    logs.write(rnd, srv, results, agg.stats, loss, None, eps, {}, t_train, t_dp)  # type: ignore[arg-type]
    answered = [srv.spec.sites[i] for i, _ in got]
    flog.append({"round": rnd, "sampled": ";".join(srv.spec.sites[i] for i in picked),
                 "answered": ";".join(answered), "seconds": time.perf_counter() - t0})  # fmt: skip
    srv.save_last(rnd)
    log(f"round {rnd}/{srv.cfg.rounds}: sites {answered}  epsilon {eps}  ({time.perf_counter() - t0:.1f} s)")
    return eps
