"""Block reduction for mask pyramids: the majority label (labels) or the mean (probabilities) of each block.

Level ``k`` of a mask pyramid has one pixel per ``2**k`` x ``2**k`` block of level 0. Keeping every
``2**k``-th pixel (nearest decimation) lets a thin structure vanish or grow depending on where the grid falls;
the block majority keeps what covers most of the block, never invents a label that was not predicted, and
breaks ties towards the lower class id. Probability maps take the block mean instead.

Blocks are counted over the real pixels only: the last block of a row or column may be partial.
:class:`BlockPyramid` streams every level at once from additive channels (per-label vote counts, or value sums
and pixel counts) summed 2 x 2 from the level below, so every level is the reduction of its full level-0 block;
it costs about one pass over level 0 per channel. :func:`reduce_rows` is the direct definition.
"""

from __future__ import annotations

import numpy as np

__all__ = ["REDUCTIONS", "BlockPyramid", "reduce_rows"]

REDUCTIONS = ("majority", "mean")


def reduce_rows(rows: np.ndarray, step: int, how: str) -> np.ndarray:
    """Reduce ``step`` x ``step`` blocks of ``rows`` to one pixel each.

    Args:
        rows: ``(n, W)`` uint8 rows starting at a multiple of ``step``; every group of ``step`` rows gives one
            output row, and a last shorter group gives one more (the bottom edge of the mask).
        step: Block side (``2**level``).
        how: ``"majority"`` (most frequent value; ties go to the lower value) or ``"mean"`` (rounded).

    Returns:
        ``(ceil(n / step), ceil(W / step))`` uint8.

    Raises:
        ValueError: On an unknown ``how`` or a step below 1.
    """
    if how not in REDUCTIONS or step < 1:
        msg = f"reduction must be one of {REDUCTIONS} with step >= 1, got {how!r}, {step}"
        raise ValueError(msg)
    n, w = rows.shape
    g, wb = -(-n // step), -(-w // step)
    padded = np.zeros((g * step, wb * step), dtype=np.uint8)
    padded[:n, :w] = rows
    blocks = padded.reshape(g, step, wb, step)
    # real pixels per block: full blocks have step**2, the last row/column of blocks fewer
    rows_in = np.full(g, step, dtype=np.int64)
    rows_in[-1] = n - (g - 1) * step
    cols_in = np.full(wb, step, dtype=np.int64)
    cols_in[-1] = w - (wb - 1) * step
    real = rows_in[:, None] * cols_in[None, :]
    if how == "mean":
        sums = blocks.sum(axis=(1, 3), dtype=np.int64)  # padding is zero, so it adds nothing
        return np.floor(sums / real + 0.5).astype(np.uint8)
    values = np.unique(rows)
    counts = np.stack([(blocks == v).sum(axis=(1, 3), dtype=np.int64) for v in values])
    if values[0] == 0:
        counts[0] -= step * step - real  # the zero padding is not a vote for label 0
    return values[np.argmax(counts, axis=0)].astype(np.uint8)


def _sum2x2(counts: np.ndarray) -> np.ndarray:
    """``(V, n, W)`` vote counts -> ``(V, ceil(n/2), ceil(W/2))``; a missing odd row or column adds nothing."""
    v, n, w = counts.shape
    if n % 2 or w % 2:
        padded = np.zeros((v, n + n % 2, w + w % 2), dtype=counts.dtype)
        padded[:, :n, :w] = counts
        counts = padded
    return counts[:, 0::2, 0::2] + counts[:, 0::2, 1::2] + counts[:, 1::2, 0::2] + counts[:, 1::2, 1::2]


class BlockPyramid:
    """Streaming block reductions for levels ``1..n_levels`` of a mask (equal to :func:`reduce_rows` per level).

    Each level is kept as additive channels summed 2 x 2 from the level below: one vote count per label value
    for ``"majority"``, a value sum and a pixel count for ``"mean"``. Counts and sums add up exactly, so level
    ``k`` is the reduction of its whole ``2**k`` block of level 0, partial edge blocks included.

    Args:
        width: Row width of level 0.
        n_levels: Number of reduced levels (level ``k`` has blocks of ``2**k``).
        how: ``"majority"`` (labels) or ``"mean"`` (probabilities).
    """

    def __init__(self, width: int, n_levels: int, how: str = "majority") -> None:
        if how not in REDUCTIONS:
            msg = f"reduction must be one of {REDUCTIONS}, got {how!r}"
            raise ValueError(msg)
        self.n_levels, self.how = n_levels, how
        self._channels = 1 if how == "majority" else 2  # majority: label values 0..channels-1 (grows)
        self._labels = np.zeros((0, width), dtype=np.uint8)  # level-0 rows waiting for their pair
        self._pending: list[np.ndarray] = [  # per level k >= 1: channel rows waiting for their pair
            np.zeros((self._channels, 0, -(-width // 2**k)), dtype=np.uint32) for k in range(1, n_levels + 1)
        ]

    def _grow(self, channels: int) -> None:
        for k, c in enumerate(self._pending):
            extra = np.zeros((channels - c.shape[0], *c.shape[1:]), dtype=c.dtype)
            self._pending[k] = np.concatenate([c, extra])
        self._channels = channels

    def _channels_of(self, rows: np.ndarray) -> np.ndarray:
        if self.how == "mean":
            return np.stack([rows, np.ones_like(rows)]).astype(np.uint32)
        return np.stack([rows == v for v in range(self._channels)]).astype(np.uint32)

    def _finish(self, channels: np.ndarray) -> np.ndarray:
        if self.how == "mean":
            return np.floor(channels[0] / channels[1] + 0.5).astype(np.uint8)
        return np.argmax(channels, axis=0).astype(np.uint8)  # ties: the first, i.e. lower, label

    def push(self, rows: np.ndarray, *, last: bool) -> list[np.ndarray]:
        """Add level-0 rows; return the finished rows of each level ``1..n_levels`` (all of them when ``last``)."""
        if self.n_levels == 0:
            return []
        if self.how == "majority" and rows.size and int(rows.max()) >= self._channels:
            self._grow(int(rows.max()) + 1)
        buf = np.concatenate([self._labels, rows]) if len(self._labels) else rows
        take = len(buf) if last else len(buf) // 2 * 2
        self._labels = buf[take:].copy()
        current = _sum2x2(self._channels_of(buf[:take]))
        out: list[np.ndarray] = []
        for k in range(self.n_levels):  # current: finished channel rows of level k + 1
            out.append(self._finish(current))
            if k + 1 == self.n_levels:
                break
            pending = self._pending[k]
            both = np.concatenate([pending, current], axis=1) if pending.shape[1] else current
            take = both.shape[1] if last else both.shape[1] // 2 * 2
            self._pending[k] = both[:, take:].copy()
            current = _sum2x2(both[:, :take])
        return out
