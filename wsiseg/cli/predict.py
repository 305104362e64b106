"""``wsiseg predict``: whole-slide segmentation into a pyramidal ``mask.tif`` that viewers open."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from wsiseg.cli import _options as o

__all__ = ["predict"]


def predict(
    ctx: typer.Context,
    slides: Annotated[list[str], typer.Argument(help="Slide files, folders or globs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="mask.tif for one slide, or a folder for several.")] = Path(
        "predictions"
    ),
    checkpoint: o.CheckpointOpt = None,
    model: o.DeprecatedModelPath = None,
    runs: Annotated[Path, typer.Option(help="Where to look for the newest run.")] = Path("runs"),
    batch_size: Annotated[
        int | None, typer.Option(help="Windows per forward pass [default: 16 on a GPU, 2 on CPU (memory)].")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Reader processes (per Dask worker with --cluster: 0 by default).")
    ] = min(2, os.cpu_count() or 1),
    device: o.DeviceOpt = "auto",
    backend: Annotated[str, typer.Option(help="Slide reader: auto, openslide, tiffslide, pillow.")] = "auto",
    slide_mpp: o.SlideMppOpt = None,
    override_mpp: o.OverrideMppOpt = False,
    min_tissue: Annotated[float | None, typer.Option(help="Tissue fraction to predict a window.")] = None,
    probs: Annotated[bool, typer.Option(help="Also write per-class probability maps.")] = False,
    ome: Annotated[bool, typer.Option(help="OME-TIFF with SubIFD pyramid (Bio-Formats).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo slides whose mask exists.")] = False,
    cluster: Annotated[
        str | None, typer.Option(help="Predict the slides on Dask: local (worker processes here), slurm or pbs.")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Predict on the Dask cluster of this scheduler (tcp://host:port).")
    ] = None,
    dask_workers: Annotated[
        int | None, typer.Option(help="Dask workers (--cluster): one per GPU, else per CPU core, by default.")
    ] = None,
    retries: Annotated[int, typer.Option(help="Dask: times a slide is retried after its worker died.")] = 2,
    export: Annotated[
        bool, typer.Option(help="Dask: export each mask on its worker, then write the cohort table and report.")
    ] = True,
    strips: Annotated[
        bool, typer.Option(help="Read tiled TIFF/SVS in strips, each stored tile decoded once (off: per window).")
    ] = True,
    gpu_decode: Annotated[
        bool, typer.Option(help="On CUDA, decode JPEG tiles on the GPU (nvJPEG); else, or if unsupported, CPU.")
    ] = False,
) -> None:
    """Segment whole slides into tumor / stroma / normal with a trained checkpoint."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from wsiseg.cli._cohort import cohort_options, predict_cohort
    from wsiseg.cli._console import batch_exit, console, given, make_progress
    from wsiseg.cli._options import checkpoint_path
    from wsiseg.cohort.jobs import plan_jobs
    from wsiseg.config import resolve_device
    from wsiseg.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        StorageError,
        WsisegError,
        from_os_error,
        is_fatal_storage_error,
    )
    from wsiseg.inference.predictor import PredictSettings
    from wsiseg.inference.provenance import checkpoint_provenance
    from wsiseg.tiling.batch import expand_sources
    from wsiseg.tiling.plan import ForcedMpp
    from wsiseg.train.checkpoint import load_checkpoint
    from wsiseg.train.runlog import latest_run

    if batch_size is not None and batch_size < 1:
        msg = f"--batch-size must be at least 1, got {batch_size} (leave it out for the device's default)"
        raise ConfigError(msg)
    if workers < 0:
        msg = f"--workers must be at least 0 (0 reads in this process), got {workers}"
        raise ConfigError(msg)
    if override_mpp and slide_mpp is None:
        msg = "--override-mpp needs --slide-mpp VALUE (the um/px to use instead of the slide's own)"
        raise ConfigError(msg)
    if override_mpp and slide_mpp is not None:
        slide_mpp = ForcedMpp(slide_mpp)
    model = checkpoint_path(checkpoint, model)
    if model is None:
        run = latest_run(runs)
        if run is None:
            msg = f"no trained run under {runs}/ (need checkpoints/final.json); train first or pass --checkpoint"
            raise CheckpointError(msg)
        model = run / "checkpoints" / "final"
        console.print(f"using the newest run's final checkpoint: {model}", highlight=False, markup=False)
    if given(ctx, "export") and cluster is None and scheduler is None:
        msg = "--export/--no-export goes with --cluster or --scheduler (without them, run wsiseg export on the masks)"
        raise ConfigError(msg)
    cohort = cohort_options(cluster, scheduler, dask_workers, retries, out=out)
    if cohort is not None and not given(ctx, "workers"):
        workers = 0  # each Dask worker reads its slide itself unless --workers asks for reader processes
    ckpt = load_checkpoint(model)
    dev = resolve_device(device) if cohort is None else device  # on a cluster each worker picks its own
    tiling, classes = ckpt.model_card.tiling_config, ckpt.model_card.class_table
    sources = expand_sources(slides)
    if not sources:
        msg = f"no slides found in {' '.join(slides)}"
        raise DataError(msg)
    single = len(sources) == 1 and out.suffix.lower() in {".tif", ".tiff"}
    settings = PredictSettings(batch_size=batch_size, workers=workers, device=dev, strips=strips, gpu_decode=gpu_decode,
                               min_tissue=tiling.min_tissue if min_tissue is None else min_tissue)  # fmt: skip
    jobs = plan_jobs(sources, out, single=single, tiling=tiling, classes=classes, settings=settings, backend=backend,
                     slide_mpp=slide_mpp, ome=ome, probs=probs, provenance=checkpoint_provenance(ckpt))  # fmt: skip
    if cohort is not None:
        return predict_cohort(jobs, cohort, overwrite=overwrite, device=device, export=export)
    net = ckpt.build_model()
    net.to(settings.device)
    table = Table(title="Predictions")
    for col in ("slide", "mask", "size", "mpp", "windows", "s", "windows/s"):
        table.add_column(col)
    failed: list[int] = []
    with make_progress("windows") as bar:
        task = bar.add_task("predict", total=None, rate="")
        for job in jobs:
            src, target = job.slide, job.target
            bar.reset(task, total=None, description=escape(src.name))
            try:
                if not overwrite and job.done():
                    table.add_row(Text(src.name), Text(str(target)), "exists", "", "", "", "")
                    continue
                res = job.run(net, progress=lambda d, t: bar.update(task, completed=d, total=t))
            except (WsisegError, OSError) as raw:
                err = from_os_error(raw, target) if isinstance(raw, OSError) else raw
                if is_fatal_storage_error(err):
                    if table.row_count:
                        console.print(table)
                    msg = (
                        f"{err} (batch stopped; the masks finished before it are complete and kept; rerun to continue)"
                    )
                    raise StorageError(msg) from raw
                failed.append(err.exit_code)
                console.print(f"[bold red]failed:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
                continue
            mpp = f"{res.mask_mpp:.3f}" if res.mask_mpp else "-"
            if res.mpp_source in ("assumed", "override"):
                mpp += f" ({res.mpp_source})"
            if res.mpp_source == "override":
                line = f"{src.name}: its own mpp was replaced by --slide-mpp {slide_mpp:g} (--override-mpp)"
                console.print(f"[bold yellow]warning:[/] {escape(line)}; recorded in the mask", highlight=False)
            elif slide_mpp is not None and res.mpp_source == "slide":
                line = f"{src.name} records its own mpp; --slide-mpp {slide_mpp:g} was not used"
                console.print(f"[yellow]note:[/] {escape(line)} (add --override-mpp to force it)", highlight=False)
            if res.stain_note:
                console.print(f"[yellow]note:[/] {escape(f'{src.name}: {res.stain_note}')}", highlight=False)
            rate = res.windows / res.seconds if res.seconds else 0.0
            table.add_row(Text(src.name), Text(str(res.mask)), f"{res.width}x{res.height}", mpp,
                          f"{res.windows}/{res.grid_windows}", f"{res.seconds:.1f}", f"{rate:.1f}")  # fmt: skip
    if table.row_count:
        console.print(table)
    batch_exit(failed, len(sources))
