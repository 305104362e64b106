"""``wsiseg models``: list the registered models with size, compute and the paper's Table-I row."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from torch import nn

__all__ = ["count_gflops", "model_facts", "models"]

FLOPS_NOTE = "GFLOPs = 2 x multiply-accumulates (torch FlopCounterMode), one 224x224 image, eval mode"


def count_gflops(model: nn.Module, size: int = 224) -> float:
    """Count the forward GFLOPs of ``model`` on one ``size``x``size`` RGB image in eval mode.

    ``FlopCounterMode`` counts a multiply-accumulate as 2 FLOPs, so this is 2 x GMACs.

    Args:
        model: The model (put into eval mode).
        size: Image side in pixels.

    Returns:
        Giga floating-point operations.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def model_facts(name: str, *, flops: bool = True) -> dict[str, Any]:
    """Build a registered model (random init) and return its name, family, size, GFLOPs and paper row.

    GFLOPs are counted at 224 px, or at the model's own size for variants fixed to one (``gflops_size``).
    """
    from wsiseg.models import create_model, get_entry

    entry = get_entry(name)
    model = create_model(name, pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    size = entry.input_size(224)  # tiny Swin/ViT variants only take their own input size
    gflops = round(count_gflops(model, size), 2) if flops else None
    return {
        "name": name,
        "family": entry.family,
        "tiny": entry.tiny,
        "params_m": round(params / 1e6, 3),
        "gflops_224": gflops if size == 224 else None,
        "gflops": gflops,
        "gflops_size": size,
        "paper_row": entry.paper_row,
    }


def models(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")] = False,
    tiny: Annotated[bool, typer.Option("--tiny/--no-tiny", help="Include the tiny test variants.")] = False,
    pattern: Annotated[str, typer.Option(help="Glob over model names, e.g. 'dhunet*'.")] = "*",
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count GFLOPs at 224.")] = True,
) -> None:
    """List registered models: parameters, GFLOPs at 224 and the FedDP Table-I row (Dice/Jaccard/Acc)."""
    from wsiseg.cli._console import console, stdout
    from wsiseg.errors import ModelError
    from wsiseg.models import list_models

    names = list_models(pattern, include_tiny=tiny)
    if not names:
        msg = f"no registered model matches {pattern!r}; run 'wsiseg models --tiny' to see all names"
        raise ModelError(msg)
    rows = [model_facts(n, flops=flops) for n in names]
    if json_:
        stdout.print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="wsiseg models", caption=f"{FLOPS_NOTE}. Paper: centralised | FL | FedDP")
    for col, justify in [("name", "left"), ("family", "left"), ("params (M)", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("GFLOPs@224", justify="right")
    table.add_column("Table I Dice/Jaccard/Acc %", justify="left")
    for r in rows:
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.2f}"
        if r["gflops"] is not None and r["gflops_size"] != 224:
            gflops += f" (at {r['gflops_size']})"
        table.add_row(r["name"], r["family"], f"{r['params_m']:.2f}", gflops, r["paper_row"] or "-")
    console.print(table)
