"""Named random streams: distinct, stable, and refusing unknown names."""

from __future__ import annotations

import pytest

from wsiseg.seeds import STREAMS, stream_seed


def test_streams_are_distinct_and_stable() -> None:
    seeds = {(s, k): stream_seed(3, s, k) for s in STREAMS for k in range(4)}
    assert len(set(seeds.values())) == len(seeds)  # no two streams or keys share a seed
    assert stream_seed(3, "client-split", 1) != stream_seed(4, "client-split", 0)  # `seed + i` collided here
    assert stream_seed(3, "init") == stream_seed(3, "init")
    assert all(0 <= v < 2**63 for v in seeds.values())
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(3, "inti")
    with pytest.raises(ValueError, match="non-negative"):
        stream_seed(-1, "init")
