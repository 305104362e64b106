"""One site's side of a multi-site run: its data split, its own noise generator and its record of releases.

The split mirrors :func:`wsiseg.federated.clients.build_clients` with ``client_dirs``: a site with index
``i`` keeps the held-out slides of :func:`~wsiseg.federated.clients.client_split_seed`, so the site trains
on exactly the slides the in-process simulation gives client ``i``.

A site owns its privacy; nothing the server sends decides it:

- :class:`NoiseState`: the local-DP generator comes from the site's own OS entropy (or the site operator's
  ``--noise-seed``, for reproductions), is persisted in the site's private state folder (a fresh ClientApp
  process runs every round) and only ever moves forward.
- :class:`ReleaseLog`: the digest of every request the site answered, and the exact bytes of its latest
  release. A request for a round already answered gets those same bytes back when it is identical, and is
  refused otherwise: a server that resends a round with other weights or settings (``lr=0``, say) would
  otherwise get two noisings whose difference is the clipped update.
- :class:`SitePolicy`: the site's floor on sigma and ceiling on C, checked before any training.
- :class:`SiteLedger` (``--dp sample``): every DP-SGD step the site ever released, over all server runs,
  accounted by the site itself and checked against its ``--max-epsilon`` before any training.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from wsiseg.data.dataset import load_sources
from wsiseg.data.partition import explicit_split, split_slides
from wsiseg.errors import DataError, PrivacyError
from wsiseg.federated.clients import Client, client_split_seed
from wsiseg.federated.registry import strategy_class
from wsiseg.federated.strategies import FedAvg
from wsiseg.fileio import atomic_output, atomic_write_text, private_dir
from wsiseg.privacy.ledger import PrivacyLedger
from wsiseg.privacy.noise import make_generator

__all__ = ["NoiseState", "ReleaseLog", "SiteLedger", "SitePolicy", "load_site", "request_digest"]


def load_site(data: str | Path, *, name: str, index: int, test_fraction: float, seed: int,
              heldout: tuple[str, ...] = ()) -> Client:  # fmt: skip
    """The site's training and held-out slides, split as the simulation splits client ``index``.

    With ``heldout`` (the site's own ``fed-client --heldout`` list, which never leaves it) exactly those slides
    are held out instead.

    Raises:
        DataError: Missing or empty tile dataset.
        ConfigError: A held-out slide the site does not have, or every slide held out.
    """
    src = load_sources([data])
    if not src.records:
        msg = f"{data}: site {name} has no tiles; run `wsiseg tile` there first"
        raise DataError(msg)
    ids = src.slide_ids
    if heldout:
        train_ids, test_ids = explicit_split(ids, heldout)
        return Client(name, src.subset(train_ids), src.subset(test_ids))
    if len(ids) >= 2:
        train_ids, test_ids = split_slides(ids, test_fraction=test_fraction, seed=client_split_seed(seed, index))
        return Client(name, src.subset(train_ids), src.subset(test_ids))
    return Client(name, src, None)


@dataclass(frozen=True)
class SitePolicy:
    """What a site accepts under DP, whatever the server asks (``wsiseg fed-client`` options).

    Attributes:
        require_dp: Weakest DP mode accepted: ``none``, ``central`` or ``local``.
        min_sigma: Lowest noise multiplier accepted for a DP round (always > 0 under DP).
        max_clip: Highest clip norm accepted (``None``: any).
    """

    require_dp: str = FedAvg.mode
    min_sigma: float = 0.5
    max_clip: float | None = None

    @classmethod
    def from_node_config(cls, node: dict[str, Any]) -> SitePolicy:
        """Read the policy from the SuperNode's node config (strings, as ``fed-client`` writes them)."""
        max_clip = str(node.get("max-clip", "")).strip()
        return cls(require_dp=str(node.get("require-dp", FedAvg.mode)), min_sigma=float(node.get("min-sigma", 0.5)),
                   max_clip=float(max_clip) if max_clip else None)  # fmt: skip

    def check(self, site: str, dp: str, sigma: float, clip: float) -> None:
        """Refuse a round that asks for less protection than the site's policy allows.

        Raises:
            PrivacyError: A weaker mode, a sigma below the floor (or zero) or a clip above the ceiling.
        """
        asked = strategy_class(dp)
        if asked.protection < strategy_class(self.require_dp).protection:
            msg = f"site {site} requires --dp {self.require_dp} but the server asked for --dp {dp}; refusing"
            raise PrivacyError(msg)
        if not asked.private:
            return
        if not (math.isfinite(sigma) and sigma > 0 and sigma >= self.min_sigma):
            msg = (f"site {site}: the server asked for sigma {sigma:g}, below this site's --min-sigma "
                   f"{self.min_sigma:g}; refusing (lower --min-sigma at the site to accept it)")  # fmt: skip
            raise PrivacyError(msg)
        if self.max_clip is not None and not clip <= self.max_clip:
            msg = f"site {site}: the server asked for clip {clip:g}, above this site's --max-clip {self.max_clip:g}"
            raise PrivacyError(msg)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


class NoiseState:
    """The site's local-DP generator for one server run, kept in ``<state_dir>/noise-<run_key>.json``.

    Seeded from the site's own OS entropy unless the site operator gave a seed. Private to the site: anyone
    holding this state can regenerate and subtract the noise. The file is owner-only.
    """

    def __init__(self, state_dir: Path, run_key: str, seed: int | None) -> None:
        self.path = Path(state_dir) / f"noise-{_safe(run_key)}.json"
        self.seed = seed
        self.state: dict[str, Any] | None = None
        if self.path.is_file():
            self.state = json.loads(self.path.read_text(encoding="utf-8"))["current"]

    def generator(self) -> np.random.Generator:
        """The generator where the last release left it (a fresh one on the site's first round)."""
        if self.state is None:
            return make_generator(self.seed)[0]
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = self.state
        return rng

    def save(self, rng: np.random.Generator) -> None:
        """Record the generator after a draw (atomic, owner-only)."""
        self.state = dict(rng.bit_generator.state)
        private_dir(self.path.parent)
        atomic_write_text(self.path, json.dumps({"current": self.state}, default=int), private=True)


def request_digest(arrays: dict[str, np.ndarray], config: dict[str, Any]) -> str:
    """SHA-256 of a train request: every global tensor (name, dtype, shape, bytes) and the whole config."""
    h = hashlib.sha256()
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()


class ReleaseLog:
    """Which requests a site answered in one server run, and the exact tensors of its latest release.

    ``<state_dir>/releases-<run_key>.json`` maps round numbers to request digests;
    ``<state_dir>/release-<run_key>.safetensors`` holds the latest released update and its reply metadata.
    """

    def __init__(self, state_dir: Path, run_key: str) -> None:
        self.dir = Path(state_dir)
        self.index_path = self.dir / f"releases-{_safe(run_key)}.json"
        self.tensor_path = self.dir / f"release-{_safe(run_key)}.safetensors"
        self.answered: dict[str, str] = {}
        if self.index_path.is_file():
            self.answered = json.loads(self.index_path.read_text(encoding="utf-8"))["answered"]

    def replay(self, site: str, round_index: int, digest: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The stored release for an identical resent request, ``None`` for a new round.

        Raises:
            PrivacyError: The round was answered for a different request, or is older than the latest release.
        """
        seen = self.answered.get(str(round_index))
        if seen is None:
            return None
        if seen != digest:
            msg = (
                f"site {site}: round {round_index} was already answered for a different request (other "
                "weights or settings); refusing: two releases of one round would reveal the clipped update"
            )
            raise PrivacyError(msg)
        meta: dict[str, Any] = {}
        tensors: dict[str, np.ndarray] = {}
        if self.tensor_path.is_file():
            with safe_open(str(self.tensor_path), framework="np") as fh:
                meta = json.loads((fh.metadata() or {}).get("wsiseg", "{}"))
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        if meta.get("round") != round_index or meta.get("digest") != digest:
            msg = (f"site {site}: round {round_index} was answered before, but only the latest release is kept; "
                   "refusing to release it again")  # fmt: skip
            raise PrivacyError(msg)
        return {k: tensors[k] for k in meta["names"]}, meta["reply"]

    def record(self, round_index: int, digest: str, update: dict[str, np.ndarray], reply: dict[str, Any]) -> None:
        """Keep the exact tensors released for ``round_index`` and its request digest (owner-only files)."""
        private_dir(self.dir)
        meta = json.dumps({"round": round_index, "digest": digest, "reply": reply, "names": list(update)})
        with atomic_output(self.tensor_path, private=True) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in update.items()}, str(tmp), metadata={"wsiseg": meta})
        self.answered[str(round_index)] = digest
        atomic_write_text(self.index_path, json.dumps({"answered": self.answered}), private=True)


class SiteLedger:
    """The site's own account of its DP-SGD releases (``<state_dir>/privacy-ledger.json``, owner-only).

    One ledger for the site's data across every server run: entries are numbered by release, and each release
    records which run and round it answered. It is never reset; delete the state folder only with the data.

    Args:
        state_dir: The site's private state folder.
        delta: Delta of the site's guarantee.
        max_epsilon: The site's budget (``fed-client --max-epsilon``; None: no budget).
    """

    def __init__(self, state_dir: Path, *, delta: float, max_epsilon: float | None) -> None:
        self.path = Path(state_dir) / "privacy-ledger.json"
        self.max_epsilon = max_epsilon
        self.ledger = PrivacyLedger(delta=delta)
        self.releases: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                self.ledger.load_state_dict(saved["ledger"])
                self.releases = list(saved["releases"])
            except (KeyError, TypeError, ValueError) as err:
                msg = f"{self.path}: the site's privacy ledger is unreadable ({err}); restore it from a backup"
                raise PrivacyError(msg) from err

    @property
    def epsilon(self) -> float:
        """Epsilon of everything the site released so far (0 before its first release)."""
        return self.ledger.entries[-1].epsilon_pld if self.ledger.entries else 0.0

    def check_budget(self, site: str, *, sigma: float = 0.0, q: float = 1.0, steps: int = 0) -> None:
        """Refuse when the budget is spent, or would be by ``steps`` more steps at ``(sigma, q)``.

        Raises:
            PrivacyError: Epsilon already above ``--max-epsilon``, or the planned round would pass it.
        """
        if self.max_epsilon is None:
            return
        if self.epsilon > self.max_epsilon:
            msg = (f"site {site}: epsilon {self.epsilon:.4g} already exceeds --max-epsilon {self.max_epsilon:g} "
                   f"({self.path}); this site's budget is spent")  # fmt: skip
            raise PrivacyError(msg)
        if steps and (proj := self.ledger.projected_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps)) > (
            self.max_epsilon * (1 + 1e-9)
        ):
            msg = (f"site {site}: this round would take epsilon to {proj:.4g}, above --max-epsilon "
                   f"{self.max_epsilon:g}; refusing")  # fmt: skip
            raise PrivacyError(msg)

    def record(self, run_key: str, round_index: int, *, sigma: float, q: float, clip: float, steps: int) -> float:
        """Record one round's DP-SGD steps (before the release leaves); returns the site's epsilon after it."""
        entry = self.ledger.record_round(round=len(self.ledger.entries) + 1, noise_multiplier=sigma, sample_rate=q,
                                         clip=clip, n_clients_released=1, steps=steps)  # fmt: skip
        self.releases.append({"run": run_key, "round": round_index})
        private_dir(self.path.parent)
        atomic_write_text(self.path, json.dumps({"ledger": self.ledger.state_dict(), "releases": self.releases}),
                          private=True)  # fmt: skip
        return entry.epsilon_pld
