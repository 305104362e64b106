"""The wsiseg ClientApp: one site trains the global model on its own tiles and releases its update.

Each site's SuperNode is started with ``--node-config <state-dir>/node-config.toml`` holding ``data`` (the
site's tile dataset), ``site`` (its name, which must match the name its key was registered under),
``state-dir`` (private per-site state: the local-DP generator and the release log), ``device`` and the
site's policy: ``require-dp``, ``min-sigma``, ``max-clip`` and, for reproductions only, ``noise-seed``.

Per round the site: loads the global weights, trains with the shared loop
(:func:`wsiseg.federated.clients.local_update`, seeded from ``(seed, round, client index)``), then applies
the DP mode before anything leaves: ``sample`` trains with DP-SGD from the site's own generator and
accounts it in the site's own ledger, checked against ``max-epsilon`` first; ``local`` clips and noises with
the site's own generator (:meth:`FedAvg.release` of the mode), ``central`` sends the raw update without
buffers (the server clips and adds the noise), ``none`` sends the raw update and normalisation buffers.
The site's noise never depends on anything the server sends (see :mod:`wsiseg.federated.flower.site`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from wsiseg.errors import ConfigError, PrivacyError

__all__ = ["app", "handle_hello", "handle_secure_train", "handle_train"]

app = ClientApp()
log = logging.getLogger("wsiseg.fed-client")


def _node(context: Context) -> dict[str, Any]:
    cfg = dict(context.node_config)
    missing = [k for k in ("data", "site", "state-dir") if k not in cfg]
    if missing:
        msg = f"SuperNode node config lacks {missing}; start the site with `wsiseg fed-client`"
        raise ConfigError(msg)
    return cfg


def handle_hello(node: dict[str, Any]) -> RecordDict:
    """The site's name, class table and tiling settings (no counts or slide names leave the site)."""
    from wsiseg.data.dataset import load_sources

    src = load_sources([node["data"]])
    info = {"site": str(node["site"]), "classes": src.classes.to_list(), "tiling": src.config.to_dict()}
    return RecordDict({"hello": ConfigRecord({"json": json.dumps(info, sort_keys=True)})})


def handle_train(node: dict[str, Any], content: RecordDict) -> RecordDict:
    """Train one round and return only what the DP mode lets leave the site.

    Before training, the site's policy is checked (mode, sigma floor, clip ceiling) and the request is matched
    against the site's release log: an identical resend gets the exact bytes released before, a different
    request for an answered round is refused.

    Raises:
        PrivacyError: The request asks for less protection than the site allows, changes an answered round, or
            asks for a secure-aggregation mode outside secure aggregation.
    """
    from wsiseg.federated.flower.messages import arrays_to_numpy, result_to_reply

    conf = content.config_records["config"]
    released, meta = _train_release(node, {k: conf[k] for k in conf.keys()},  # noqa: SIM118
                                    arrays_to_numpy(content.array_records["global"]), secagg=None)  # fmt: skip
    return result_to_reply(released, meta)


def handle_secure_train(node: dict[str, Any], content: RecordDict, secagg: dict[str, Any]) -> RecordDict:
    """One round under SecAgg+: train, release onto the grid, hand the vector to ``secaggplus_mod`` to mask.

    ``secagg`` is the mod's state after its setup stage (threshold, ranges); the site checks it against the
    run's noise calibration before anything is released.
    """
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    conf = dict(fitins.config)
    arrays = dict(zip(json.loads(str(conf["names"])), parameters_to_ndarrays(fitins.parameters), strict=True))
    released, _ = _train_release(node, conf, arrays, secagg=secagg)
    order = json.loads(str(conf["update-names"]))
    if list(released.update) != order:
        msg = f"site {node['site']}: the server's update layout differs from this site's model; refusing"
        raise ConfigError(msg)
    params = ndarrays_to_parameters([np.asarray(released.update[n], dtype=np.float64) for n in order])
    return compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), params, 1, {}), keep_input=True)


def _train_release(node: dict[str, Any], conf: dict[str, Any], arrays: dict[str, Any],
                   secagg: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Policy check, replay check, local training and the mode's release: ``(released, reply_meta)``."""
    import torch

    from wsiseg.config import resolve_device
    from wsiseg.federated.clients import ClientResult, local_update
    from wsiseg.federated.config import FedConfig
    from wsiseg.federated.flower.site import ReleaseLog, SitePolicy, load_site, request_digest
    from wsiseg.federated.registry import make_strategy
    from wsiseg.federated.rounds import local_training
    from wsiseg.models import create_model
    from wsiseg.privacy.clipping import global_l2_norm

    cfg = FedConfig.from_dict(json.loads(str(conf["fed-config"])))
    rnd, index, seed = (int(str(conf[k])) for k in ("round", "client-index", "train-seed"))
    sigma, site = float(str(conf["sigma"])), str(node["site"])
    SitePolicy.from_node_config(node).check(site, cfg.dp, sigma, cfg.clip)
    if cfg.secure != (secagg is not None):
        how = "outside" if cfg.secure else "inside"
        msg = f"site {site}: the server sent a --dp {cfg.dp} round {how} secure aggregation; refusing"
        raise PrivacyError(msg)
    digest = request_digest(arrays, {k: conf[k] for k in sorted(conf)})
    releases = ReleaseLog(Path(str(node["state-dir"])), str(conf["run-key"]))
    stored = releases.replay(site, rnd, digest)
    if stored is not None:
        update, meta = stored
        log.info("site %s round %d: identical request resent; resending the same release", site, rnd)
        return ClientResult(site, update, {}, 1, 0, math.nan, 0.0), meta
    heldout = tuple(json.loads(str(node.get("heldout", "") or "[]")))
    client = load_site(node["data"], name=site, index=index, test_fraction=cfg.test_fraction, seed=seed,
                       heldout=heldout)  # fmt: skip
    device = resolve_device(str(node.get("device", "auto")))
    model = create_model(cfg.model, num_classes=len(client.train.classes), **json.loads(str(conf["model-args"])))
    model.to(device)
    glob = {k: torch.from_numpy(v.copy()).to(device) for k, v in arrays.items()}
    t0 = time.perf_counter()

    sgd = _site_sgd(cfg, sigma, node) if cfg.dp == "sample" else None
    n_sites = int(str(conf.get("n-sites", 1)))
    strategy = make_strategy(cfg.dp, clip=cfg.clip, noise_multiplier=sigma, scope=cfg.clip_scope, sgd=sgd,
                             min_sites=cfg.min_clients or n_sites, n_sites=n_sites)  # fmt: skip
    local = strategy.local_training(local_training(cfg, device))
    if strategy.per_site_accounting:
        res = _train_sample(node, cfg, conf, client, local, model, glob, sigma)
    else:
        res = local_update(model, glob, client, local, round_index=rnd, total_rounds=cfg.rounds, seed=seed,
                           client_index=index)  # fmt: skip
    released = _release(strategy, res, node, secagg=secagg, n_sites=n_sites, min_sites=cfg.min_clients or n_sites)
    if strategy.private:
        releases.record(rnd, digest, released.update, strategy.reply_meta(released))
    pre = released.pre_clip_norm if released.pre_clip_norm is not None else global_l2_norm(res.update)
    log.info("site %s round %d: %d steps, loss %.4f, pre-clip norm %.4g, %.1f s (kept at the site)",
             client.name, rnd, res.steps, res.loss, pre, time.perf_counter() - t0)  # fmt: skip
    return released, strategy.reply_meta(released)


def _site_sgd(cfg: Any, sigma: float, node: dict[str, Any]) -> Any:
    """The DP-SGD settings the server asked for, with this site's own patient table (``fed-client --patients``)."""
    from dataclasses import replace

    from wsiseg.data.units import load_patient_table

    table = str(node.get("patients", "")).strip()
    sgd = cfg.dp_sgd(sigma, load_table=False)
    return replace(sgd, patients=load_patient_table(table), patients_name=table) if table else sgd


def _train_sample(node: dict[str, Any], cfg: Any, conf: Any, client: Any, local: Any, model: Any, glob: Any,
                  sigma: float) -> Any:  # fmt: skip
    """DP-SGD at the site: its own budget check, its own generator, its own ledger, all before anything leaves.

    Raises:
        PrivacyError: The round would take the site past ``--max-epsilon``.
    """
    from wsiseg.federated.clients import dp_sgd_plan, local_update
    from wsiseg.federated.flower.site import NoiseState, SiteLedger

    state_dir, site = Path(str(node["state-dir"])), str(node["site"])
    rnd, index, seed = (int(str(conf[k])) for k in ("round", "client-index", "train-seed"))
    budget = str(node.get("max-epsilon", "")).strip()
    ledger = SiteLedger(state_dir, delta=cfg.delta, max_epsilon=float(budget) if budget else None)
    _, q, steps = dp_sgd_plan(client, local)
    ledger.check_budget(site, sigma=sigma, q=q, steps=steps)
    noise_seed = str(node.get("noise-seed", "")).strip()
    noise = NoiseState(state_dir, "site", int(noise_seed) if noise_seed else None)
    rng = noise.generator()
    res = local_update(model, glob, client, local, round_index=rnd, total_rounds=cfg.rounds, seed=seed,
                       client_index=index, noise_rng=rng)  # fmt: skip
    noise.save(rng)
    eps = ledger.record(str(conf["run-key"]), rnd, sigma=sigma, q=q, clip=cfg.clip, steps=steps)
    res.privacy = {**(res.privacy or {}), "epsilon": eps, "epsilon_rdp": ledger.ledger.entries[-1].epsilon_rdp}
    log.info("site %s round %d: DP-SGD per %s, q %.4g, %d steps, site epsilon %.4g (budget %s)", site, rnd,
             cfg.privacy_unit, q, steps, eps, budget or "none")  # fmt: skip
    return res


def _release(strategy: Any, res: Any, node: dict[str, Any], *, secagg: dict[str, Any] | None = None,
             n_sites: int = 1, min_sites: int = 1) -> Any:  # fmt: skip
    """Apply the DP mode with the same code as the simulation (:meth:`FedAvg.release`).

    Modes that noise at the site draw from the site's own generator (:class:`NoiseState`), saved before the
    release leaves, so a crash can never make the site reuse noise for another round. Under secure aggregation
    the release is put onto the grid (:func:`wsiseg.privacy.secure_sum.to_grid`) with the same generator, after
    the site checked that SecAgg+ was set up with that grid and a threshold of at least ``min_sites``.
    """
    from wsiseg.federated.distributed import secure_ranges
    from wsiseg.federated.flower.site import NoiseState
    from wsiseg.privacy.secure_sum import to_grid

    if not strategy.noises_at_site or strategy.per_site_accounting:  # DP-SGD noised while training
        return strategy.release(res)
    ranges = None
    if secagg is not None:
        ranges = secure_ranges(strategy, sum(int(v.size) for v in res.update.values()), n_sites)
        _check_secagg(str(node["site"]), secagg, ranges, min_sites)
    seed = str(node.get("noise-seed", "")).strip()
    noise = NoiseState(Path(str(node["state-dir"])), "site", int(seed) if seed else None)
    rng = noise.generator()
    out = strategy.release(res, rng)
    if ranges is not None:
        out.update = to_grid(out.update, ranges, rng)[0]
    noise.save(rng)
    return out


def _check_secagg(site: str, secagg: dict[str, Any], ranges: Any, min_sites: int) -> None:
    """Refuse a SecAgg+ session that could unmask fewer shares than calibrated, or that uses another grid."""
    threshold, sampled = int(secagg.get("threshold", 0)), int(secagg.get("sample_num", 0))
    if threshold < min_sites or sampled < min_sites:
        msg = (f"site {site}: secure aggregation set up with threshold {threshold} for {sampled} sites, below "
               f"--min-clients {min_sites} that the noise shares are calibrated to; refusing")  # fmt: skip
        raise PrivacyError(msg)
    if (float(secagg.get("clipping_range", 0.0)) != ranges.clipping_range
            or int(secagg.get("target_range", 0)) != ranges.quantization_range
            or int(secagg.get("mod_range", 0)) != ranges.modulus_range):  # fmt: skip
        msg = f"site {site}: secure aggregation set up with another grid than the run's; refusing"
        raise PrivacyError(msg)


def _secure_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Hand SecAgg+ messages to Flower's ``secaggplus_mod`` (masking, key shares); pass the others through."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Answer the server's hello with the site's name and dataset settings."""
    return Message(content=handle_hello(_node(context)), reply_to=msg)


@app.train(mods=[_secure_mod])
def train(msg: Message, context: Context) -> Message:
    """One round of local training (under SecAgg+, the mod masks what this returns)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE

    if "fitins.parameters" in msg.content.array_records:
        state = context.state.config_records.get(RECORD_KEY_STATE)
        secagg = {k: state[k] for k in state.keys()} if state is not None else {}  # noqa: SIM118
        return Message(content=handle_secure_train(_node(context), msg.content, secagg), reply_to=msg)
    return Message(content=handle_train(_node(context), msg.content), reply_to=msg)
