"""One securely aggregated round over the Flower grid: Flower's SecAgg+ workflow, stage by stage.

The server runs :class:`flwr.server.workflow.SecAggPlusWorkflow` (Bell et al. 2020, as Flower implements it:
key agreement, Shamir shares of every mask seed, pairwise and private masks modulo ``2**32``); the sites run
``secaggplus_mod`` (:mod:`wsiseg.federated.flower.client_app`). The workflow expects Flower's legacy strategy
context, so :class:`_Capture` plays the legacy strategy: it hands the workflow one ``FitIns`` per picked site
and receives only the unmasked aggregate and the list of contributors. No wsiseg code here sees a site's
vector in the clear; with ``record_received`` the masked vectors the server got are saved for an audit.

The workflow returns the mean of the contributors' grid vectors; :func:`_integer_sum` recovers the exact
integer sum from it and the run decodes it with the same function as the simulation
(:func:`wsiseg.privacy.secure_sum.decode_sum`), so both paths aggregate identical numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import FitIns, Parameters, bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from wsiseg.federated.distributed import SecureSum
from wsiseg.privacy.secure_sum import SecureSumRanges, decode_sum
from wsiseg.train.runlog import CsvLog

__all__ = ["secure_collect"]

_STAGES = ("setup", "share-keys", "collect-masked-vectors", "unmask")


class _Capture(Strategy):  # type: ignore[misc]
    """The legacy strategy the SecAgg+ workflow drives: fixed FitIns out, the unmasked aggregate in."""

    def __init__(self, fitins: dict[int, FitIns], grid: Any) -> None:
        self.fitins, self.grid = fitins, grid
        self.mean: list[np.ndarray] | None = None
        self.contributors: list[int] = []

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        del server_round, parameters, client_manager
        return [(GridClientProxy(nid, self.grid, 0), ins) for nid, ins in self.fitins.items()]

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict[str, Any]]:
        del server_round, failures
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
            self.contributors = [proxy.node_id for proxy, _ in results]
        return None, {}

    def initialize_parameters(self, client_manager: Any) -> None:
        del client_manager

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        del server_round, parameters, client_manager
        return []

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, Any]:
        del server_round, results, failures
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        del server_round, parameters


class _Tap:
    """The grid, recording the masked vectors the server receives in the collect stage (audit only)."""

    def __init__(self, grid: Any, out: Path | None, rnd: int, site_of: dict[int, str]) -> None:
        self.grid, self.out, self.rnd, self.site_of = grid, out, rnd, site_of

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        if self.out is not None:
            for r in replies:
                conf = r.content.config_records.get("secaggplus_configs") if not r.has_error() else None
                if conf is not None and Key.MASKED_PARAMETERS in conf:
                    vec = np.concatenate([bytes_to_ndarray(b).ravel() for b in conf[Key.MASKED_PARAMETERS]])
                    self.out.mkdir(parents=True, exist_ok=True, mode=0o700)
                    np.save(self.out / f"round{self.rnd}-{self.site_of[r.metadata.src_node_id]}.npy", vec)
        return replies


def _integer_sum(mean: list[np.ndarray], k: int, ranges: SecureSumRanges) -> list[np.ndarray]:
    """The exact integer sum behind the workflow's float mean (the grid makes the recovery exact)."""
    return [np.rint((np.asarray(m, dtype=np.float64) * k + k * ranges.clipping_range) / ranges.step).astype(np.int64)
            for m in mean]  # fmt: skip


def secure_collect(grid: Any, *, rnd: int, nodes: dict[int, int], names: list[str], config: dict[str, Any],
                   glob: dict[str, np.ndarray], update_layout: list[tuple[str, tuple[int, ...]]],
                   ranges: SecureSumRanges, threshold: int, timeout: float, stage_log: CsvLog,
                   record_dir: Path | None = None, say: Any = print) -> SecureSum | None:  # fmt: skip
    """Run one SecAgg+ round over ``nodes`` (node id -> client index); ``None`` if it could not be unmasked.

    Args:
        grid: The ServerApp's grid.
        rnd: Round number.
        nodes: The sites of the round.
        names: Site names by client index.
        config: The round's train config (sent to every site with its own ``client-index``).
        glob: The global weights, in the model's order.
        update_layout: Names and shapes of the trainable update, in the order the sites send it.
        ranges: The grid (SecAgg+ clipping, quantisation and modulus ranges).
        threshold: SecAgg+ reconstruction threshold.
        timeout: Seconds each stage waits for replies.
        stage_log: ``secagg_stages.csv``: round, stage, sites still active, seconds.
        record_dir: Where to save the masked vectors received (audit), or None.
        say: Console line sink.
    """
    params = ndarrays_to_parameters(list(glob.values()))
    extra = {"names": json.dumps(list(glob)), "update-names": json.dumps([n for n, _ in update_layout])}
    fitins = {nid: FitIns(params, {**config, **extra, "client-index": i}) for nid, i in nodes.items()}
    capture = _Capture(fitins, grid)
    ctx = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                        strategy=capture)  # fmt: skip
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    ctx.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(Parameters([], "numpy.ndarray"), True)
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=threshold, max_weight=1.0,
                                  clipping_range=ranges.clipping_range, quantization_range=ranges.quantization_range,
                                  modulus_range=ranges.modulus_range, timeout=timeout)  # fmt: skip
    state = WorkflowState()
    tap = _Tap(grid, record_dir, rnd, {nid: names[i] for nid, i in nodes.items()})
    steps = (workflow.setup_stage, workflow.share_keys_stage, workflow.collect_masked_vectors_stage,
             workflow.unmask_stage)  # fmt: skip
    for stage, step in zip(_STAGES, steps, strict=True):
        t0 = time.perf_counter()
        ok = step(tap, ctx, state)  # type: ignore[arg-type]  # a Grid in all but name
        stage_log.append({"round": rnd, "stage": stage, "active": len(state.active_node_ids),
                          "seconds": round(time.perf_counter() - t0, 3)})  # fmt: skip
        if not ok:
            say(f"round {rnd}: secure aggregation halted at the {stage} stage ({len(state.active_node_ids)} sites "
                f"active, threshold {threshold})")  # fmt: skip
            return None
    if capture.mean is None or not capture.contributors:
        return None
    k = len(capture.contributors)
    total = decode_sum(_integer_sum(capture.mean, k, ranges), [n for n, _ in update_layout],
                       [s for _, s in update_layout], k, ranges)  # fmt: skip
    idx = sorted(nodes[nid] for nid in capture.contributors)
    return SecureSum(total, idx, [names[i] for i in idx])
