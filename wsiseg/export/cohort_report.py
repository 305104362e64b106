"""The cohort report: one static ``cohort.html`` that opens from disk (no server, no network).

The page has a summary, a histogram of the tumour-stroma ratio (inline SVG), a gallery of overlay thumbnails
(small PNGs in ``cohort_thumbs/`` next to the page, each a link to export's full overlay PNG) and the cohort
table. A click on a column header sorts the table and the gallery by that column (numbers numerically, empty
cells last); a second click reverses the order. Everything else is inline: the page loads no script, style or
font from anywhere, and its Content-Security-Policy allows only its own script and style (by hash) and local
images. All text that comes from files (slide names, failure reasons, provenance) is HTML-escaped.

TSR = stroma area / (tumour + stroma) area, as in :mod:`wsiseg.export.cohort`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from wsiseg import __version__
from wsiseg.classes import ClassTable
from wsiseg.export._cohort_page import PAGE_CSS, PAGE_JS
from wsiseg.export.cohort import PROVENANCE_ALIASES, TSR_DEFINITION, column_kind
from wsiseg.fileio import atomic_output, atomic_write_text

__all__ = ["render_cohort_html", "report_columns", "tsr_histogram", "write_cohort_report", "write_thumbnails"]

THUMB_DIR = "cohort_thumbs"
#: Provenance columns the page shows when any slide has them (the CSV and Parquet files carry all).
#: Text cells longer than this show their start (the whole text on hover), except in ``_FULL_TEXT`` columns.
_MAX_CELL = 40
_EAGER_THUMBS = 60
_FULL_TEXT = frozenset({"slide", "failure"})
_SHOWN_PROVENANCE = ("checkpoint_id", "card_sha256", "dp", "epsilon", "privacy_unit", "wsiseg_version")


def write_cohort_report(rows: Sequence[dict[str, Any]], out_dir: Path, *, title: str = "wsiseg cohort report",
                        thumb_size: int = 256) -> Path:  # fmt: skip
    """Write ``cohort.html`` and its thumbnails (``cohort_thumbs/``) into ``out_dir`` (created if needed).

    Args:
        rows: Rows from :func:`wsiseg.export.cohort.build_cohort_table` (``overlay`` = export's overlay PNG).
        out_dir: Output folder; the page links its images relatively, so the folder can be moved or shared.
        title: Page title.
        thumb_size: Longest side of a gallery thumbnail in pixels.

    Returns:
        The path of ``cohort.html``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbs = write_thumbnails(rows, out_dir / THUMB_DIR, size=thumb_size)
    links = [_href(Path(r["overlay"]), out_dir) if r.get("overlay") else None for r in rows]
    page = render_cohort_html(rows, [_href(t, out_dir) if t else None for t in thumbs], links, title=title,
                              classes=_mask_classes(rows))  # fmt: skip
    return atomic_write_text(out_dir / "cohort.html", page)


def write_thumbnails(rows: Sequence[dict[str, Any]], folder: Path, *, size: int = 256) -> list[Path | None]:
    """Shrink each row's overlay PNG to at most ``size`` px into ``folder``; ``None`` for rows without one.

    A thumbnail newer than its overlay is kept as it is, so rerunning the report on a large cohort is cheap.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path | None] = []
    for row in rows:
        src = Path(row["overlay"]) if row.get("overlay") else None
        if src is None or not src.is_file():
            out.append(None)
            continue
        name = str(row["slide"])
        digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]
        dst = folder / f"{_safe_name(name)}_{digest}.png"
        if not (dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns):
            with Image.open(src) as img:
                small = img.convert("RGB")
                small.thumbnail((size, size), Image.Resampling.LANCZOS)
            with atomic_output(dst) as tmp:
                small.save(tmp, format="PNG", optimize=True)
        out.append(dst)
    return out


def report_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns the page's table shows: name, status, areas in mm^2, TSR, fractions, QC, key provenance."""
    if not rows:
        return ["slide", "status"]
    keys = list(rows[0])

    def present(col: str) -> bool:
        return any(r.get(col) not in (None, "") for r in rows)

    cols = ["slide", "status", *(["failure"] if present("failure") else [])]
    cols += [k for k in keys if k.endswith("_mm2")]
    cols += ["tsr", *(k for k in keys if k.endswith("_fraction")), "qc"]
    return cols + [k for k in _SHOWN_PROVENANCE if k in PROVENANCE_ALIASES and present(k)]


def tsr_histogram(values: Sequence[float | None], bins: int = 10) -> list[int]:
    """Count TSR values in ``bins`` equal bins over [0, 1] (the last bin includes 1); ``None`` is skipped."""
    counts = [0] * bins
    for v in values:
        if v is None or not math.isfinite(v):
            continue
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    return counts


def render_cohort_html(
    rows: Sequence[dict[str, Any]],
    thumbs: Sequence[str | None],
    links: Sequence[str | None] | None = None,
    *,
    title: str = "wsiseg cohort report",
    classes: ClassTable | None = None,
) -> str:
    """The page as a string (pure: no file access).

    Args:
        rows: Cohort rows.
        thumbs: Per row, the thumbnail's URL relative to the page, or ``None``.
        links: Per row, the full overlay's URL relative to the page, or ``None``.
        title: Page title.
        classes: Class table of the masks, for the gallery's colour legend (none without it).

    Returns:
        The complete HTML document.
    """
    links = links if links is not None else [None] * len(rows)
    cols = report_columns(rows)
    kinds = {c: column_kind(c, [r.get(c) for r in rows]) for c in cols}
    csp = (f"default-src 'none'; img-src 'self' file: data:; style-src '{_sha256(PAGE_CSS)}'; "
           f"script-src '{_sha256(PAGE_JS)}'; base-uri 'none'; form-action 'none'")  # fmt: skip
    tsr = [r.get("tsr") for r in rows]
    body = "\n".join([
        f"<h1>{_e(title)}</h1>", _summary(rows), '<section><h2>Tumour-stroma ratio</h2>',
        f"<p class=note>{_e(TSR_DEFINITION)}.</p>", histogram_svg(tsr_histogram(tsr)), "</section>",
        f'<section><h2>Gallery</h2>{_legend(classes)}<div id="gallery">',
        *(_card(i, r, thumbs[i], links[i]) for i, r in enumerate(rows)),
        "</div></section>", "<section><h2>Slides</h2><p class=note>Click a column header to sort; click again to "
        "reverse.</p>", _table(rows, cols, kinds), "</section>",
    ])  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
        f"<style>{PAGE_CSS}</style>\n</head>\n<body>\n{body}\n<script>{PAGE_JS}</script>\n</body>\n</html>\n"
    )


def histogram_svg(counts: Sequence[int], *, width: int = 520, height: int = 220) -> str:
    """An inline SVG bar chart of TSR counts over [0, 1], with the stroma-high threshold (0.5) marked."""
    if not any(counts):
        return "<p>No slide has tumour and stroma, so there is no TSR to plot.</p>"
    left, right, top, bottom = 40, 10, 14, 34
    pw, ph = width - left - right, height - top - bottom
    top_count, bw = max(counts), pw / len(counts)
    parts = [f'<svg id="tsr-histogram" role="img" aria-label="Histogram of tumour-stroma ratio" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">']  # fmt: skip
    for i, n in enumerate(counts):
        h = ph * n / top_count
        lo, hi = i / len(counts), (i + 1) / len(counts)
        parts.append(f'<rect class="bar" x="{left + i * bw + 1:.1f}" y="{top + ph - h:.1f}" width="{bw - 2:.1f}" '
                     f'height="{h:.1f}"><title>TSR {lo:.1f}-{hi:.1f}: {n} slide(s)</title></rect>')  # fmt: skip
        if n:
            parts.append(f'<text class="count" x="{left + (i + 0.5) * bw:.1f}" y="{top + ph - h - 3:.1f}">{n}</text>')
    for k in range(6):
        x = left + pw * k / 5
        parts.append(f'<text class="tick" x="{x:.1f}" y="{top + ph + 14}">{k / 5:.1f}</text>')
    x_half = left + pw / 2
    parts += [
        f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>',
        f'<line class="threshold" x1="{x_half:.1f}" y1="{top}" x2="{x_half:.1f}" y2="{top + ph}"/>',
        f'<text class="label" x="{left + pw / 2:.1f}" y="{height - 4}">stroma / (tumour + stroma); '
        "right of the dashed line: stroma-high</text>",
        f'<text class="tick" x="{left - 6}" y="{top + 4}" text-anchor="end">{top_count}</text></svg>',
    ]
    return "".join(parts)


def _summary(rows: Sequence[dict[str, Any]]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    tsr = [float(r["tsr"]) for r in ok if r.get("tsr") is not None]
    median = statistics.median(tsr) if tsr else None
    facts = [
        f"{len(rows)} slide(s)", f"{len(ok)} segmented", f"{len(rows) - len(ok)} failed",
        f"{sum(1 for r in ok if r.get('qc'))} with QC flags",
        f"median TSR {median:.2f}" if median is not None else "no TSR",
        f"{sum(1 for v in tsr if v > 0.5)} stroma-high", f"wsiseg {__version__}",
    ]  # fmt: skip
    return f'<p id="summary">{" · ".join(_e(f) for f in facts)}</p>'


def _legend(classes: ClassTable | None) -> str:
    """Colour swatches of the overlay classes (SVG fills, which the page's CSP allows, unlike style attributes)."""
    if classes is None:
        return ""
    from wsiseg.export.overlay import overlay_palette

    items = [f'<span><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
             f'fill="#{int(r):02x}{int(g):02x}{int(b):02x}"/></svg> {_e(c.name)}</span>'
             for c, (r, g, b) in zip(classes.classes, overlay_palette(classes), strict=True) if c.id != 0]  # fmt: skip
    return f'<p class="legend">Overlay colours: {" ".join(items)}</p>'


def _mask_classes(rows: Sequence[dict[str, Any]]) -> ClassTable | None:
    """The class table in the sidecar of the first mask of ``rows`` that has one, or ``None``."""
    import json

    from wsiseg.export.tiff import sidecar_path

    for row in rows:
        if not row.get("mask"):
            continue
        try:
            meta = json.loads(sidecar_path(Path(row["mask"])).read_text(encoding="utf-8"))
            return ClassTable.from_list(meta["classes"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _card(i: int, row: dict[str, Any], thumb: str | None, link: str | None) -> str:
    name = _e(str(row.get("slide", "")))
    if thumb:
        lazy = "lazy" if i >= _EAGER_THUMBS else "eager"  # a large cohort loads its first screens at once
        img = f'<img src="{_e(thumb)}" alt="overlay of {name}" loading="{lazy}">'
        visual = f'<a href="{_e(link)}">{img}</a>' if link else img
    else:
        reason = row.get("failure") or "no overlay"
        visual = f'<div class="missing">{_e(str(reason))}</div>'
    tsr = row.get("tsr")
    caption = f"<b>{name}</b><br>TSR {tsr:.2f}" if isinstance(tsr, float) else f"<b>{name}</b><br>TSR -"
    if row.get("qc"):
        caption += f' <span class="qc">{_e(str(row["qc"]).replace(";", ", "))}</span>'
    status = "failed" if row.get("failed") else "ok"
    return f'<figure class="card {status}" data-i="{i}">{visual}<figcaption>{caption}</figcaption></figure>'


def _table(rows: Sequence[dict[str, Any]], cols: Sequence[str], kinds: dict[str, str]) -> str:
    num = {c for c in cols if kinds[c] in {"float", "int"}}
    head = "".join(f'<th data-type="{"num" if c in num else "text"}"><button type="button">{_e(_label(c))}'
                   "</button></th>" for c in cols)  # fmt: skip
    body = []
    for i, row in enumerate(rows):
        cells = "".join(_td(row.get(c), c in num, full=c in _FULL_TEXT) for c in cols)
        body.append(f'<tr data-i="{i}" class="{"failed" if row.get("failed") else "ok"}">{cells}</tr>')
    table = f'<table id="cohort"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _td(value: Any, numeric: bool, *, full: bool = False) -> str:
    if value is None or value == "":
        return '<td data-v=""></td>'
    if numeric:
        v = float(value)
        shown = f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
        return f'<td data-v="{v!r}" class="num">{shown}</td>'
    text = str(value).replace(";", ", ")
    if len(text) > _MAX_CELL and not full:  # digests and long paths: the start, the whole on hover
        return f'<td data-v="{_e(str(value))}" title="{_e(text)}">{_e(text[:16])}…</td>'
    wrap = ' class="wrap"' if full else ""
    return f'<td data-v="{_e(str(value))}"{wrap}>{_e(text)}</td>'


def _label(col: str) -> str:
    return col.replace("_mm2", " mm²").replace("_fraction", " fraction").replace("_", " ")


def _href(target: Path, base: Path) -> str:
    """URL of ``target`` relative to ``base`` (percent-encoded: names with ``#``, ``?`` or ``<`` stay paths)."""
    rel = os.path.relpath(target.resolve(), base.resolve())
    return quote(Path(rel).as_posix(), safe="/")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[:60] or "slide"


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
