"""Gaussian noise for model updates, always from an explicit ``np.random.Generator``.

The Gaussian mechanism of FedDP eq. 11 adds ``N(0, z**2 * C**2 I)`` to the *sum* of clipped client
updates, where ``z`` is the noise multiplier (the paper's sigma) and ``C`` the clip norm. After dividing by
the number of clients ``n``, the per-coordinate std on the *mean* is ``z * C / n``.

Randomness: production runs pass ``seed=None`` and get a generator seeded from OS entropy; tests and
reproductions pass an explicit seed, which is then recorded. Each call of :func:`gaussian_noise_like` draws
256 bits from that generator and derives independent PCG64 streams from them (numpy's ``SeedSequence``
spawn keys), one per chunk of :data:`NOISE_CHUNK` coordinates of the update laid out as one vector. A
thread pool fills the chunks (numpy releases the GIL while it fills an array); the values depend only on
the parent generator's state and the update's layout, never on the thread count.

numpy's PCG64 is a statistical, not a cryptographic, generator, and the normals are floating-point samples;
both are the usual practice for DP research code but fall short of a hardened implementation (see Mironov
2012 on floating-point attacks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wsiseg.errors import PrivacyError
from wsiseg.privacy.parallel import map_ordered

__all__ = [
    "NOISE_CHUNK",
    "add_noise",
    "gaussian_noise_like",
    "make_generator",
    "noise_std_mean",
    "noise_std_sum",
]

Update = dict[str, np.ndarray]

NOISE_CHUNK = 1 << 22
"""Coordinates per independent noise stream (4 M: about 16 MiB of float32 per chunk)."""


def make_generator(seed: int | None) -> tuple[np.random.Generator, dict[str, Any]]:
    """Build the generator used for DP noise.

    Args:
        seed: A non-negative integer for a reproducible run (tests, reproductions), or ``None`` to seed
            from OS entropy (production).

    Returns:
        ``(rng, seed_info)``. ``seed_info`` is JSON-serialisable and safe to log:
        ``{"source": "user-seed", "seed": seed}`` for an explicit seed, or ``{"source": "os-entropy"}``
        with OS entropy. The OS entropy itself is never recorded, since anyone holding it could
        regenerate and subtract the noise.

    Raises:
        PrivacyError: If ``seed`` is negative or not an integer.
    """
    if seed is None:
        sequence = np.random.SeedSequence()
        return np.random.Generator(np.random.PCG64(sequence)), {"source": "os-entropy"}
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        msg = f"noise seed must be a non-negative integer or None (OS entropy), got {seed!r}"
        raise PrivacyError(msg)
    sequence = np.random.SeedSequence(int(seed))
    return np.random.Generator(np.random.PCG64(sequence)), {"source": "user-seed", "seed": int(seed)}


def _check_std(std: float) -> None:
    if not (math.isfinite(std) and std >= 0):
        msg = f"noise std must be a finite number >= 0, got {std!r}"
        raise PrivacyError(msg)


def _noise_dtype(dtype: np.dtype) -> type[np.floating]:
    """float64 tensors get float64 noise; everything else gets float32 (numpy's fast normal path)."""
    return np.float64 if dtype == np.float64 else np.float32


def _stream(entropy: list[int], key: tuple[int, ...]) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=key)))


def gaussian_noise_like(update: Update, std: float, rng: np.random.Generator, *, workers: int | None = None) -> Update:
    """Draw i.i.d. ``N(0, std**2)`` noise shaped like ``update``.

    The values depend only on ``rng``'s state and the update's layout (names in order, shapes, dtypes):
    the same seed and layout give the same noise with any number of ``workers``. ``rng`` advances by
    one fixed draw per call, so a saved generator state resumes the same noise sequence.

    Args:
        update: Template mapping of name to tensor (only shapes and dtypes are used).
        std: Per-coordinate standard deviation.
        rng: The generator to draw from (see :func:`make_generator`).
        workers: Threads that fill the chunks; ``None`` uses :func:`wsiseg.privacy.parallel.noise_workers`.

    Returns:
        A new dict of float32 arrays (float64 where the template is float64).

    Raises:
        PrivacyError: If ``std`` is negative or not finite.
    """
    _check_std(std)
    entropy = [int(v) for v in rng.integers(0, 2**63, size=4, dtype=np.int64)]
    layout = [(name, np.shape(t), _noise_dtype(np.asarray(t).dtype)) for name, t in update.items()]
    views: Update = {}
    chunks: list[tuple[tuple[int, int], np.ndarray]] = []
    for d_index, dtype in enumerate((np.float32, np.float64)):
        entries = [(name, shape) for name, shape, d in layout if d is dtype]
        sizes = [math.prod(shape) for _, shape in entries]
        buffer = np.empty(sum(sizes), dtype=dtype)  # all tensors of one dtype as one coordinate space
        chunks += [
            ((d_index, j), buffer[s : s + NOISE_CHUNK]) for j, s in enumerate(range(0, buffer.size, NOISE_CHUNK))
        ]
        offset = 0
        for (name, shape), size in zip(entries, sizes, strict=True):
            views[name] = buffer[offset : offset + size].reshape(shape)
            offset += size

    def fill(job: tuple[tuple[int, int], np.ndarray]) -> None:
        key, view = job
        _stream(entropy, key).standard_normal(out=view, dtype=view.dtype)
        view *= view.dtype.type(std)

    map_ordered(fill, chunks, coords=sum(v.size for _, v in chunks), workers=workers)
    return {name: views[name] for name, _, _ in layout}


def add_noise(update: Update, std: float, rng: np.random.Generator) -> Update:
    """Return ``update + N(0, std**2 I)`` as new arrays; the input is not modified.

    Args:
        update: Mapping of name to floating tensor.
        std: Per-coordinate standard deviation.
        rng: The generator to draw from.

    Returns:
        A new dict with the tensors' dtype preserved (float32 stays float32).

    Raises:
        PrivacyError: If ``std`` is negative or not finite.
    """
    noise = gaussian_noise_like(update, std, rng)
    return {k: (np.asarray(v) + noise[k]).astype(np.asarray(v).dtype, copy=False) for k, v in update.items()}


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        msg = f"{name} must be a finite number >= 0, got {value!r}"
        raise PrivacyError(msg)


def noise_std_sum(noise_multiplier: float, clip_norm: float) -> float:
    """Per-coordinate noise std added to the *sum* of clipped updates: ``z * C``.

    Args:
        noise_multiplier: ``z`` (the paper's sigma), the ratio of noise std to L2 sensitivity.
        clip_norm: ``C``, the L2 sensitivity of the sum under add/remove-one-client.

    Returns:
        ``z * C``.

    Raises:
        PrivacyError: If either argument is negative or not finite.
    """
    _check_positive("noise multiplier", noise_multiplier)
    _check_positive("clip norm", clip_norm)
    return float(noise_multiplier * clip_norm)


def noise_std_mean(noise_multiplier: float, clip_norm: float, n_clients: int) -> float:
    """Per-coordinate noise std on the *mean* of ``n_clients`` clipped updates: ``z * C / n``.

    Args:
        noise_multiplier: ``z``.
        clip_norm: ``C``.
        n_clients: The denominator of the mean (clients released, or the expected cohort size
            under Poisson sampling).

    Returns:
        ``z * C / n``.

    Raises:
        PrivacyError: If ``n_clients < 1`` or the other arguments are invalid.
    """
    if n_clients < 1:
        msg = f"number of clients must be >= 1, got {n_clients}"
        raise PrivacyError(msg)
    return noise_std_sum(noise_multiplier, clip_norm) / n_clients
