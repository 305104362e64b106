"""What travels between the wsiseg ServerApp and ClientApp: numpy dicts <-> Flower records.

A train request carries the global weights (``global``) and a ``config`` record (round, client index,
the run's ``FedConfig`` as JSON, DP settings). A train reply carries the update (``update``), buffers
(``buffers``, only with ``--dp none``) and a ``meta`` metric record. Under DP the reply holds nothing but
the released update tensors: the training loss, example count, step count (which gives the tile count to
within a batch) and pre-clip norm are data-dependent numbers that no accountant covers, so they stay in the
site's own log.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from wsiseg.federated.clients import ClientResult

__all__ = [
    "arrays_to_numpy",
    "numpy_to_arrays",
    "reply_to_result",
    "result_to_reply",
]


def numpy_to_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Name-ordered numpy arrays as an ``ArrayRecord`` (order and dtypes kept)."""
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Back to a name-ordered dict of numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def result_to_reply(result: ClientResult, meta: dict[str, float | int]) -> RecordDict:
    """Pack what a site releases: the tensors and the scalars its mode lets leave (``FedAvg.reply_meta``)."""
    content = RecordDict({"update": numpy_to_arrays(result.update), "meta": MetricRecord(dict(meta))})
    if result.buffers:
        content["buffers"] = numpy_to_arrays(result.buffers)
    content["site"] = ConfigRecord({"name": result.name})
    return content


def reply_to_result(content: RecordDict) -> ClientResult:
    """Unpack a site's reply into the ``ClientResult`` the strategies aggregate (as ``FedAvg.received`` does).

    Without DP the example count weights FedAvg; under DP weights are equal and it is not sent (set to 1).
    A sample-mode reply carries the site's public account (``q``, steps, epsilon) as ``privacy``.
    """
    meta: dict[str, Any] = dict(content.metric_records["meta"])
    name = str(content.config_records["site"]["name"])
    buffers = arrays_to_numpy(content.array_records["buffers"]) if "buffers" in content.array_records else {}
    return ClientResult(
        name=name,
        update=arrays_to_numpy(content.array_records["update"]),
        buffers=buffers,
        n_examples=int(meta.get("n_examples", 1)),
        steps=int(meta.get("steps", 0)),
        loss=float(meta.get("loss", math.nan)),
        seconds=0.0,
        privacy={k: meta[k] for k in ("q", "steps", "epsilon", "epsilon_rdp") if k in meta} if "q" in meta else None,
    )
