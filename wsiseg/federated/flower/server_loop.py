"""The round loop of a multi-site run, driven through a Flower ``Grid`` (the ServerApp's body).

It runs the one round loop (:func:`wsiseg.federated.loop.run_rounds`) that the in-process simulation runs,
over the :class:`FlowerSites` transport: client sampling, the DP mode, the privacy ledger, the run logs and
checkpointing every round are the same code. Only the local training moves to the sites.

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
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from wsiseg.classes import ClassTable
from wsiseg.errors import ConfigError, WsisegError
from wsiseg.federated.config import FedConfig
from wsiseg.federated.distributed import SecureSum, check_secure_plan, secure_ranges
from wsiseg.federated.flower.defaults import DEFAULT_ROUND_TIMEOUT, DEFAULT_WAIT_TIMEOUT
from wsiseg.federated.flower.messages import numpy_to_arrays, reply_to_result
from wsiseg.federated.loop import RoundRecord, run_rounds
from wsiseg.federated.server import ServerState, calibrate_sigma
from wsiseg.federated.strategies import FedAvg
from wsiseg.train.runlog import CsvLog, RunFolder

__all__ = ["FlowerSites", "ServerSpec", "serve"]


@dataclass(frozen=True)
class ServerSpec:
    """Everything the ServerApp needs, written by ``wsiseg fed-server`` as ``server-spec.json``."""

    fed_config: dict[str, Any]
    sites: list[str]
    run_dir: str
    min_clients: int = 2
    round_timeout: float = DEFAULT_ROUND_TIMEOUT
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    round_retries: int = 2
    resume: bool = False
    #: SecAgg+ reconstruction threshold (None: ``min_clients``); only with secure aggregation.
    secagg_threshold: int | None = None
    #: Save the masked vectors the server receives under ``<run>/received/`` (an audit of secure aggregation).
    record_received: bool = False

    @classmethod
    def load(cls, path: str | Path) -> ServerSpec:
        """Read a spec file."""
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


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


class FlowerSites:
    """The transport of a multi-site run: a round goes to the picked sites through the Flower grid.

    A round proceeds with the sampled sites that answered within ``round_timeout`` if at least
    ``min(min_clients, sampled)`` did; otherwise it is sent again (identical, so a site that answered
    resends the same bytes) up to ``round_retries`` times, then the run stops with the last round
    checkpointed. Sites keep their own noise state, so there is no private transport state.
    """

    def __init__(self, sites: _Sites, spec: ServerSpec, state: ServerState, log: Any, threshold: int = 0) -> None:
        self.sites, self.spec, self.log, self.rounds = sites, spec, log, state.cfg.rounds
        self.threshold = threshold  # SecAgg+ reconstruction threshold (secure aggregation only)
        run_dir, start_round = state.run_dir, state.start_round
        self.flog = CsvLog(run_dir / "flower_rounds.csv", keep_until=("round", float(start_round - 1)))
        self.stage_log = CsvLog(run_dir / "secagg_stages.csv", keep_until=("round", float(start_round - 1)))
        self.release_seconds = 0.0

    def train(
        self, state: ServerState, strategy: FedAvg, rnd: int, picked: list[int]
    ) -> list[tuple[int, Any]] | SecureSum:
        """Send round ``rnd`` to the picked sites until enough answer."""
        if state.cfg.secure:
            return _collect_secure(state, strategy, self, picked, rnd)
        return _collect(state, self.sites, self.spec, picked, rnd, self.log)

    def private_state(self) -> dict[str, Any]:
        """Nothing: the sites keep their generators."""
        return {}

    def after_round(self, record: RoundRecord) -> None:
        """Log who was sampled and who answered (private), and one console line."""
        names = self.spec.sites
        self.flog.append({"round": record.round, "sampled": ";".join(names[i] for i in record.sampled),
                          "answered": ";".join(record.clients), "seconds": record.seconds})  # fmt: skip
        self.log(f"round {record.round}/{self.rounds}: sites {record.clients}  epsilon {record.epsilon}  "
                 f"({record.seconds:.1f} s)")  # fmt: skip


def serve(grid: Any, spec: ServerSpec, log: Any = print) -> dict[str, Any]:
    """Run (or resume) the whole federated training through ``grid`` with the one round loop.

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
    cfg = FedConfig.from_dict(spec.fed_config)
    threshold = 0
    if cfg.secure:  # the sites calibrate their noise shares to the server's --min-clients
        cfg = replace(cfg, min_clients=spec.min_clients)
        threshold = check_secure_plan(len(spec.sites), spec.min_clients, spec.secagg_threshold)
    folder = RunFolder.existing(Path(spec.run_dir), private=True)
    state = ServerState(cfg, folder.path, "cpu", ClassTable.from_list(sites.info["classes"]),
                        sites.info["tiling"], list(spec.sites),
                        federation={"engine": "flower", "min_clients": spec.min_clients})  # fmt: skip
    if spec.resume:
        state.restore()
    else:
        calibrate_sigma(state)
        folder.write_config({**cfg.to_dict(), "resolved_sigma": state.sigma})
    out = run_rounds(state, FlowerSites(sites, spec, state, log, threshold))
    if out.stopped_early:
        log(out.stopped_early)
    log(f"done: {state.run_dir}  epsilon {out.epsilon}")
    result = {"rounds_done": out.last_round, "epsilon": out.epsilon, "run_dir": str(state.run_dir)}
    folder.write_json("result.json", result)
    return result


def _round_config(state: ServerState, sites: _Sites, rnd: int) -> dict[str, Any]:
    return {
        "round": rnd, "train-seed": state.cfg.train_seed, "sigma": float(state.sigma),
        "fed-config": json.dumps(state.cfg.to_dict(), sort_keys=True), "model-args": json.dumps(state.model_args),
        "run-key": state.run_dir.resolve().as_posix(), "n-sites": len(sites.sites),
    }  # fmt: skip


def _train_messages(state: ServerState, sites: _Sites, picked: list[int], rnd: int) -> list[Message]:
    glob = numpy_to_arrays({k: v.detach().cpu().numpy() for k, v in state.global_weights.items()})
    base = _round_config(state, sites, rnd)
    return [
        Message(
            RecordDict({"global": glob, "config": ConfigRecord({**base, "client-index": i})}),
            dst_node_id=sites.node_of[i],
            message_type=MessageType.TRAIN,
        )
        for i in picked
        if i in sites.node_of
    ]


def _collect(state: ServerState, sites: _Sites, spec: ServerSpec, picked: list[int], rnd: int,
             log: Any) -> list[tuple[int, Any]]:  # fmt: skip
    """Send round ``rnd`` to the picked sites until enough answer (retrying with returning sites)."""
    need = min(spec.min_clients, len(picked))
    for attempt in range(spec.round_retries + 1):
        sites.refresh(timeout=spec.round_timeout)
        by_node = {nid: i for i, nid in sites.node_of.items()}
        msgs = _train_messages(state, sites, picked, rnd)
        replies = list(sites.grid.send_and_receive(msgs, timeout=spec.round_timeout)) if msgs else []
        got: dict[int, Any] = {}
        for reply in replies:
            i = by_node.get(reply.metadata.src_node_id)
            if i is None:
                continue
            if reply.has_error():
                log(f"round {rnd}: site {spec.sites[i]} failed: {reply.error.reason}")
                continue
            res = reply_to_result(reply.content)
            if res.name != spec.sites[i]:
                log(f"round {rnd}: node for {spec.sites[i]} answered as {res.name!r}; ignored")
                continue
            got[i] = res
        if len(got) >= need:
            return sorted(got.items())
        missing = [spec.sites[i] for i in picked if i not in got]
        log(f"round {rnd}: {len(got)} of {len(picked)} sites answered (need {need}); missing {missing}; "
            f"attempt {attempt + 1}/{spec.round_retries + 1}")  # fmt: skip
    msg = (f"round {rnd}: fewer than --min-clients {need} sites answered within {spec.round_timeout:g} s; "
           f"the last round is checkpointed: fix the sites and rerun with --resume")  # fmt: skip
    raise WsisegError(msg)


def _collect_secure(state: ServerState, strategy: FedAvg, transport: FlowerSites, picked: list[int],
                    rnd: int) -> SecureSum:  # fmt: skip
    """Run round ``rnd`` through SecAgg+ until it unmasks with at least ``--min-clients`` contributors.

    Raises:
        WsisegError: The round could not be unmasked after its retries (the last round is checkpointed).
    """
    from wsiseg.federated.clients import trainable_state
    from wsiseg.federated.flower.secure import secure_collect

    sites, spec = transport.sites, transport.spec
    layout = [(n, tuple(v.shape)) for n, v in trainable_state(state.model).items()]
    ranges = secure_ranges(strategy, sum(int(np.prod(s)) for _, s in layout), len(spec.sites))
    glob = {k: v.detach().cpu().numpy() for k, v in state.global_weights.items()}
    record = Path(state.run_dir) / "received" if spec.record_received else None
    for attempt in range(spec.round_retries + 1):
        sites.refresh(timeout=spec.round_timeout)
        nodes = {sites.node_of[i]: i for i in picked if i in sites.node_of}
        if len(nodes) >= state.min_sites:
            out = secure_collect(sites.grid, rnd=rnd, nodes=nodes, names=spec.sites,
                                 config=_round_config(state, sites, rnd), glob=glob, update_layout=layout,
                                 ranges=ranges, threshold=transport.threshold, timeout=spec.round_timeout,
                                 stage_log=transport.stage_log, record_dir=record, say=transport.log)  # fmt: skip
            if out is not None and len(out.contributors) >= state.min_sites:
                return out
        transport.log(f"round {rnd}: secure aggregation did not close with --min-clients {state.min_sites} sites; "
                      f"attempt {attempt + 1}/{spec.round_retries + 1}")  # fmt: skip
    msg = (f"round {rnd}: secure aggregation did not close with --min-clients {state.min_sites} sites within "
           f"{spec.round_timeout:g} s a stage; the last round is checkpointed: fix the sites and rerun with "
           "--resume")  # fmt: skip
    raise WsisegError(msg)
