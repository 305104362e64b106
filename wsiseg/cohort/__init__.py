"""Cohort prediction on Dask: one task per slide on a local cluster, an existing scheduler, or SLURM / PBS.

Sits between ``export`` (the single-slide prediction it runs, :mod:`wsiseg.export.slide_mask`) and ``cli``:
``jobs`` (one picklable job per slide, also used by the plain batch loop), ``worker`` (the task and the
per-worker model cache), ``cluster`` (where it runs, checked before it starts) and ``run`` (submission,
progress, summary).
"""
