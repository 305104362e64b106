"""The wsiseg ServerApp: runs :func:`wsiseg.federated.flower.server_loop.serve` inside Flower.

The run config holds one key, ``spec``: the path of the ``server-spec.json`` that ``wsiseg fed-server``
wrote into the run folder (the ServerApp runs on the SuperLink's machine).
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

__all__ = ["app"]

app = ServerApp()
_log = logging.getLogger("wsiseg.fed-server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Load the spec and serve all rounds."""
    from wsiseg.federated.flower.server_loop import ServerSpec, serve

    spec = ServerSpec.load(str(context.run_config["spec"]))

    def say(line: str) -> None:
        print(f"[wsiseg] {line}", flush=True)

    serve(grid, spec, log=say)
