"""The cohort table: one row per slide of a ``wsiseg predict`` / ``wsiseg export`` output folder.

Areas are never computed here. Each row reads the per-slide areas CSV that ``wsiseg export`` writes
(:func:`wsiseg.export.stats.class_areas`, the one area computation of wsiseg); a mask without an up-to-date
export (no ``<stem>_areas.csv``, or one older than the mask) is exported first with
:func:`wsiseg.export.report.export_mask` and export's defaults, so the table and the report's gallery always
use what ``wsiseg export`` would write.

Columns (every row has all of them; empty = unknown):

- ``slide`` (the mask's name, as export names its files), ``status`` (``ok`` or ``failed``), ``failure`` and
  ``exit_code`` (why a slide failed), ``mask``, ``overlay`` (export's overlay PNG) and ``slide_path``.
- ``<class>_um2`` and ``<class>_mm2`` for tumor, stroma, normal (and any other tissue class of the mask),
  ``tissue_um2``, ``tissue_mm2``, ``tissue_px_level0``, and ``<class>_fraction`` = class area / tissue area.
- ``tsr``, the tumour-stroma ratio as pathologists score it: **stroma area / (tumour + stroma) area**
  (stroma-high when > 0.5). It is the ``stroma_fraction`` of the areas CSV; that CSV's ``tumor_stroma_ratio``
  (tumour / stroma) is here ``tumor_per_stroma``. ``tissue_share`` = tissue pixels / all mask pixels.
- QC flags: ``mpp_assumed`` (the mpp came from ``--slide-mpp``, not from the slide), ``no_mpp`` (areas only in
  level-0 px^2), ``low_tissue`` (tissue below ``min_tissue_mm2``, or below ``min_tissue_share`` of the mask when
  there is no mpp), ``not_he`` (prediction found the slide does not look like brightfield H&E: fluorescence or
  another stain; its ``stain_note`` says why), ``failed``; ``qc`` lists the raised flags, ``;``-separated.
- Provenance, read tolerantly by name from the mask's JSON sidecar (``provenance``, nested dicts flattened with
  ``_``) and from extra columns of the areas CSV: ``checkpoint``, ``checkpoint_id``, ``card_sha256``, ``dp``
  (mode), ``epsilon``, ``delta``, ``privacy_unit``, ``wsiseg_version`` (aliases in :data:`PROVENANCE_ALIASES`),
  then ``mpp_source``, ``slide_mpp``, the tiling settings (``tiling_*``, ``window_level0``, ``stride_level0``) and any
  other provenance field under its flattened name.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wsiseg import __version__
from wsiseg.errors import DataError, WsisegError
from wsiseg.export.stats import ASSUMED_MPP_NOTE, NO_MPP_NOTE, _cell
from wsiseg.export.tiff import FORMAT, sidecar_path
from wsiseg.fileio import atomic_output

__all__ = [
    "DEFAULT_MIN_TISSUE_MM2",
    "PROVENANCE_ALIASES",
    "TSR_DEFINITION",
    "build_cohort_table",
    "failures_from_summary",
    "find_masks",
    "missing_exports",
    "write_cohort_table",
]

TSR_DEFINITION = "tumour-stroma ratio (tsr) = stroma area / (tumour + stroma) area; stroma-high when > 0.5"
MAIN_CLASSES = ("tumor", "stroma", "normal")
#: Tissue area below which a slide is flagged ``low_tissue`` (mm^2).
DEFAULT_MIN_TISSUE_MM2 = 1.0
#: Without mpp: tissue share of the mask below which a slide is flagged ``low_tissue``.
DEFAULT_MIN_TISSUE_SHARE = 0.01
#: Cohort column -> provenance field names it is read from (first present wins; nested dicts flattened by ``_``).
PROVENANCE_ALIASES: dict[str, tuple[str, ...]] = {
    "checkpoint": ("checkpoint", "checkpoint_path", "model_path"),
    "checkpoint_id": ("checkpoint_id", "model_id", "card_id", "run_id"),
    "card_sha256": ("card_sha256", "card_digest", "checkpoint_digest", "checkpoint_card_digest", "digest"),
    "dp": ("dp", "dp_mode", "privacy_dp", "privacy_mode"),
    "epsilon": ("epsilon", "privacy_epsilon", "dp_epsilon", "final_epsilon", "privacy_final_epsilon"),
    "delta": ("delta", "privacy_delta", "dp_delta"),
    "privacy_unit": ("privacy_unit", "dp_unit", "unit", "privacy_privacy_unit"),
    "wsiseg_version": ("wsiseg_version",),
}
_IDENTITY = ("slide", "status", "failure", "exit_code", "mask", "overlay", "slide_path")
_QC = ("qc", "mpp_assumed", "no_mpp", "low_tissue", "not_he", "failed")
_BOOL_COLUMNS = frozenset(_QC[1:])
_FLOAT_SUFFIXES = ("_um2", "_mm2", "_fraction", "_px_level0")
_FLOAT_COLUMNS = frozenset({"tsr", "tumor_per_stroma", "tissue_share", "epsilon", "delta"})
_SKIP_PROVENANCE = frozenset({"slide"})
#: The per-slide summary a cohort run (``wsiseg predict --cluster``) leaves in its output folder; the name is
#: ``wsiseg.cohort.run.SUMMARY_NAME``, not imported here because that module loads torch (a test checks it).
COHORT_SUMMARY = "cohort_summary.json"

Row = dict[str, Any]


def find_masks(pred_dir: Path) -> list[Path]:
    """Label masks written by ``wsiseg predict`` in ``pred_dir`` (not its subfolders), sorted by name.

    A mask is a ``.tif``/``.tiff`` whose JSON sidecar says ``format: wsiseg-mask`` and ``kind: labels``;
    probability maps, export's overlay TIFFs, slides and scratch files are skipped.
    """
    found = []
    for path in sorted(pred_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in {".tif", ".tiff"} or not path.is_file():
            continue
        meta = _read_json(sidecar_path(path))
        if isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("kind", "labels") == "labels":
            found.append(path)
    return found


def missing_exports(pred_dir: Path, export_dir: Path | None = None) -> list[Path]:
    """The masks of ``pred_dir`` whose areas CSV in ``export_dir`` (default ``pred_dir``) is absent or older."""
    export_dir = pred_dir if export_dir is None else export_dir
    return [m for m in find_masks(pred_dir) if not _is_fresh(export_dir / f"{m.name.split('.')[0]}_areas.csv", m)]


def failures_from_summary(pred_dir: Path) -> dict[str, tuple[int, str]]:
    """The failed slides that the last cohort run recorded in ``pred_dir/cohort_summary.json``.

    A slide whose mask was completed after that run (a mask newer than the summary) is not a failure any more.

    Returns:
        Mask stem -> ``(exit_code, reason)``, for :func:`build_cohort_table`'s ``failures``; empty without a
        readable summary.
    """
    path = pred_dir / COHORT_SUMMARY
    items = _read_json(path)
    if not isinstance(items, list):
        return {}
    written = path.stat().st_mtime_ns
    out: dict[str, tuple[int, str]] = {}
    for item in items:
        if not (isinstance(item, dict) and item.get("status") == "failed" and item.get("target")):
            continue
        target = pred_dir / Path(str(item["target"])).name
        if target.is_file() and target.stat().st_mtime_ns > written:
            continue
        code = item.get("exit_code")
        code = code if isinstance(code, int) and code > 0 else 1
        out[target.name.split(".")[0]] = (code, str(item.get("reason", "")))
    return out


def build_cohort_table(
    pred_dir: Path,
    *,
    export_dir: Path | None = None,
    failures: Mapping[str, str | tuple[int, str]] | None = None,
    export_missing: bool = True,
    min_tissue_mm2: float = DEFAULT_MIN_TISSUE_MM2,
    min_tissue_share: float = DEFAULT_MIN_TISSUE_SHARE,
) -> list[Row]:
    """One row per slide found in a prediction folder (columns in the module docstring), sorted by slide.

    Args:
        pred_dir: Folder of ``mask.tif`` files (and sidecars) from ``wsiseg predict``.
        export_dir: Folder of ``wsiseg export`` outputs for those masks (default ``pred_dir``).
        failures: Slides that failed upstream: slide id (the mask stem) or slide path -> reason, or
            ``(exit_code, reason)``. A failure replaces any row of the same slide.
        export_missing: Export masks that have no up-to-date areas CSV into ``export_dir`` first (otherwise
            such a mask gives a failed row that says to run ``wsiseg export``).
        min_tissue_mm2: Flag ``low_tissue`` below this tissue area (mm^2).
        min_tissue_share: Without mpp, flag ``low_tissue`` below this tissue share of the mask.

    Returns:
        Rows (dicts with the same keys in the same order), ready for :func:`write_cohort_table`.

    Raises:
        DataError: If ``pred_dir`` is not a folder.
    """
    if not pred_dir.is_dir():
        msg = f"{pred_dir} is not a folder; pass the --out folder of 'wsiseg predict'"
        raise DataError(msg)
    export_dir = pred_dir if export_dir is None else export_dir
    rows: dict[str, Row] = {}
    for mask in find_masks(pred_dir):
        stem = mask.name.split(".")[0]
        try:
            rows[stem] = _mask_row(mask, export_dir, export_missing=export_missing,
                                   min_tissue_mm2=min_tissue_mm2, min_tissue_share=min_tissue_share)  # fmt: skip
        except WsisegError as err:
            rows[stem] = _failed_row(stem, str(err), err.exit_code, mask=mask)
    for key, value in (failures or {}).items():
        code, reason = value if isinstance(value, tuple) else (None, value)
        stem = key if key in rows else _slide_id(key)
        rows[stem] = _failed_row(stem, reason, code, slide_path=key if key != stem else "")
    return _complete([rows[k] for k in sorted(rows)])


def write_cohort_table(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    """Write ``cohort.csv`` and ``cohort.parquet`` into ``out_dir`` (created if needed), each atomically.

    CSV cells: empty = unknown, floats with 10 significant digits, flags ``True``/``False``. Parquet columns are
    typed: float64 areas, fractions and ratios, bool flags, int64 exit codes, strings otherwise; the file's
    metadata carries the TSR definition and the wsiseg version.

    Returns:
        ``[cohort.csv, cohort.parquet]``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _complete(list(rows))
    columns = list(rows[0]) if rows else [*_IDENTITY, *_QC]
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out_dir / "cohort.csv", out_dir / "cohort.parquet"
    with atomic_output(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([_cell(row[c]) for c in columns] for row in rows)
    arrow_types = {"float": pa.float64(), "bool": pa.bool_(), "int": pa.int64(), "str": pa.string()}
    arrays, types = [], []
    for col in columns:
        kind = column_kind(col, [row[col] for row in rows])
        types.append(pa.field(col, arrow_types[kind]))
        arrays.append(pa.array([_as_kind(row[col], kind) for row in rows], type=arrow_types[kind]))
    meta = {b"tsr_definition": TSR_DEFINITION.encode(), b"wsiseg_version": __version__.encode()}
    table = pa.Table.from_arrays(arrays, schema=pa.schema(types, metadata=meta))
    with atomic_output(parquet_path) as tmp:
        pq.write_table(table, tmp)
    return [csv_path, parquet_path]


def column_kind(name: str, values: Iterable[Any]) -> str:
    """``float``, ``bool``, ``int`` or ``str``: the type a cohort column is stored as (and sorted by)."""
    if name in _BOOL_COLUMNS:
        return "bool"
    if name in _FLOAT_COLUMNS or name.endswith(_FLOAT_SUFFIXES):
        return "float"
    present = [v for v in values if v is not None]
    if name == "exit_code" or (present and all(isinstance(v, int) and not isinstance(v, bool) for v in present)):
        return "int"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    return "str"


def _as_kind(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "float":
        return _number(value)
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return value if isinstance(value, str) else json.dumps(value)


def _mask_row(mask: Path, export_dir: Path, *, export_missing: bool, min_tissue_mm2: float,
              min_tissue_share: float) -> Row:  # fmt: skip
    stem = mask.name.split(".")[0]
    meta = _read_json(sidecar_path(mask))
    meta = meta if isinstance(meta, dict) else {}
    prov: dict[str, Any] = meta["provenance"] if isinstance(meta.get("provenance"), dict) else {}
    areas_csv, overlay = export_dir / f"{stem}_areas.csv", export_dir / f"{stem}_overlay.png"
    if export_missing and not _is_fresh(areas_csv, mask):
        from wsiseg.export.report import export_mask

        slide = Path(str(prov.get("slide", "")))
        export_mask(mask, export_dir, slide=slide if prov.get("slide") and slide.is_file() else None)
    if not areas_csv.is_file():
        msg = f"{mask}: no {areas_csv.name} in {export_dir}; run 'wsiseg export' on the mask first"
        raise DataError(msg)
    classes, tissue, extras, all_px = _read_areas(areas_csv)
    row: Row = {"slide": stem, "status": "ok", "failure": "", "exit_code": None, "mask": str(mask),
                "overlay": str(overlay) if overlay.is_file() else None, "slide_path": prov.get("slide")}  # fmt: skip
    names = [*MAIN_CLASSES, *(n for n in classes if n not in MAIN_CLASSES)]
    for name in names:
        row[f"{name}_um2"] = _number(classes.get(name, {}).get("area_um2"))
        row[f"{name}_mm2"] = _number(classes.get(name, {}).get("area_mm2"))
    row.update(tissue_um2=_number(tissue.get("area_um2")), tissue_mm2=_number(tissue.get("area_mm2")),
               tissue_px_level0=_number(tissue.get("area_px_level0")))  # fmt: skip
    for name in names:
        row[f"{name}_fraction"] = _number(classes.get(name, {}).get("tissue_fraction"))
    tissue_px = _number(tissue.get("pixels")) or 0.0
    row.update(tsr=_number(tissue.get("stroma_fraction")), tumor_per_stroma=_number(tissue.get("tumor_stroma_ratio")),
               tissue_share=tissue_px / all_px if all_px else None)  # fmt: skip
    note = tissue.get("note", "")
    mm2 = row["tissue_mm2"]
    low = mm2 < min_tissue_mm2 if mm2 is not None else (row["tissue_share"] or 0.0) < min_tissue_share
    flags = {
        "mpp_assumed": note == ASSUMED_MPP_NOTE or prov.get("mpp_source") in {"assumed", "override"},
        "no_mpp": note == NO_MPP_NOTE or mm2 is None,
        "low_tissue": low,
        "not_he": bool(prov.get("stain_note")),
        "failed": False,
    }
    row["qc"] = ";".join(k for k, v in flags.items() if v)
    row.update(flags)
    row.update(_provenance({**extras, **_flatten(prov), "wsiseg_version": meta.get("wsiseg_version")}))
    return row


def _failed_row(stem: str, reason: str, code: int | None, *, mask: Path | None = None, slide_path: str = "") -> Row:
    return {"slide": stem, "status": "failed", "failure": reason, "exit_code": code,
            "mask": str(mask) if mask else None, "overlay": None, "slide_path": slide_path or None,
            "qc": "failed", "failed": True}  # fmt: skip


def _provenance(flat: Mapping[str, Any]) -> Row:
    """Canonical provenance columns (by alias), then every other flattened field under its own name."""
    out: Row = {}
    used = set(_SKIP_PROVENANCE)
    for column, aliases in PROVENANCE_ALIASES.items():
        key = next((a for a in aliases if flat.get(a) not in (None, "")), None)
        out[column] = flat[key] if key else None
        used.update(aliases)
    out.update((k, v) for k, v in sorted(flat.items()) if k not in used and k not in out)
    for column in ("epsilon", "delta"):
        out[column] = _number(out[column])
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Row:
    """Nested dicts joined by ``_`` (``{"privacy": {"epsilon": 3}}`` -> ``privacy_epsilon``); lists as JSON."""
    out: Row = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}_"))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else value
    return out


def _read_areas(path: Path) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, Any], float]:
    """Tissue-class rows by name, the ``tissue`` row, its extra (provenance) columns, and the mask's pixels."""
    from dataclasses import fields

    from wsiseg.export.stats import AreaRow

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        msg = f"cannot read {path}: {err}; run 'wsiseg export' on the mask again"
        raise DataError(msg) from err
    tissue = next((r for r in records if r.get("class_id") == "" and r.get("class_name") == "tissue"), None)
    if tissue is None or "area_px_level0" not in tissue:
        msg = f"{path} is not an areas CSV of 'wsiseg export' (no tissue row); run 'wsiseg export' on the mask again"
        raise DataError(msg)
    classes = {r["class_name"].lower(): r for r in records if r.get("class_id") not in ("", "0", None)}
    known = {f.name for f in fields(AreaRow)} | {"slide"}
    extras: dict[str, Any] = {}
    for key, value in tissue.items():
        if key in known or value in (None, ""):
            continue
        parsed = _read_json_text(value) if value.startswith("{") else None
        extras.update(_flatten(parsed, f"{key}_") if isinstance(parsed, dict) else {key: value})
    all_px = sum(_number(r.get("pixels")) or 0.0 for r in records if r.get("class_id") not in ("", None))
    return classes, tissue, extras, all_px


def _complete(rows: list[Row]) -> list[Row]:
    """Give every row every column, in one order: identity, areas, fractions, ratios, QC, provenance."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    classes = [*MAIN_CLASSES, *(k[:-4] for k in seen if k.endswith("_um2") and k[:-4] not in (*MAIN_CLASSES, "tissue"))]
    order = [*_IDENTITY, *(f"{c}_{u}" for c in classes for u in ("um2", "mm2")), "tissue_um2", "tissue_mm2",
             "tissue_px_level0", *(f"{c}_fraction" for c in classes), "tsr", "tumor_per_stroma", "tissue_share",
             *_QC, *PROVENANCE_ALIASES]  # fmt: skip
    order += [k for k in seen if k not in order]
    return [{c: row.get(c) for c in order} for row in rows]


def _is_fresh(output: Path, source: Path) -> bool:
    try:
        return output.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except OSError:
        return False


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> Any:
    try:
        return _read_json_text(path.read_text(encoding="utf-8"))
    except OSError:
        return None


def _read_json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _slide_id(key: str) -> str:
    from wsiseg.tiling.writer import slide_id_for

    return slide_id_for(Path(key)) if os.sep in key or "." in key else key
