"""Units of privacy for sample-level DP: which tiles belong to one tile, one slide or one patient.

DP-SGD protects one *unit*: every tile of a unit is clipped together, so adding or removing the unit moves a
step's noised sum by at most ``C``. ``tile`` protects one tile (a patient with many tiles is protected only by
group privacy), ``slide`` one slide, ``patient`` every slide of one patient, from a slide -> patient table the
user gives (CSV with columns ``slide`` and ``patient``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from wsiseg.data.dataset import TileSource
from wsiseg.errors import PrivacyError

__all__ = ["PRIVACY_UNITS", "PrivacyUnit", "load_patient_table", "unit_groups"]

#: ``--privacy-unit``: what one DP-SGD guarantee protects.
PrivacyUnit = Literal["tile", "slide", "patient"]
PRIVACY_UNITS: tuple[str, ...] = get_args(PrivacyUnit)  # the same as wsiseg.federated.modes.PRIVACY_UNITS


def load_patient_table(path: str | Path) -> dict[str, str]:
    """Read a slide -> patient table (CSV with a header holding ``slide`` and ``patient``).

    Slide names may be given with or without their file extension.

    Raises:
        PrivacyError: A missing or unreadable file, missing columns, an empty cell or a slide listed twice
            with two patients.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "slide" not in fields or "patient" not in fields:
                msg = f"{path}: the patient table needs a header with columns 'slide' and 'patient', got {fields}"
                raise PrivacyError(msg)
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        msg = f"{path}: cannot read the patient table ({err}); give a CSV with columns slide,patient"
        raise PrivacyError(msg) from err
    table: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        slide, patient = row.get("slide", ""), row.get("patient", "")
        if not slide or not patient:
            msg = f"{path}: line {line} has an empty slide or patient; every slide needs its patient"
            raise PrivacyError(msg)
        if table.get(slide, patient) != patient:
            msg = f"{path}: slide {slide!r} is listed with two patients ({table[slide]!r} and {patient!r})"
            raise PrivacyError(msg)
        table[slide] = patient
    return table


def _patient_of(slide_key: str, slide_id: str, table: Mapping[str, str]) -> str | None:
    for name in (slide_key, slide_id, Path(slide_id).stem):
        if name in table:
            return table[name]
    stems = {Path(k).stem: v for k, v in table.items()}
    return stems.get(slide_id, stems.get(Path(slide_id).stem))


def unit_groups(
    source: TileSource, unit: str, *, patients: Mapping[str, str] | None = None, table_name: str = "--patients"
) -> list[list[int]]:
    """Indices of ``source.records`` grouped by privacy unit (groups in a stable order).

    Args:
        source: The site's training tiles.
        unit: ``tile``, ``slide`` or ``patient``.
        patients: Slide -> patient table (needed for ``patient``).
        table_name: How the table is named in errors (its path).

    Raises:
        PrivacyError: An unknown unit, no table for ``patient``, or slides missing from the table.
    """
    if unit not in PRIVACY_UNITS:
        msg = f"--privacy-unit must be one of {', '.join(PRIVACY_UNITS)}, got {unit!r}"
        raise PrivacyError(msg)
    if unit == "tile":
        return [[i] for i in range(len(source.records))]
    if unit == "patient" and patients is None:
        msg = "--privacy-unit patient needs --patients TABLE.csv (columns slide,patient)"
        raise PrivacyError(msg)
    groups: dict[str, list[int]] = {}
    missing: set[str] = set()
    for i, (root, rec) in enumerate(source.records):
        key = source.key(root, rec)
        if unit == "slide":
            groups.setdefault(key, []).append(i)
            continue
        patient = _patient_of(key, rec.slide_id, patients or {})
        if patient is None:
            missing.add(key)
        else:
            groups.setdefault(patient, []).append(i)
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
        msg = f"{table_name}: {len(missing)} slide(s) have no patient ({shown}); add them to the table"
        raise PrivacyError(msg)
    return [groups[k] for k in sorted(groups)]
