"""Multi-site federated training over Flower 1.42 (real SuperLink / SuperNode processes).

The ServerApp (:mod:`.server_app`) runs the same sampling, strategy, DP and accountant code as the
in-process simulation; the ClientApp (:mod:`.client_app`) trains a site's own tiles with the shared loop.
:mod:`.launch` starts the Flower processes, :mod:`.certificates` makes a trial CA, server certificate and
per-site node keys. Flower is imported only by these modules.
"""

from __future__ import annotations

__all__: list[str] = []
