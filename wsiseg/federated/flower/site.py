"""One site's side of a multi-site run: its data split and its persistent local-DP noise generator.

The split mirrors :func:`wsiseg.federated.clients.build_clients` with ``client_dirs``: a site with index
``i`` keeps held-out slides chosen with seed ``train_seed + i``, so the site trains on exactly the slides
the in-process simulation gives client ``i``.

The local-DP generator is persisted on disk (a fresh ClientApp process runs every round). The state
*before* each round's draw is kept, so a round that is sent again (a server resume, a retried round)
draws the same noise: the site never releases two different noisings of the same update.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from wsiseg.data.dataset import load_sources
from wsiseg.data.partition import split_slides
from wsiseg.errors import DataError
from wsiseg.federated.clients import Client
from wsiseg.privacy.noise import make_generator

__all__ = ["NoiseState", "load_site"]


def load_site(data: str | Path, *, name: str, index: int, test_fraction: float, seed: int) -> Client:
    """The site's training and held-out slides, split as the simulation splits client ``index``.

    Raises:
        DataError: Missing or empty tile dataset.
    """
    src = load_sources([data])
    if not src.records:
        msg = f"{data}: site {name} has no tiles; run `wsiseg tile` there first"
        raise DataError(msg)
    ids = src.slide_ids
    if len(ids) >= 2:
        train_ids, test_ids = split_slides(ids, test_fraction=test_fraction, seed=seed + index)
        return Client(name, src.subset(train_ids), src.subset(test_ids))
    return Client(name, src, None)


class NoiseState:
    """The site's local-DP generator for one server run, kept in ``<state_dir>/noise-<run_key>.json``.

    Private to the site: anyone holding these states can regenerate and subtract the noise.
    """

    def __init__(self, state_dir: Path, run_key: str, seed: int | None, index: int) -> None:
        self.path = Path(state_dir) / f"noise-{_safe(run_key)}.json"
        self.seed, self.index = seed, index
        self.data: dict[str, Any] = {"before": {}, "current": None}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def generator_for(self, round_index: int) -> np.random.Generator:
        """The generator as it was before round ``round_index`` (replayed if that round was seen)."""
        key = str(round_index)
        if key in self.data["before"]:
            state = self.data["before"][key]
        elif self.data["current"] is not None:
            state = self.data["current"]
        else:  # same stream as the simulation's client i
            rng, _ = make_generator(None if self.seed is None else self.seed * 1009 + 1 + self.index)
            state = rng.bit_generator.state
        self.data["before"][key] = state
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state
        return rng

    def save(self, rng: np.random.Generator, round_index: int) -> None:
        """Record the generator after round ``round_index``'s draw (atomic write, owner-only file)."""
        newest = max(int(k) for k in self.data["before"])
        if round_index >= newest:
            self.data["current"] = rng.bit_generator.state
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh, default=int)
        tmp.replace(self.path)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]
