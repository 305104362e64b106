"""The data flow runs one way (ARCHITECTURE.md): a package imports only from packages above it.

slide -> tiling -> data -> models -> train -> privacy -> federated -> inference -> export -> cli, with the
shared base modules (errors, config, classes, fileio) importing none of them. Only ``wsiseg/slide`` imports a
slide reader and only ``wsiseg/federated/flower`` imports Flower. The import graph is read from the source
with ``ast``, so lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ORDER = ["slide", "tiling", "data", "models", "train", "privacy", "federated", "audit", "inference", "export", "cli"]
BASE = ("errors", "config", "classes", "fileio")
ROOT = Path(__file__).resolve().parents[2] / "wsiseg"


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _modules() -> list[tuple[Path, tuple[str, ...]]]:
    return [(p, p.relative_to(ROOT).with_suffix("").parts) for p in sorted(ROOT.rglob("*.py"))]


def test_packages_import_only_from_packages_above_them() -> None:
    bad = []
    for path, parts in _modules():
        here = parts[0]
        for mod in _imports(path):
            names = mod.split(".")
            if names[0] != "wsiseg" or len(names) < 2:
                continue
            there = names[1]
            if here in ORDER and there in ORDER and ORDER.index(there) > ORDER.index(here):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
            if here in BASE and there in ORDER:
                bad.append(f"{path.relative_to(ROOT)} (a base module) imports {mod}")
    assert not bad, "\n".join(bad)


def test_slide_readers_and_flower_stay_in_their_packages() -> None:
    bad = []
    for path, parts in _modules():
        for mod in _imports(path):
            top = mod.split(".")[0]
            if top in ("openslide", "tiffslide") and parts[0] != "slide":
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
            if top == "flwr" and parts[:2] != ("federated", "flower"):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_imports() -> None:
    """The parser finds both top-level and lazy imports (so an empty result above means something)."""
    found = _imports(ROOT / "cli" / "fed_train.py")
    assert "wsiseg.cli" in found  # top level: from wsiseg.cli import _options
    assert "wsiseg.federated.rounds" in found  # inside the command body
