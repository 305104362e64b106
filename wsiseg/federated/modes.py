"""The names of the DP modes, defined once (no heavy imports, so the CLI can list them in ``--help``).

Each name is implemented by one strategy class registered in :data:`wsiseg.federated.registry.STRATEGIES`
(a test checks the two agree); everything else asks the registry what a mode does.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["DEFAULT_DP_MODE", "DP_MODES", "PARTITIONS", "PRIVACY_UNITS", "DpMode"]

#: ``--dp``: no DP, central noise at the server (FedDP eq. 11), local noise at each site (FedDP Fig. 1),
#: noise shares at the sites summed under secure aggregation (distributed DP), DP-SGD at each site over tiles,
#: slides or patients (sample-level DP).
DpMode = Literal["none", "central", "distributed", "local", "sample"]
DP_MODES: tuple[str, ...] = get_args(DpMode)
#: The default ``--dp``.
DEFAULT_DP_MODE: DpMode = "central"
#: ``--partition``: how one pooled dataset is split into clients.
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "by-site")
#: ``--privacy-unit`` of ``--dp sample`` (defined with its reader in ``wsiseg.data.units``; a test checks they agree).
PRIVACY_UNITS: tuple[str, ...] = ("tile", "slide", "patient")
