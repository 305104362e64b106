"""Thread fan-out for the per-tensor maths of large updates (norms, sums, noise).

numpy releases the GIL inside ufunc loops and while a generator fills an array, so the tensors of a
DHUnet-size update (55 M coordinates) can be processed on several cores by plain threads. Results are
collected in the update's key order, so sums over tensors add up in the same order whatever the thread
count: the output never depends on the number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["PARALLEL_MIN_COORDS", "map_ordered", "noise_workers"]

T = TypeVar("T")
R = TypeVar("R")

PARALLEL_MIN_COORDS = 1 << 22
"""Below this many coordinates in all, work runs in the calling thread (threads cost more than they save)."""


def noise_workers() -> int:
    """Threads for large updates: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def map_ordered(fn: Callable[[T], R], items: Sequence[T], *, coords: int, workers: int | None = None) -> list[R]:
    """Return ``[fn(item) for item in items]``, on a thread pool when the work is large.

    Args:
        fn: Function of one item; must not depend on the other items' results.
        items: The work items, e.g. tensor names.
        coords: Total coordinates the items cover (decides whether threads pay off).
        workers: Thread count; ``None`` uses :func:`noise_workers`.

    Returns:
        The results in the order of ``items``.
    """
    n = min(len(items), noise_workers() if workers is None else max(1, workers))
    if n <= 1 or coords < PARALLEL_MIN_COORDS:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, items))
