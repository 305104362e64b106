"""The score display of ``evaluate`` and ``train``: the model beside trivial baselines on the same tiles.

Headline: confusion-matrix Dice and IoU per class and their mean over the foreground classes present in the
ground truth. The paper's metric is shown beside it under its own name, with a note on absent classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["PAPER_NOTE", "show_scores", "verdict"]

PAPER_NOTE = (
    "paper Dice (DHUnet/FedDP): one-vs-rest per slide; a class absent from truth and prediction scores 1 and a "
    "false positive on an absent class is skipped, so it flatters predictors that ignore rare classes."
)


def _f(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def verdict(model: float, baselines: Mapping[str, float]) -> tuple[bool, str]:
    """Whether the model's mean Dice beats every baseline's, and a one-line statement of it."""
    if not baselines:
        return True, ""
    name, best = max(baselines.items(), key=lambda kv: -1.0 if math.isnan(kv[1]) else kv[1])
    if math.isnan(model) or model <= best:
        beaten = [n for n, v in baselines.items() if not math.isnan(model) and not math.isnan(v) and model > v]
        tail = (
            f"it beats only the {', '.join(beaten)} baseline(s), so a trivial rule still does better"
            if beaten
            else "it has learned nothing that a trivial rule does not do"
        )
        return False, f"the model does NOT beat the {name} baseline (mean Dice {_f(model)} vs {_f(best)}): {tail}"
    return True, f"the model beats the best baseline ({name}, {_f(best)}) by {model - best:+.4f} mean Dice"


def show_scores(report: Any, baselines: Mapping[str, Any], *, note: str = "") -> None:
    """Print the comparison table, the model's per-class table, the paper-metric note and the verdict.

    Args:
        report: The model's :class:`~wsiseg.train.report.MetricReport`.
        baselines: ``name -> MetricReport`` of baselines scored on the same tiles.
        note: One line on where the baselines come from.
    """
    from rich.table import Table

    from wsiseg.cli._console import console

    names = report.class_names
    present = [names[i] for i in report.confusion_metrics["present_classes"]]
    title = (
        f"Scores over {report.num_slides} slide(s): confusion-matrix Dice, mean over the classes present in the "
        f"truth ({', '.join(present) or 'none'})"
    )
    table = Table(title=title)
    for col in ("predictor", "mean Dice", "mean IoU", *names, "pixel acc", "paper Dice"):
        table.add_column(col)
    for label, rep in (("model", report), *baselines.items()):
        cmm = rep.confusion_metrics
        table.add_row(
            label, _f(rep.mean_dice), _f(rep.mean_iou), *[_f(float(v)) for v in cmm["dice"]],
            _f(cmm["pixel_accuracy"]), _f(rep.paper["dice"]),
        )  # fmt: skip
    console.print(table)
    detail = Table(title="Model per class")
    cols = ["class", "dice", "iou", "precision", "recall", "support", "paper_dice", "paper_jaccard", "paper_acc"]
    for col in cols:
        detail.add_column(col)
    for row in report.to_rows():
        detail.add_row(*[_f(row[c]) if isinstance(row[c], float) else str(row[c]) for c in cols])
    console.print(detail)
    console.print(f"[dim]{PAPER_NOTE}[/]", highlight=False)
    if note:
        console.print(f"[dim]{note}[/]", highlight=False)
    ok, line = verdict(report.mean_dice, {n: b.mean_dice for n, b in baselines.items()})
    if line:
        console.print(f"[green]{line}[/]" if ok else f"[bold red]{line}[/]", highlight=False)
