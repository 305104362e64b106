"""Two small generated slides tiled at 32 px: what the audit's default uses, small enough for attacks on 2 CPUs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiles32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The audit's default generated tiles (two 1536 x 1024 slides, 256 px windows, 32 px tiles)."""
    from wsiseg.audit.inputs import generated_tiles

    return generated_tiles(tmp_path_factory.mktemp("audit"), 32, 0)
