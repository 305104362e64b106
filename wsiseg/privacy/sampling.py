"""Poisson client sampling from a keyed cryptographic generator (HMAC-SHA256 in counter mode).

Privacy amplification by sampling holds only while nobody outside the server can predict who takes part in
a round. :class:`ClientSampler` draws its decisions from ``HMAC-SHA256(key, counter)``, a pseudorandom
function in counter mode, so the schedule cannot be predicted without the 256-bit key. The key comes from
``os.urandom`` (:meth:`ClientSampler.secret`) and lives only in the server's private resume state, or is
derived from a user-given seed (:meth:`ClientSampler.seeded`) for reproductions; a seeded schedule is
predictable to anyone who learns or guesses the seed, so runs that use one claim no amplification
(:attr:`ClientSampler.amplifies` is False and the accountant uses sample rate 1).

Only the Python standard library is used (``hmac``, ``hashlib``, ``os``); the state is the key and a
counter, so ``--resume`` continues the same schedule.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from wsiseg.errors import PrivacyError

__all__ = ["ClientSampler"]

_STATE_KIND = "hmac-sha256-ctr"


class ClientSampler:
    """Each client independently takes part with probability ``q`` (Poisson sampling), from a keyed PRF.

    Args:
        key: 32-byte secret key.
        amplifies: Whether the key is secret entropy (amplification may be claimed) or derived from a seed.
        counter: Number of 64-bit draws already made.
    """

    def __init__(self, key: bytes, *, amplifies: bool, counter: int = 0) -> None:
        if len(key) != 32:
            msg = f"client-sampling key must be 32 bytes, got {len(key)}"
            raise PrivacyError(msg)
        self._key, self.amplifies, self.counter = key, amplifies, int(counter)

    @classmethod
    def secret(cls) -> ClientSampler:
        """A sampler keyed from OS entropy: its schedule is unpredictable without the private state."""
        return cls(os.urandom(32), amplifies=True)

    @classmethod
    def seeded(cls, seed: int) -> ClientSampler:
        """A reproducible sampler derived from ``seed``: predictable to whoever knows the seed, so no amplification."""
        return cls(hashlib.sha256(f"wsiseg-client-sampling:{int(seed)}".encode()).digest(), amplifies=False)

    def random(self) -> float:
        """One uniform draw in [0, 1) with 53 bits of precision."""
        block = hmac.new(self._key, self.counter.to_bytes(16, "big"), hashlib.sha256).digest()
        self.counter += 1
        return (int.from_bytes(block[:8], "big") >> 11) / float(1 << 53)

    def sample(self, n_clients: int, rate: float) -> list[int]:
        """Indices of the clients that take part this round: each with probability ``rate``, all when ``rate >= 1``."""
        if rate >= 1.0:
            return list(range(n_clients))
        return [i for i in range(n_clients) if self.random() < rate]

    def state_dict(self) -> dict[str, Any]:
        """Private, JSON-ready state (the key itself): keep it with the server's resume state only."""
        return {"kind": _STATE_KIND, "key": self._key.hex(), "counter": self.counter, "amplifies": self.amplifies}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClientSampler:
        """Rebuild a sampler from :meth:`state_dict`.

        Raises:
            PrivacyError: A state of another kind (for example from an older wsiseg).
        """
        if not isinstance(state, dict) or state.get("kind") != _STATE_KIND:
            msg = "client-sampling state is not an hmac-sha256-ctr state; resume it with the wsiseg that wrote it"
            raise PrivacyError(msg)
        return cls(bytes.fromhex(state["key"]), amplifies=bool(state["amplifies"]), counter=int(state["counter"]))
