"""Named random streams: every seed wsiseg derives comes from :func:`stream_seed`, one function.

A run's seed is split into independent, named streams (model initialisation, a client's held-out split, its
augmentation, its data order, its torch state in a round, its noise...). Both training paths (the in-process
simulation and the Flower sites) ask for the same stream by the same name and keys, so "same seed, same
model" holds by construction rather than by copying a formula. The derivation is numpy's ``SeedSequence``
over the seed, a hash of the stream's name and the keys, so streams do not collide (``seed + i`` did:
client 1 of seed 3 and client 0 of seed 4 shared a split).

These seeds make runs reproducible; they are not secrets. DP noise is seeded from them only when the user
asks for ``--noise-seed`` (see :mod:`wsiseg.privacy.noise`).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["STREAMS", "stream_seed"]

#: The streams wsiseg uses, by name (a typo in a name is an error, not a silently new stream).
STREAMS = frozenset(
    {
        "init",
        "partition",
        "client-split",
        "augment",
        "data-order",
        "torch-round",
        "client-noise",
        "train-split",
        "dp-tiles",
    }
)


def stream_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit seed for stream ``stream`` of run seed ``seed`` at ``keys`` (round, client index, epoch...).

    Args:
        seed: The run's seed (non-negative).
        stream: One of :data:`STREAMS`.
        keys: Non-negative integers that select the member of the stream.

    Returns:
        A seed in ``[0, 2**63)``, the same for the same arguments on every machine.

    Raises:
        ValueError: An unknown stream or a negative seed or key.
    """
    if stream not in STREAMS:
        msg = f"unknown random stream {stream!r}; known: {', '.join(sorted(STREAMS))}"
        raise ValueError(msg)
    if seed < 0 or any(k < 0 for k in keys):
        msg = f"seeds and stream keys must be non-negative, got {seed} and {keys}"
        raise ValueError(msg)
    name = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "big")
    state = np.random.SeedSequence([int(seed), name, *map(int, keys)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)
