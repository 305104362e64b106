"""Where a cohort runs: a local Dask cluster, an existing scheduler, or SLURM / PBS through dask-jobqueue.

:func:`check_cohort_options` validates the choice and the output folder before anything starts, so a bad
address or an output folder that cannot be written fails at once (exit 2), not after the cluster is up.
:func:`open_client` connects (with a short timeout) or starts the cluster and closes what it started.

Workers of a local cluster are processes with one thread each (one per GPU when CUDA is present, else one per
CPU core); the scheduler runs in this process. SLURM and PBS clusters take their queue, account, cores,
memory and walltime from dask-jobqueue's own configuration (``~/.config/dask/jobqueue.yaml``), so wsiseg
passes only the number of workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsiseg.errors import ConfigError

__all__ = ["CLUSTER_KINDS", "CohortOptions", "check_cohort_options", "default_workers", "open_client"]

CLUSTER_KINDS = ("local", "slurm", "pbs")
#: Seconds to wait for a scheduler to answer before the cohort fails.
CONNECT_TIMEOUT_S = 5.0
_JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class CohortOptions:
    """Where and how a cohort runs.

    Attributes:
        cluster: ``local``, ``slurm`` or ``pbs`` (``None`` with ``scheduler``).
        scheduler: Address of an existing scheduler (``tcp://host:8786``), or ``None``.
        workers: Workers to start (``None``: :func:`default_workers`); not used with ``scheduler``.
        retries: Times a slide is run again after its worker died or it raised unexpectedly.
        connect_timeout: Seconds to wait for the scheduler.
    """

    cluster: str | None = "local"
    scheduler: str | None = None
    workers: int | None = None
    retries: int = 2
    connect_timeout: float = CONNECT_TIMEOUT_S


def default_workers() -> int:
    """One worker per CUDA GPU, else one per CPU core."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else max(1, os.cpu_count() or 1)


def check_cohort_options(opts: CohortOptions, out: Path) -> None:
    """Refuse a bad cluster choice or an output folder that cannot be written, before anything starts.

    Raises:
        ConfigError: Both or neither of cluster and scheduler, a malformed address, a bad worker count or
            retries, or ``out`` (created if missing) not writable.
    """
    bad = []
    if (opts.cluster is None) == (opts.scheduler is None):
        bad.append("give --cluster or --scheduler, not both")
    if opts.cluster is not None and opts.cluster not in CLUSTER_KINDS:
        bad.append(f"--cluster must be one of {', '.join(CLUSTER_KINDS)}, got {opts.cluster!r}")
    if opts.scheduler is not None and "://" not in opts.scheduler:
        bad.append(f"--scheduler {opts.scheduler!r} is not an address; write it like tcp://host:8786")
    if opts.scheduler is not None and opts.workers is not None:
        bad.append("--dask-workers starts workers of a --cluster; an existing --scheduler has its own")
    if opts.workers is not None and opts.workers < 1:
        bad.append(f"--dask-workers must be at least 1, got {opts.workers}")
    if opts.retries < 0:
        bad.append(f"--retries must be at least 0, got {opts.retries}")
    if bad:
        raise ConfigError("; ".join(bad))
    if out.suffix.lower() in {".tif", ".tiff"}:
        msg = f"--out {out}: a cohort is predicted into a folder, not one mask file; pass a folder"
        raise ConfigError(msg)
    _check_writable(out)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".wsiseg-write-check.", dir=out)
        os.close(fd)
        Path(probe).unlink()
    except OSError as err:
        cause = err.strerror or type(err).__name__
        msg = (f"--out {out} is not a writable folder ({cause.lower()}); choose a folder on storage you may write "
               "to (every worker writes there)")  # fmt: skip
        raise ConfigError(msg) from err


@contextlib.contextmanager
def open_client(opts: CohortOptions) -> Iterator[Any]:
    """Yield a ``distributed.Client`` on the cluster ``opts`` describes; a cluster started here is closed after.

    Raises:
        ConfigError: The scheduler does not answer within ``connect_timeout``, or dask-jobqueue is missing or
            not configured for ``--cluster slurm`` / ``pbs``.
    """
    import dask
    from distributed import Client, LocalCluster

    if opts.scheduler is not None:
        try:
            client = Client(opts.scheduler, timeout=opts.connect_timeout)
        except (OSError, TimeoutError, ValueError) as err:
            msg = (f"--scheduler {opts.scheduler}: no Dask scheduler answered within {opts.connect_timeout:g} s "
                   f"({type(err).__name__}); start one (dask scheduler) or check the address")  # fmt: skip
            raise ConfigError(msg) from err
        with client:
            yield client
        return
    n = opts.workers or default_workers()
    config = {
        "distributed.scheduler.allowed-failures": opts.retries,
        # a worker gets its next slide only when it is free, so its death costs only the slide in flight
        "distributed.scheduler.worker-saturation": 1.0,
        "distributed.worker.daemon": False,  # a worker may start reader processes (--workers)
        # one BLAS/OpenMP thread per worker, as Dask's default, but without its MALLOC_TRIM_THRESHOLD_=65536:
        # returning every freed 64 KiB to the OS cost 40 % more CPU per slide (benchmarks/RESULTS.md)
        "distributed.nanny.pre-spawn-environ": dict.fromkeys(_THREAD_VARS, 1),
    }
    with dask.config.set(config):
        if opts.cluster == "local":
            # loopback only, the scheduler's HTTP routes too (on a free port, not a fixed 8787 on every interface)
            cluster: Any = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)  # fmt: skip
        else:
            cluster = _jobqueue_cluster(str(opts.cluster), n)
        with cluster, Client(cluster) as client:
            yield client


def _jobqueue_cluster(kind: str, n: int) -> Any:
    try:
        import dask_jobqueue
    except ImportError as err:
        msg = f"--cluster {kind} needs dask-jobqueue: pip install 'wsiseg[cluster]' (or pip install dask-jobqueue)"
        raise ConfigError(msg) from err
    try:
        cluster = getattr(dask_jobqueue, _JOBQUEUE[kind])()
    except ValueError as err:
        msg = (f"--cluster {kind}: dask-jobqueue is not configured ({err}); set cores, memory, queue and walltime "
               f"under jobqueue.{kind} in ~/.config/dask/jobqueue.yaml (see the README)")  # fmt: skip
        raise ConfigError(msg) from err
    cluster.scale(n)
    return cluster
