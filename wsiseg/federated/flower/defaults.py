"""Defaults shared by ``wsiseg fed-server`` and the ServerApp's spec (light: no Flower or torch imports)."""

from __future__ import annotations

__all__ = ["DEFAULT_ROUND_TIMEOUT", "DEFAULT_WAIT_TIMEOUT"]

#: Seconds to wait for the sampled sites' updates each round (``fed-server --round-timeout``).
DEFAULT_ROUND_TIMEOUT = 1800.0
#: Seconds to wait for all sites to connect at start (``fed-server --wait-timeout``).
DEFAULT_WAIT_TIMEOUT = 600.0
