"""A site owns its privacy on the Flower path: attacks by a curious server on the real ClientApp handler.

Each test drives :func:`wsiseg.federated.flower.client_app.handle_train` (what a SuperNode runs every round)
with requests a server could send. Before the privacy hardening: resending round 1 with ``lr=0`` gave back
the same noise on a zero update, so the difference of the two replies was the site's exact clipped update
(norm 0.013 against 411 for a reply); ``sigma=0`` was accepted under ``--require-dp local``; the site's noise
was seeded from the server's ``--seed``; the reply carried the step count.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from wsiseg.errors import PrivacyError
from wsiseg.federated.config import FedConfig
from wsiseg.federated.flower.client_app import handle_train
from wsiseg.federated.flower.messages import arrays_to_numpy, numpy_to_arrays
from wsiseg.models import create_model
from wsiseg.privacy.noise import gaussian_noise_like, make_generator

ARGS = {"img_size": 64, "norm": "groupnorm"}


def _request(rnd: int, *, lr: float = 0.01, sigma: float = 0.5, clip: float = 0.5, dp: str = "local",
             run_key: str = "/srv/run-1") -> RecordDict:  # fmt: skip
    cfg = FedConfig(rounds=3, local_steps=2, batch_size=8, model="dhunet_tiny", model_args=ARGS, dp=dp, sigma=sigma,
                    clip=clip, seed=7, noise_seed=7, device="cpu", amp=False, augment=False, lr=lr)  # fmt: skip
    torch.manual_seed(7)
    model = create_model("dhunet_tiny", num_classes=4, **ARGS)
    conf = {"round": rnd, "train-seed": 7, "sigma": sigma, "fed-config": json.dumps(cfg.to_dict(), sort_keys=True),
            "model-args": json.dumps(ARGS), "run-key": run_key, "client-index": 0}  # fmt: skip
    glob = numpy_to_arrays({k: v.numpy() for k, v in model.state_dict().items()})
    return RecordDict({"global": glob, "config": ConfigRecord(conf)})


def _node(tiles: Path, state: Path, **policy: str) -> dict[str, Any]:
    return {"data": str(tiles), "site": "site-a", "state-dir": str(state), "device": "cpu", "require-dp": "local",
            **policy}  # fmt: skip


def _update(reply: RecordDict) -> dict[str, np.ndarray]:
    return arrays_to_numpy(reply.array_records["update"])


def _norm(u: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in u.values())))


def test_replay_with_lr0_is_refused_and_an_identical_resend_gets_the_same_bytes(tiles64: Path, tmp_path: Path) -> None:
    node = _node(tiles64, tmp_path / "site")
    first = handle_train(node, _request(1))
    assert dict(first.metric_records["meta"]) == {}  # no steps, examples or loss under DP
    with pytest.raises(PrivacyError, match="already answered"):
        handle_train(node, _request(1, lr=0.0))  # the attack: same round, zero update
    again = handle_train(node, _request(1))  # a resend (server resumed): the very same release
    a, b = _update(first), _update(again)
    assert list(a) == list(b)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert _norm(a) > 100 * 0.5  # it is a noised release
    second = handle_train(node, _request(2))  # the next round is a fresh release with fresh noise
    assert _norm({k: _update(second)[k] - a[k] for k in a}) > 100 * 0.5
    # the same round under another run key (a server dodging the release log) still gets fresh noise: the site's
    # generator is one stream for all runs, so two replies never share noise
    other = _update(handle_train(node, _request(1, lr=0.0, run_key="/srv/run-2")))
    assert _norm({k: other[k] - a[k] for k in a}) > 100 * 0.5
    for path in (tmp_path / "site").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "site").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("ask", "policy", "match"),
    [
        ({"sigma": 0.0}, {}, "below this site's --min-sigma|adds no noise"),  # zero noise: refused either way
        ({"sigma": 0.3}, {"min-sigma": "0.5"}, "below this site's --min-sigma"),
        ({"clip": 5.0}, {"max-clip": "1.0"}, "above this site's --max-clip"),
        ({"dp": "central"}, {}, "requires --dp local"),
    ],
)
def test_site_refuses_weaker_settings(tiles64: Path, tmp_path: Path, ask: dict[str, Any], policy: dict[str, str],
                                      match: str) -> None:  # fmt: skip
    with pytest.raises(PrivacyError, match=match):
        handle_train(_node(tiles64, tmp_path / "site", **policy), _request(1, **ask))
    assert not (tmp_path / "site").exists() or not list((tmp_path / "site").glob("release-*"))


def test_site_noise_does_not_come_from_the_server(tiles64: Path, tmp_path: Path) -> None:
    """The server knows every seed it sent; subtracting the noise those seeds give must not reveal the update."""
    req = _request(1)
    a = _update(handle_train(_node(tiles64, tmp_path / "a"), req))
    b = _update(handle_train(_node(tiles64, tmp_path / "b"), _request(1)))
    assert _norm({k: a[k] - b[k] for k in a}) > 100 * 0.5  # two sites with the same data draw different noise
    for seed in (7, 7 * 1009 + 1, 301):  # the old derivations from --seed / --noise-seed the server sent
        noise = gaussian_noise_like(a, 0.5 * 0.5, make_generator(seed)[0])
        assert _norm({k: a[k] - noise[k] for k in a}) > 100 * 0.5, seed
    # the site operator's own --noise-seed does reproduce it (a positive control of the attack above)
    c = _update(handle_train(_node(tiles64, tmp_path / "c", **{"noise-seed": "99"}), _request(1)))
    d = _update(handle_train(_node(tiles64, tmp_path / "d", **{"noise-seed": "99"}), _request(1)))
    assert all(c[k].tobytes() == d[k].tobytes() for k in c)
    noise = gaussian_noise_like(c, 0.5 * 0.5, make_generator(99)[0])
    assert _norm({k: c[k] - noise[k] for k in c}) <= 0.5 * 1.001  # the clipped update, exposed by the seed


def test_distributed_round_outside_secure_aggregation_is_refused(tiles64: Path, tmp_path: Path) -> None:
    # a server asking for noise shares without SecAgg+ would see each site's update with 1/sqrt(m) of the noise
    node = _node(tiles64, tmp_path / "site", **{"require-dp": "distributed"})
    with pytest.raises(PrivacyError, match="outside secure aggregation"):
        handle_train(node, _request(1, dp="distributed"))
    with pytest.raises(PrivacyError, match="requires --dp distributed"):
        handle_train(node, _request(1, dp="central"))
    assert not list((tmp_path / "site").glob("release-*"))  # nothing released


def test_secagg_session_with_a_low_threshold_or_another_grid_is_refused() -> None:
    from wsiseg.federated.flower.client_app import _check_secagg
    from wsiseg.privacy.secure_sum import choose_ranges

    r = choose_ranges(clip=0.5, noise_std=0.2, n_params=1000, n_sites=4)
    ok = {"threshold": 3, "sample_num": 4, "clipping_range": r.clipping_range, "target_range": r.quantization_range,
          "mod_range": r.modulus_range}  # fmt: skip
    _check_secagg("a", ok, r, 3)
    with pytest.raises(PrivacyError, match="threshold 2"):
        _check_secagg("a", {**ok, "threshold": 2}, r, 3)
    with pytest.raises(PrivacyError, match="another grid"):
        _check_secagg("a", {**ok, "clipping_range": r.clipping_range * 2}, r, 3)
