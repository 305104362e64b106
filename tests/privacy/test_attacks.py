"""Attacks on what a federated run shares: each one succeeds with the private state, and fails from the public card.

1. Seed attack: regenerate the DP noise from seeds found in ``checkpoints/final.json`` (or small guesses) and
   subtract it from the released update. On the code before the privacy hardening the card held the seed and
   this recovered the noise-free sum of clipped updates to a relative error of 3e-4 (central and local).
2. Schedule attack: predict which clients a round sampled from the public card. Before the hardening the
   sampler was seeded from the recorded (or default 301) seed and this predicted every decision.

A positive control runs every attack with the secret the public card must not hold, so a failure means the
secret is missing, not that the attack is broken.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.federated.config import PRIVATE_CONFIG_KEYS, FedConfig
from wsiseg.federated.rounds import run_federated
from wsiseg.federated.server import ServerState, sample_clients
from wsiseg.fileio import default_mode
from wsiseg.models import create_model
from wsiseg.privacy.noise import gaussian_noise_like, make_generator
from wsiseg.privacy.sampling import ClientSampler
from wsiseg.seeds import stream_seed
from wsiseg.train.checkpoint import load_checkpoint

TINY = {"model": "dhunet_tiny", "model_args": {"img_size": 64}}
README = Path(__file__).resolve().parents[2] / "README.md"
PRIVATE_NOISE_SEED = 4_242_424_242


def _ints(obj: Any) -> set[int]:
    """Every integer anywhere in a JSON value (numbers, and digit strings inside text)."""
    if isinstance(obj, bool):
        return set()
    if isinstance(obj, int):
        return {obj}
    if isinstance(obj, float) and obj.is_integer():
        return {int(obj)}
    if isinstance(obj, str):
        return {int(t) for t in "".join(c if c.isdigit() else " " for c in obj).split()}
    if isinstance(obj, dict):
        return set().union(*(_ints(v) for v in obj.values()), *(_ints(k) for k in obj))
    if isinstance(obj, list):
        return set().union(*(_ints(v) for v in obj)) if obj else set()
    return set()


def _norm(u: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in u.values())))


def _release(card: dict[str, Any], weights: dict[str, torch.Tensor], train_seed: int) -> dict[str, np.ndarray]:
    """The released mean update ``final - init`` (the attacker is even given the initial weights)."""
    torch.manual_seed(stream_seed(train_seed, "init"))
    init = create_model(card["model"]["name"], **{**card["model"]["args"], "pretrained": False})
    return {n: (weights[n].float() - p.detach().float()).numpy() for n, p in init.named_parameters() if p.requires_grad}


#: How a client's noise seed follows from a run seed: the formula before the hardening, and the named stream.
CLIENT_DERIVATIONS = (lambda s, i: s * 1009 + 1 + i, lambda s, i: stream_seed(s, "client-noise", i))


def _denoise(delta: dict[str, np.ndarray], privacy: dict[str, Any], k: int, seed: int,
             derive: Any) -> dict[str, np.ndarray]:  # fmt: skip
    """Subtract the noise that ``seed`` would have drawn (the server's stream, or each client's)."""
    std = privacy["noise_multiplier"] * privacy["clip"]
    if privacy["dp"] == "central":
        noise = gaussian_noise_like(delta, std / (privacy["client_fraction"] * k), make_generator(seed)[0])
    else:
        parts = [gaussian_noise_like(delta, std, make_generator(derive(seed, i))[0]) for i in range(k)]
        noise = {n: sum(p[n] for p in parts) / k for n in delta}
    return {n: delta[n] - noise[n] for n in delta}


def seed_attack(card: dict[str, Any], delta: dict[str, np.ndarray], guesses: set[int]) -> dict[str, np.ndarray] | None:
    """Try every guessed seed; success is a residual within the clip norm (the noise norm is 100s of times C)."""
    k = len(card["roster"])
    derivations = CLIENT_DERIVATIONS if card["privacy"]["dp"] == "local" else CLIENT_DERIVATIONS[:1]
    for seed in sorted(g for g in guesses if 0 <= g < 2**63):
        for derive in derivations:
            rec = _denoise(delta, card["privacy"], k, seed, derive)
            if _norm(rec) <= card["privacy"]["clip"] * 1.01:
                return rec
    return None


@pytest.fixture(scope="module", params=["central", "local"])
def dp_runs(request: pytest.FixtureRequest, tiles64: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One round with ``--seed 3`` only, one with a private ``--noise-seed`` too, and one noise-free (sigma 0)."""
    base = {"data": (str(tiles64),), "clients": 2, "partition": "by-site", "rounds": 1, "local_steps": 2,
            "batch_size": 8, "seed": 3, "dp": request.param, "clip": 0.5, "eval_every": 5, **TINY}  # fmt: skip
    root = tmp_path_factory.mktemp(f"attack-{request.param}")
    return {
        "dp": request.param,
        "seed_only": run_federated(FedConfig(**base, sigma=0.05), runs_root=root / "a").run_dir,
        "noise_seed": run_federated(
            FedConfig(**base, sigma=0.05, noise_seed=PRIVATE_NOISE_SEED), runs_root=root / "b"
        ).run_dir,
        "clean": run_federated(
            FedConfig(**base, sigma=0.0, noise_seed=1, allow_no_noise=True), runs_root=root / "c"
        ).run_dir,
    }


def _final(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "final")
    return ckpt.card, ckpt.weights


def test_seed_attack_on_the_shareable_card_fails(dp_runs: dict[str, Any]) -> None:
    clean_card, clean_w = _final(dp_runs["clean"])
    truth = _release(clean_card, clean_w, 3)  # the noise-free mean of clipped updates
    for key in ("seed_only", "noise_seed"):
        card, weights = _final(dp_runs[key])
        text = (dp_runs[key] / "checkpoints" / "final.json").read_text()
        assert str(PRIVATE_NOISE_SEED) not in text
        guesses = _ints(card) | set(range(0, 300)) | {301, 3 * 1009 + 1}
        delta = _release(card, weights, 3)
        assert _norm(delta) > 10 * card["privacy"]["clip"]  # the released update is mostly noise
        assert seed_attack(card, delta, guesses) is None, f"{key}: noise regenerated from the public card"
    # positive control: with the private noise seed (from the owner-only resume state) the attack succeeds
    card, weights = _final(dp_runs["noise_seed"])
    last = json.loads((dp_runs["noise_seed"] / "checkpoints" / "last.json").read_text())
    secret = last["resume"]["noise_seed"]["seed"]
    assert secret == PRIVATE_NOISE_SEED
    rec = seed_attack(card, _release(card, weights, 3), {secret})
    assert rec is not None
    err = _norm({n: rec[n] - truth[n] for n in truth}) / _norm(truth)
    assert err < 1e-2, err


def test_private_files_are_owner_only_and_final_is_shareable(dp_runs: dict[str, Any]) -> None:
    run = dp_runs["seed_only"]
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    for name in ("checkpoints/last.json", "checkpoints/last.safetensors", "config.toml", "split.json", "metrics.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600, name
    for name in ("checkpoints/final.json", "checkpoints/final.safetensors"):
        assert stat.S_IMODE((run / name).stat().st_mode) == default_mode(), name
    split = json.loads((run / "split.json").read_text())
    assert split["clients"][0]["train_slides"]  # the slide ids live here, not in the card


def _server(cfg: FedConfig) -> ServerState:
    return ServerState(cfg, Path("unused"), "cpu", DEFAULT_CLASSES, {"size": 64}, [f"site{i}" for i in range(4)])


def _agreement(actual: list[list[int]], predicted: list[list[int]], k: int) -> float:
    hits = sum((i in a) == (i in p) for a, p in zip(actual, predicted, strict=True) for i in range(k))
    return hits / (k * len(actual))


def _predictions(card: dict[str, Any], rounds: int, k: int, q: float) -> list[list[list[int]]]:
    """Schedules an attacker derives from the card: the old numpy sampler and the seeded keyed sampler."""
    out = []
    for seed in _ints(card) | {301}:
        old = np.random.default_rng(np.random.SeedSequence([seed, 17]))
        out.append([[i for i in range(k) if old.random() < q] for _ in range(rounds)])
        keyed = ClientSampler.seeded(seed)
        out.append([keyed.sample(k, q) for _ in range(rounds)])
    return out


def test_sampling_schedule_cannot_be_predicted_from_the_card() -> None:
    cfg = FedConfig(clients=4, fraction=0.5, dp="central", sigma=1.0, seed=3, rounds=60, **TINY)
    srv = _server(cfg)
    actual = [sample_clients(srv) for _ in range(60)]
    card = srv.card(60).to_dict()
    assert card["privacy"]["amplification"] is True
    assert card["privacy"]["sample_rate"] == 0.5
    best = max(_agreement(actual, p, 4) for p in _predictions(card, 60, 4, 0.5))
    assert best < 0.75, best  # chance is 0.5; the old sampler gave 1.0
    assert "sampler" not in json.dumps(card)
    # the resume state holds the key: a restored sampler continues the same schedule
    again = ClientSampler.from_state(srv.resume_state()["sampler"])
    assert [again.sample(4, 0.5) for _ in range(5)] == [srv.sampler.sample(4, 0.5) for _ in range(5)]


def test_reproducible_schedule_claims_no_amplification() -> None:
    cfg = FedConfig(clients=4, fraction=0.5, dp="central", sigma=1.0, noise_seed=11, rounds=60, **TINY)
    srv = _server(cfg)
    actual = [sample_clients(srv) for _ in range(60)]
    keyed = ClientSampler.seeded(11)
    assert _agreement(actual, [keyed.sample(4, 0.5) for _ in range(60)], 4) == 1.0  # predictable by design
    card = srv.card(60).to_dict()
    assert card["privacy"]["amplification"] is False
    assert card["privacy"]["sample_rate"] == 1.0
    assert "11" not in json.dumps(card["fed_config"])


def _keys(card: dict[str, Any]) -> set[str]:
    """Top-level keys, and the keys of ``model``, ``privacy``, ``privacy.ledger`` and its entries."""
    out = set(card)
    out |= {f"model.{k}" for k in card["model"]}
    out |= {f"privacy.{k}" for k in card["privacy"]}
    out |= {f"privacy.ledger.{k}" for k in card["privacy"]["ledger"]}
    out |= {f"privacy.ledger.entries[].{k}" for e in card["privacy"]["ledger"]["entries"] for k in e}
    return out


def _documented() -> tuple[set[str], set[str]]:
    """The shareable card keys and the excluded settings, as the README's privacy section lists them."""
    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- shareable-card -->")[1].split("<!-- /shareable-card -->")[0]
    keys, excluded = set(), set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys.add(line.split("`")[1])
    for line in text.splitlines():
        if line.startswith("Left out of `fed_config`:"):
            excluded = {t for i, t in enumerate(line.split("`")) if i % 2 and t != "fed_config"}
    return keys, excluded


def test_final_card_holds_exactly_the_documented_keys(dp_runs: dict[str, Any]) -> None:
    card, _ = _final(dp_runs["seed_only"])
    keys, excluded = _documented()
    assert _keys(card) == keys - {"federation"}  # a simulated run; Flower runs add `federation`
    assert excluded == set(PRIVATE_CONFIG_KEYS)
    assert not set(card["fed_config"]) & excluded
    assert set(card["fed_config"]) == set(FedConfig().to_dict()) - excluded
    from safetensors import safe_open

    with safe_open(str(dp_runs["seed_only"] / "checkpoints" / "final.safetensors"), framework="np") as fh:
        assert fh.metadata() == {"format": "wsiseg-checkpoint"}
        names = set(fh.keys())
    model = create_model(card["model"]["name"], **{**card["model"]["args"], "pretrained": False})
    assert names == set(model.state_dict())  # the weights and nothing else
