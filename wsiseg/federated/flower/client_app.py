"""The wsiseg ClientApp: one site trains the global model on its own tiles and releases its update.

Each site's SuperNode is started with ``--node-config <state-dir>/node-config.toml`` holding ``data`` (the
site's tile dataset), ``site`` (its name, which must match the name its key was registered under),
``state-dir`` (private per-site state: the local-DP generator), ``device`` and ``require-dp``.

Per round the site: loads the global weights, trains with the shared loop
(:func:`wsiseg.federated.clients.local_update`, seeded from ``(seed, round, client index)``), then applies
the DP mode before anything leaves: ``local`` clips and noises with the site's own generator
(:meth:`DpFedAvg.client_release`), ``central`` clips to ``C`` (the server clips again and adds the noise),
``none`` sends the raw update and normalisation buffers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from wsiseg.errors import ConfigError, PrivacyError

__all__ = ["app", "handle_hello", "handle_train"]

app = ClientApp()
log = logging.getLogger("wsiseg.fed-client")

_DP_RANK = {"none": 0, "central": 1, "local": 2}


def _node(context: Context) -> dict[str, Any]:
    cfg = dict(context.node_config)
    missing = [k for k in ("data", "site", "state-dir") if k not in cfg]
    if missing:
        msg = f"SuperNode node config lacks {missing}; start the site with `wsiseg fed-client`"
        raise ConfigError(msg)
    return cfg


def handle_hello(node: dict[str, Any]) -> RecordDict:
    """The site's name, class table and tiling settings (no counts or slide names leave the site)."""
    from wsiseg.data.dataset import load_sources  # noqa: PLC0415

    src = load_sources([node["data"]])
    info = {"site": str(node["site"]), "classes": src.classes.to_list(), "tiling": src.config.to_dict()}
    return RecordDict({"hello": ConfigRecord({"json": json.dumps(info, sort_keys=True)})})


def handle_train(node: dict[str, Any], content: RecordDict) -> RecordDict:
    """Train one round and return only what the DP mode lets leave the site.

    Raises:
        PrivacyError: The server asks for a weaker DP mode than the site requires.
    """
    import torch  # noqa: PLC0415

    from wsiseg.config import resolve_device  # noqa: PLC0415
    from wsiseg.federated.clients import local_update  # noqa: PLC0415
    from wsiseg.federated.config import FedConfig  # noqa: PLC0415
    from wsiseg.federated.flower.messages import arrays_to_numpy, result_to_reply  # noqa: PLC0415
    from wsiseg.federated.flower.site import load_site  # noqa: PLC0415
    from wsiseg.federated.rounds import local_training  # noqa: PLC0415
    from wsiseg.models import create_model  # noqa: PLC0415

    conf = content.config_records["config"]
    cfg = FedConfig.from_dict(json.loads(str(conf["fed-config"])))
    rnd, index, seed = int(conf["round"]), int(conf["client-index"]), int(conf["train-seed"])
    sigma = float(conf["sigma"])
    required = str(node.get("require-dp", "none"))
    if _DP_RANK[cfg.dp] < _DP_RANK.get(required, 0):
        msg = f"site {node['site']} requires --dp {required} but the server asked for --dp {cfg.dp}; refusing"
        raise PrivacyError(msg)
    client = load_site(node["data"], name=str(node["site"]), index=index, test_fraction=cfg.test_fraction,
                       seed=seed)  # fmt: skip
    device = resolve_device(str(node.get("device", "auto")))
    model = create_model(cfg.model, num_classes=len(client.train.classes), **json.loads(str(conf["model-args"])))
    model.to(device)
    arrays = arrays_to_numpy(content.array_records["global"])
    glob = {k: torch.from_numpy(v.copy()).to(device) for k, v in arrays.items()}
    t0 = time.perf_counter()

    res = local_update(model, glob, client, local_training(cfg, device), round_index=rnd, total_rounds=cfg.rounds,
                       seed=seed, client_index=index)  # fmt: skip
    released = _release(cfg, sigma, res, Path(str(node["state-dir"])), str(conf["run-key"]), rnd, index)
    log.info("site %s round %d: %d steps, loss %.4f, pre-clip norm %.4g, %.1f s (kept at the site)",
             client.name, rnd, res.steps, res.loss, released.pre_clip_norm or float("nan"),
             time.perf_counter() - t0)  # fmt: skip
    return result_to_reply(released, dp=cfg.dp)


def _release(cfg: Any, sigma: float, res: Any, state_dir: Path, run_key: str, rnd: int, index: int) -> Any:
    """Apply the DP mode with the same code as the simulation (``DpFedAvg.client_release``)."""
    from wsiseg.federated.clients import ClientResult  # noqa: PLC0415
    from wsiseg.federated.flower.site import NoiseState  # noqa: PLC0415
    from wsiseg.federated.strategies import DpFedAvg  # noqa: PLC0415
    from wsiseg.privacy.clipping import clip_update, global_l2_norm  # noqa: PLC0415
    from wsiseg.privacy.noise import make_generator  # noqa: PLC0415

    if cfg.dp == "none":
        return res
    if cfg.dp == "central":  # only a clipped update leaves; the server's own clip is then a no-op
        clipped, info = clip_update(res.update, cfg.clip, scope=cfg.clip_scope)
        out = ClientResult(res.name, clipped, {}, res.n_examples, res.steps, res.loss, res.seconds)
        out.pre_clip_norm = info.pre_clip_norm
        return out
    strategy = DpFedAvg("local", clip=cfg.clip, noise_multiplier=sigma, rng=make_generator(None)[0],
                        scope=cfg.clip_scope)  # fmt: skip
    noise = NoiseState(state_dir, run_key, cfg.seed, index)
    rng = noise.generator_for(rnd)
    out = strategy.client_release(res, rng)
    noise.save(rng, rnd)
    if out.pre_clip_norm is None:
        out.pre_clip_norm = global_l2_norm(res.update)
    return out


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Answer the server's hello with the site's name and dataset settings."""
    return Message(content=handle_hello(_node(context)), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training."""
    return Message(content=handle_train(_node(context), msg.content), reply_to=msg)
