"""Run folders: a new folder per run, the resolved config, CSV logs, JSON records and learning-curve plots.

:class:`RunFolder` is the one object that ``train``, ``fed-train`` and the Flower server use for their run
folders: where the config, the round or epoch records, the checkpoints and the final metrics go, and whether
the folder is private (owner-only, as every federated run folder is).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsiseg.config import to_toml
from wsiseg.fileio import atomic_output, atomic_write_text

__all__ = ["CsvLog", "RunFolder", "latest_run", "new_run_dir", "plot_curves", "write_config"]


def new_run_dir(root: Path, kind: str, name: str | None = None, *, private: bool = False) -> Path:
    """Create ``root/<YYYYmmdd-HHMMSS>-<kind>`` (or ``root/name``) and return it; never reuses a folder.

    ``private`` makes the folder owner-only (0700): federated runs keep resume state and logs there.
    """
    root.mkdir(parents=True, exist_ok=True)
    base = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    path.mkdir(mode=0o700 if private else 0o777)
    if private:
        path.chmod(0o700)
    return path


def latest_run(root: Path, checkpoint: str = "final") -> Path | None:
    """Return the newest run folder under ``root`` that has ``checkpoints/<checkpoint>.json``."""
    if not root.is_dir():
        return None
    runs = [p for p in root.iterdir() if (p / "checkpoints" / f"{checkpoint}.json").is_file()]
    return max(runs, key=lambda p: (p / "checkpoints" / f"{checkpoint}.json").stat().st_mtime, default=None)


def write_config(run_dir: Path, config: dict[str, Any], *, private: bool = False) -> Path:
    """Write the resolved config as ``config.toml`` (atomic; owner-only with ``private``)."""
    return atomic_write_text(run_dir / "config.toml", to_toml(config), private=private)


class CsvLog:
    """Append rows to a CSV, keeping the header of the first row; safe to reopen after a resume."""

    def __init__(self, path: Path, *, keep_until: tuple[str, float] | None = None) -> None:
        """Open ``path``; ``keep_until=(column, value)`` drops existing rows whose column exceeds value."""
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.fields = list(reader.fieldnames or [])
                rows = list(reader)
            if keep_until is not None:
                col, limit = keep_until
                rows = [r for r in rows if r.get(col) and float(r[col]) <= limit]
                self._rewrite(rows)

    def _rewrite(self, rows: Sequence[dict[str, Any]]) -> None:
        with atomic_output(self.path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields or [])
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row (floats written with 6 significant digits)."""
        clean = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        new = self.fields is None
        fields = self.fields = list(clean) if self.fields is None else self.fields
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(clean)

    def rows(self) -> list[dict[str, str]]:
        """All rows as strings."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))


def plot_curves(path: Path, rows: list[dict[str, str]], x: str, panels: list[tuple[str, list[str]]]) -> None:
    """Plot columns of logged rows against ``x``, one panel per ``(title, columns)``, to a PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, cols) in zip(axes[0], panels, strict=True):
        for col in cols:
            pts = [(float(r[x]), float(r[col])) for r in rows if r.get(col) not in (None, "", "nan")]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=col)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


@dataclass(frozen=True)
class RunFolder:
    """A run folder and what goes in it.

    Attributes:
        path: The folder.
        private: Owner-only folder and files (federated runs: resume state, seeds, per-client logs).
    """

    path: Path
    private: bool = False

    @classmethod
    def create(cls, root: Path, kind: str, *, private: bool = False) -> RunFolder:
        """A new ``root/<YYYYmmdd-HHMMSS>-<kind>`` folder (never an existing one)."""
        return cls(new_run_dir(root, kind, private=private), private)

    @classmethod
    def existing(cls, path: Path, *, private: bool = False) -> RunFolder:
        """An existing run folder (``--resume``), created if missing; owner-only again when ``private``."""
        if private:
            from wsiseg.fileio import private_dir

            private_dir(path)
        else:
            path.mkdir(parents=True, exist_ok=True)
        return cls(path, private)

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>`` (the checkpoint writer adds the suffixes)."""
        return self.path / "checkpoints" / name

    def write_config(self, config: dict[str, Any]) -> Path:
        """The resolved settings as ``config.toml``."""
        return write_config(self.path, config, private=self.private)

    def write_json(self, name: str, data: Any) -> Path:
        """A JSON record (``metrics.json``, ``split.json``, ``result.json``), atomically."""
        return atomic_write_text(self.path / name, json.dumps(data, indent=2, default=_plain), private=self.private)

    def log(self, name: str, *, keep_until: tuple[str, float] | None = None) -> CsvLog:
        """A CSV log in the folder (rows after ``keep_until`` dropped, for a resume)."""
        return CsvLog(self.path / name, keep_until=keep_until)


def _plain(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)
