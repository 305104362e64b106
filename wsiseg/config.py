"""Small helpers for experiment configuration: TOML in and out, device choice, package versions.

The flow is TOML file -> dataclass -> CLI overrides; the resolved config is written into every run folder.
"""

from __future__ import annotations

import json
import math
import platform
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from wsiseg.errors import ConfigError

__all__ = ["checked_kwargs", "load_toml", "package_versions", "resolve_device", "to_toml"]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    msg = f"cannot write {type(v).__name__} to TOML"
    raise ConfigError(msg)


def to_toml(data: dict[str, Any], _prefix: str = "") -> str:
    """Serialise a dict of scalars, lists and nested dicts (tables) to TOML; ``None`` values are omitted."""
    lines = [f"{k} = {_value(v)}" for k, v in data.items() if v is not None and not isinstance(v, dict)]
    for key, val in data.items():
        if isinstance(val, dict):
            name = f"{_prefix}.{key}" if _prefix else key
            lines.extend(["", f"[{name}]", to_toml(val, name).rstrip("\n")])
    return "\n".join(lines).strip() + "\n"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; keys in kebab-case are turned into snake_case.

    Raises:
        ConfigError: If the file is missing or not valid TOML.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        msg = f"{p}: config file not found"
        raise ConfigError(msg) from err
    except tomllib.TOMLDecodeError as err:
        msg = f"{p}: invalid TOML ({err})"
        raise ConfigError(msg) from err
    return _snake(data)


def _snake(data: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("-", "_"): _snake(v) if isinstance(v, dict) else v for k, v in data.items()}


def resolve_device(device: str = "auto") -> str:
    """Return ``"cuda"`` when asked for and available (``auto`` prefers CUDA), else ``"cpu"``.

    Raises:
        ConfigError: If CUDA is requested explicitly but not available.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = f"--device {device} requested but CUDA is not available; use --device cpu or auto"
        raise ConfigError(msg)
    if device not in {"cpu"} and not device.startswith("cuda"):
        msg = f"unknown device {device!r}; use auto, cpu or cuda[:N]"
        raise ConfigError(msg)
    return device


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results, for checkpoint cards and run folders."""
    out = {"python": platform.python_version()}
    for name in ("wsiseg", "torch", "torchvision", "timm", "numpy", "pillow", "dp-accounting", "flwr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def checked_kwargs(cls: type, data: dict[str, Any], what: str, tuples: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from ``data``: unknown keys are an error, list fields become tuples.

    Raises:
        ConfigError: Unknown keys (the message names them and the known ones).
    """
    import dataclasses
    import typing

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        msg = f"unknown {what} settings {unknown}; known: {sorted(names)}"
        raise ConfigError(msg)
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        expected = _type_name(hints.get(key), value)
        if expected:
            msg = (
                f"{what} setting {key} = {value!r} must be {expected}; fix it in the config file or on the command line"
            )
            raise ConfigError(msg)
    return {k: tuple(v) if k in tuples else v for k, v in data.items()}


def _type_name(hint: Any, value: Any) -> str:
    """``""`` when ``value`` fits the annotation ``hint`` (as TOML gives values), else what it must be."""
    import types
    import typing

    if hint is None or hint is Any:
        return ""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        wrong = [_type_name(h, value) for h in options]
        return "" if "" in wrong else " or ".join(dict.fromkeys(wrong))
    if hint is type(None):
        return "" if value is None else "empty"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    if hint in simple:
        fits = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str),
        }[hint]
        return "" if fits else simple[hint]
    if origin in (tuple, list):
        return "" if isinstance(value, list | tuple) else "a list"
    if origin is dict or hint is dict:
        return "" if isinstance(value, dict) else "a table"
    return ""
