"""Splits and client partitions by SLIDE, never by patch, so no slide leaks between train and test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from wsiseg.errors import ConfigError

__all__ = ["explicit_split", "kfold_slides", "partition_clients", "split_slides"]


def split_slides(slides: Sequence[str], *, test_fraction: float = 0.3, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle slides with ``seed`` and split them into train and test (paper: 0.7 / 0.3).

    With two or more slides both parts get at least one slide.

    Raises:
        ConfigError: If the fraction is outside (0, 1) or there are fewer than two slides.
    """
    if not 0.0 < test_fraction < 1.0:
        msg = f"test fraction must be in (0, 1), got {test_fraction}"
        raise ConfigError(msg)
    ids = sorted(set(slides))
    if len(ids) < 2:
        msg = f"a train/test split needs at least 2 slides, got {len(ids)}; tile more slides"
        raise ConfigError(msg)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = min(len(ids) - 1, max(1, round(test_fraction * len(ids))))
    test = sorted(ids[i] for i in order[:n_test])
    train = sorted(ids[i] for i in order[n_test:])
    return train, test


def explicit_split(slides: Sequence[str], heldout: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split slides into train and the given held-out slides (``--heldout``).

    Raises:
        ConfigError: A held-out id that is not among ``slides`` (the message names it and some known ids),
            or no slide left for training.
    """
    ids = sorted(set(slides))
    wanted = sorted(set(heldout))
    unknown = [h for h in wanted if h not in set(ids)]
    if unknown:
        known = ", ".join(ids[:6]) + (", ..." if len(ids) > 6 else "")
        msg = f"held-out slides {', '.join(unknown[:6])} are not in the dataset (its slides: {known}); fix --heldout"
        raise ConfigError(msg)
    train = [s for s in ids if s not in set(wanted)]
    if not train:
        msg = f"--heldout lists all {len(ids)} slides; leave some for training"
        raise ConfigError(msg)
    return train, wanted


def kfold_slides(slides: Sequence[str], *, folds: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Return ``folds`` (train, test) pairs; every slide is in exactly one test fold.

    Raises:
        ConfigError: If there are fewer slides than folds.
    """
    ids = sorted(set(slides))
    if folds < 2 or len(ids) < folds:
        msg = f"{folds}-fold cross-validation needs at least {max(folds, 2)} slides, got {len(ids)}"
        raise ConfigError(msg)
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, folds)
    out = []
    for k in range(folds):
        test = sorted(ids[i] for i in parts[k])
        train = sorted(ids[i] for j, p in enumerate(parts) if j != k for i in p)
        out.append((train, test))
    return out


def partition_clients(
    slides: Sequence[str],
    n_clients: int,
    *,
    mode: str = "iid",
    seed: int = 0,
    sites: Mapping[str, str] | None = None,
    groups: Mapping[str, str] | None = None,
    alpha: float = 0.5,
) -> list[list[str]]:
    """Assign slides to clients.

    Args:
        slides: Slide keys.
        n_clients: Number of clients.
        mode: ``"iid"`` (shuffled round robin), ``"dirichlet"`` (per group of slides, client shares drawn
            from Dirichlet(alpha); smaller alpha is more skewed) or ``"by-site"`` (one client per site).
        seed: Shuffling seed.
        sites: Slide -> site, required for ``by-site``.
        groups: Slide -> group label (for example its dominant class) for ``dirichlet``; one group if None.
        alpha: Dirichlet concentration.

    Returns:
        One sorted slide list per client; every client has at least one slide.

    Raises:
        ConfigError: Too few slides, unknown mode, or missing sites.
    """
    ids = sorted(set(slides))
    if mode == "by-site":
        return _by_site(ids, n_clients, sites)
    if n_clients < 1 or len(ids) < n_clients:
        msg = f"{n_clients} clients need at least {n_clients} slides, got {len(ids)}; use fewer --clients"
        raise ConfigError(msg)
    rng = np.random.default_rng(seed)
    if mode == "iid":
        order = rng.permutation(len(ids))
        return [sorted(ids[i] for i in order[k::n_clients]) for k in range(n_clients)]
    if mode != "dirichlet":
        msg = f"unknown partition {mode!r}; use iid, dirichlet or by-site"
        raise ConfigError(msg)
    buckets: list[list[str]] = [[] for _ in range(n_clients)]
    labels = groups or {}
    for group in sorted({labels.get(s, "") for s in ids}):
        members = [ids[i] for i in rng.permutation(len(ids)) if labels.get(ids[i], "") == group]
        shares = rng.dirichlet(np.full(n_clients, alpha))
        for slide in members:
            buckets[int(rng.choice(n_clients, p=shares))].append(slide)
    _rebalance(buckets)
    return [sorted(b) for b in buckets]


def _rebalance(buckets: list[list[str]]) -> None:
    """Move slides from the largest clients to empty ones until none is empty."""
    for bucket in buckets:
        if not bucket:
            donor = max(buckets, key=len)
            bucket.append(donor.pop())


def _by_site(ids: list[str], n_clients: int, sites: Mapping[str, str] | None) -> list[list[str]]:
    if not sites or not all(sites.get(s) for s in ids):
        msg = "by-site partitioning needs a site for every slide; tile with --site or --sites CSV"
        raise ConfigError(msg)
    names = sorted({sites[s] for s in ids})
    if n_clients not in (0, len(names)):
        msg = f"--clients {n_clients} does not match the {len(names)} sites found ({', '.join(names)})"
        raise ConfigError(msg)
    return [sorted(s for s in ids if sites[s] == name) for name in names]
