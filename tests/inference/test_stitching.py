"""Tests for the streaming band stitcher on analytic probability fields."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterable

import numpy as np
import pytest

from wsiseg.errors import ConfigError, DataError
from wsiseg.inference.stitching import (
    EMIT_ROWS,
    BandStitcher,
    band_memory_bytes,
    finalize_rows,
    ring_segments,
    stitch_geometry,
)
from wsiseg.inference.weights import gaussian_weights


class Collector:
    """Sink that records every call and assembles the full mask."""

    def __init__(self, width: int, height: int, num_classes: int, dtype: type = np.uint8) -> None:
        self.labels = np.full((height, width), 77, dtype=np.uint8)
        self.probs = np.zeros((height, width, num_classes), dtype=dtype)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, row: int, labels: np.ndarray, probs: np.ndarray | None) -> None:
        self.calls.append((row, labels.shape[0]))
        assert labels.dtype == np.uint8
        self.labels[row : row + labels.shape[0]] = labels
        if probs is not None:
            self.probs[row : row + labels.shape[0]] = probs


def grid(extent: int, window: int, stride: int) -> list[int]:
    """Window origins covering ``[0, extent)``; the last window may stick out."""
    return list(range(0, max(extent - window, 0) + stride, stride))


def run(
    field: np.ndarray,
    window: int,
    stride: int,
    *,
    keep: Callable[[int, int], bool] = lambda x, y: True,
    positions: Iterable[tuple[int, int]] | None = None,
    **kwargs: object,
) -> tuple[BandStitcher, Collector]:
    """Feed windows cropped from a ``(C, H, W)`` field (padded with its edge values)."""
    c, h, w = field.shape
    dtype = kwargs.get("prob_dtype", np.uint8)
    sink = Collector(w, h, c, dtype)  # type: ignore[arg-type]
    st = BandStitcher(w, h, window, stride, c, sink, **kwargs)  # type: ignore[arg-type]
    padded = np.pad(field, ((0, 0), (0, window), (0, window)), mode="edge")
    if positions is None:
        positions = [(x, y) for y in grid(h, window, stride) for x in grid(w, window, stride)]
    for x, y in positions:
        if keep(x, y):
            st.add(x, y, padded[:, y : y + window, x : x + window].astype(np.float32))
    st.finish()
    return st, sink


def test_geometry_of_paper_defaults() -> None:
    g = stitch_geometry(100_000, 80_001, 1000, 500, 224)
    assert g.scale == pytest.approx(0.224)
    assert (g.width, g.height, g.window, g.stride) == (22400, 17921, 224, 112)
    assert [g.to_output(k * 500) for k in range(4)] == [0, 112, 224, 336]
    g2 = stitch_geometry(10_000, 10_000, 1000, 400, 224)  # 400 * 0.224 = 89.6 -> 90
    assert g2.stride == 90
    assert g2.to_output(400) == 90
    assert g2.to_output(800) == 179
    with pytest.raises(ConfigError):
        stitch_geometry(0, 10, 1000, 500, 224)


def test_ring_segments() -> None:
    assert ring_segments(3, 4, 10) == [(3, 0, 4)]
    assert ring_segments(8, 5, 10) == [(8, 0, 2), (0, 2, 3)]
    assert ring_segments(20, 10, 10) == [(0, 0, 10)]
    assert ring_segments(5, 0, 10) == []


def test_constant_model_gives_constant_labels() -> None:
    p = np.array([0.12, 0.6, 0.28], dtype=np.float32)
    field = np.broadcast_to(p[:, None, None], (3, 90, 100)).copy()
    _, sink = run(field, 32, 16, emit_probs=True)
    assert np.all(sink.labels == 1)
    np.testing.assert_array_equal(sink.probs, np.broadcast_to([31, 153, 71], (90, 100, 3)))


@pytest.mark.parametrize("offset", [0, 1])
def test_one_hot_layout_is_reproduced_exactly(offset: int) -> None:
    h, w, c = 150, 130, 4
    ii, jj = np.mgrid[0:h, 0:w]
    layout = ((ii // 13) + 2 * (jj // 7)) % c
    field = (np.arange(c)[:, None, None] == layout[None]).astype(np.float32)
    _, sink = run(field, 40, 20, label_offset=offset)
    np.testing.assert_array_equal(sink.labels, layout + offset)


def test_blending_follows_gaussian_weighted_mean() -> None:
    win, stride = 16, 8
    pa = np.array([0.8, 0.2], dtype=np.float32)
    pb = np.array([0.3, 0.7], dtype=np.float32)
    sink = Collector(24, 16, 2, np.float32)
    st = BandStitcher(24, 16, win, stride, 2, sink, emit_probs=True, prob_dtype=np.float32)
    st.add(0, 0, np.broadcast_to(pa[:, None, None], (2, win, win)).copy())
    st.add(stride, 0, np.broadcast_to(pb[:, None, None], (2, win, win)).copy())
    st.finish()
    g = gaussian_weights(win)
    for r, col in [(0, 0), (7, 3), (7, 8), (7, 10), (3, 12), (15, 15), (8, 20)]:
        wa = g[r, col] if col < win else 0.0
        wb = g[r, col - stride] if col >= stride else 0.0
        expected = (wa * pa + wb * pb) / (wa + wb)
        np.testing.assert_allclose(sink.probs[r, col], expected, atol=1e-6)
        assert sink.labels[r, col] == int(np.argmax(expected))
    # in the overlap the left window dominates left of the centre line, the right one right of it
    assert sink.labels[7, 9] == 0
    assert sink.labels[7, 14] == 1
    # mirror symmetry about the midline (x = 11.5): swapped weights, so the two means sum to pa + pb
    assert sink.probs[7, 11, 0] + sink.probs[7, 12, 0] == pytest.approx(1.1, abs=1e-6)


def test_smooth_field_has_no_seams() -> None:
    h, w = 120, 170
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (ii + 2 * jj) / (h + 2 * w)
    field = np.stack([ramp, 1 - ramp, np.full_like(ramp, 0.25)])
    _, sink = run(field, 32, 16, emit_probs=True, prob_dtype=np.float32)
    err = np.abs(sink.probs - field.transpose(1, 2, 0)).max()
    assert err < 1e-5
    np.testing.assert_array_equal(sink.labels, np.argmax(field, axis=0))


def test_matches_dense_reference_with_random_windows() -> None:
    rng = np.random.default_rng(7)
    h, w, c, win = 97, 83, 3, 24
    ys = sorted(int(v) for v in rng.integers(-5, h - 4, size=12))
    positions = [(int(x), y) for y in ys for x in rng.integers(-10, w - 2, size=3)]
    windows = [rng.random((c, win, win), dtype=np.float32) for _ in positions]
    sink = Collector(w, h, c)
    st = BandStitcher(w, h, win, 12, c, sink, emit_probs=True, unanalysed_value=9)
    acc = np.zeros((c, h + 2 * win, w + 2 * win), np.float64)
    wsum = np.zeros((h + 2 * win, w + 2 * win), np.float64)
    g = gaussian_weights(win).astype(np.float64)
    for (x, y), p in zip(positions, windows, strict=True):
        st.add(x, y, p)
        acc[:, y + win : y + 2 * win, x + win : x + 2 * win] += p * g
        wsum[y + win : y + 2 * win, x + win : x + 2 * win] += g
    st.finish()
    acc, wsum = acc[:, win : win + h, win : win + w], wsum[win : win + h, win : win + w]
    covered = wsum > 0
    ref = np.where(covered, np.argmax(acc, axis=0), 9)
    np.testing.assert_array_equal(sink.labels, ref)
    mean = np.divide(acc, wsum, out=np.zeros_like(acc), where=covered).transpose(1, 2, 0)
    assert np.abs(sink.probs.astype(float) - mean * 255).max() <= 0.5 + 1e-3
    assert not covered.all()  # the test does exercise uncovered pixels


def test_skipped_windows_leave_unanalysed_value() -> None:
    h, w = 96, 96
    field = np.zeros((2, h, w), np.float32)
    field[1] = 1.0
    skip = {(32, 32), (32, 48), (48, 32), (48, 48)}
    _, sink = run(field, 32, 16, keep=lambda x, y: (x, y) not in skip, unanalysed_value=255, emit_probs=True)
    hole = np.zeros((h, w), bool)
    hole[48:64, 48:64] = True
    assert np.all(sink.labels[hole] == 255)
    assert np.all(sink.probs[hole] == 0)
    assert np.all(sink.labels[~hole] == 1)


def test_rows_emitted_in_order_exactly_once() -> None:
    h, w = 400, 50
    field = np.ones((2, h, w), np.float32) * np.array([0.2, 0.8], np.float32)[:, None, None]
    # first windows start at y=40, a gap of 5 grid rows (> window) in the middle, last at the end
    keep = lambda x, y: y >= 40 and not 140 <= y < 240  # noqa: E731
    st, sink = run(field, 32, 20, keep=keep, unanalysed_value=3)
    assert sink.calls[0][0] == 0
    for (r0, n0), (r1, _) in zip(sink.calls, sink.calls[1:], strict=False):
        assert r1 == r0 + n0  # contiguous, ascending, no repeats
    assert sum(n for _, n in sink.calls) == h
    assert all(0 < n <= EMIT_ROWS for _, n in sink.calls)
    assert st.rows_emitted == h
    assert np.all(sink.labels[:40] == 3)
    assert np.all(sink.labels[40:152] == 1)
    assert np.all(sink.labels[152:240] == 3)
    assert np.all(sink.labels[240:] == 1)


def test_rows_are_emitted_as_soon_as_final() -> None:
    sink = Collector(40, 200, 2)
    st = BandStitcher(40, 200, 32, 16, 2, sink)
    p = np.full((2, 32, 32), 0.5, np.float32)
    st.add(0, 0, p)
    st.add(8, 0, p)
    assert sink.calls == []
    st.add(0, 16, p)
    assert sum(n for _, n in sink.calls) == 16  # rows 0..15 can no longer change
    st.add(0, 100, p)
    assert sum(n for _, n in sink.calls) == 100


def test_band_memory_is_bounded_by_width_not_height() -> None:
    h, w, c, win = 20_000, 64, 3, 32
    rows_seen = []
    st = BandStitcher(w, h, win, 16, c, lambda r, lab, p: rows_seen.append(lab.shape[0]))
    assert st.band_shape == (c + 1, win, w)
    assert st.band_nbytes == band_memory_bytes(w, win, c) == win * w * (c + 1) * 4
    p = np.full((c, win, win), 1 / 3, np.float32)
    tracemalloc.start()
    for y in range(0, h - win + 1, 16):
        for x in (0, 16, 32):
            st.add(x, y, p)
    st.finish()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(rows_seen) == h
    full_canvas = h * w * (c + 1) * 4  # 5 MB: what a whole-height canvas would need
    assert peak < full_canvas / 10


def test_invalid_input_is_rejected() -> None:
    sink = Collector(50, 50, 2)
    st = BandStitcher(50, 50, 16, 8, 2, sink)
    p = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(DataError):
        st.add(0, 0, np.zeros((3, 16, 16), np.float32))
    st.add(0, 20, p)
    with pytest.raises(DataError):
        st.add(0, 10, p)  # out of raster order
    with pytest.raises(DataError):
        st.add(60, 20, p)  # entirely outside
    st.finish()
    with pytest.raises(DataError):
        st.add(0, 40, p)
    with pytest.raises(ConfigError):
        BandStitcher(50, 50, 16, 20, 2, sink)  # stride > window
    with pytest.raises(ConfigError):
        BandStitcher(50, 50, 16, 8, 2, sink, label_offset=255)
    with pytest.raises(ConfigError):
        BandStitcher(50, 50, 16, 8, 2, sink, weights=np.zeros((16, 16)))


def test_finalize_rows_ties_and_offsets() -> None:
    acc = np.array([[[0.2, 0.5, 0.0]], [[0.2, 0.1, 0.0]], [[0.6, 0.5, 0.0]]], np.float32)
    wsum = np.array([[1.0, 1.0, 0.0]], np.float32)
    labels, probs = finalize_rows(acc, wsum, label_offset=1, unanalysed_value=0, with_probs=True)
    np.testing.assert_array_equal(labels, [[3, 1, 0]])  # tie at pixel 1 -> first class wins
    assert probs is not None
    np.testing.assert_array_equal(probs[0], [[51, 51, 153], [128, 26, 128], [0, 0, 0]])
