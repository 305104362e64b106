from __future__ import annotations

import math
import threading
import time

import numpy as np

from wsiseg.federated.aggregate import fedavg
from wsiseg.privacy.clipping import global_l2_norm
from wsiseg.privacy.parallel import PARALLEL_MIN_COORDS, map_ordered


def test_map_ordered_keeps_order_and_uses_threads_only_for_large_work():
    threads: set[int] = set()

    def work(i: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.02)
        return i * i

    items = list(range(12))
    assert map_ordered(work, items, coords=PARALLEL_MIN_COORDS, workers=4) == [i * i for i in items]
    assert len(threads) > 1
    threads.clear()
    assert map_ordered(work, items, coords=PARALLEL_MIN_COORDS - 1, workers=4) == [i * i for i in items]
    assert threads == {threading.get_ident()}


def test_large_update_norm_and_mean_match_the_sequential_maths():
    rng = np.random.default_rng(3)
    shapes = [(1000, 1500), (2_000_000,), (37,), (300, 3000)]  # > PARALLEL_MIN_COORDS in all
    ups = [{f"t{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)} for _ in range(3)]
    assert sum(math.prod(s) for s in shapes) >= PARALLEL_MIN_COORDS
    u = ups[0]
    expected = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in u.values()))
    assert math.isclose(global_l2_norm(u), expected, rel_tol=1e-12)
    weights = [1.0, 2.0, 5.0]
    mean = fedavg(ups, weights)
    assert list(mean) == list(u)
    for name in u:
        ref = sum(w * x[name].astype(np.float64) for w, x in zip(weights, ups, strict=True)) / 8.0
        assert mean[name].dtype == np.float32
        np.testing.assert_allclose(mean[name], ref, rtol=1e-6, atol=1e-7)
