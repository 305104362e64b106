"""Property-based fuzzing of the parsers users feed: every input ends in success or a ``WsisegError``.

Targets: QuPath GeoJSON, ASAP XML, label images (PNG/TIFF, any mode and size), tile manifests, checkpoint
cards, TOML run configs and CLI values. An unhandled exception fails the test (hypothesis shrinks it to a
minimal input); a failing CLI run must leave no file under a final output name.

CI runs a seeded, bounded set (``derandomize=True``, :data:`FAST` examples a target, well under a minute on
2 cores); ``pytest -m slow tests/robustness/test_fuzz.py`` runs :data:`SLOW` examples a target. The counts
(inputs generated, outcomes by error class, unhandled) are printed at the end of the session.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import string
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wsiseg.errors import WsisegError

FAST, SLOW = 60, 3000
COUNTS: dict[str, Counter[str]] = {}

json_scalars = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)
numbers = (
    st.integers(-5, 2000)
    | st.floats(-10, 2000)
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | st.text(max_size=3)
)
points = st.lists(st.lists(numbers, min_size=0, max_size=3), max_size=8)
geometry = st.fixed_dictionaries(
    {"type": st.sampled_from(["Polygon", "MultiPolygon", "GeometryCollection", "Point", "LineString", 7, None])},
    optional={
        "coordinates": st.one_of(
            st.lists(points, max_size=3), st.lists(st.lists(points, max_size=2), max_size=2), json_values
        ),
        "geometries": st.lists(json_values, max_size=2) | json_values,
    },
)
properties = st.one_of(
    st.none(),
    json_values,
    st.fixed_dictionaries(
        {
            "classification": st.one_of(
                st.sampled_from(["Tumor", "stroma", "normal", "x"]),
                json_values,
                st.fixed_dictionaries({"name": st.sampled_from(["tumor", "Stroma", "?"])}),
            )
        }
    ),
)
feature = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("Feature")}, optional={"geometry": geometry | json_values, "properties": properties}
    ),
    json_values,
)
geojson = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("FeatureCollection"), "features": st.lists(feature, max_size=4) | json_values}
    ),
    st.lists(feature, max_size=4),
    feature,
    json_values,
)


def _outcome(target: str, call: Callable[[], object]) -> None:
    """Run ``call``; count ``ok`` or the ``WsisegError`` subclass. Anything else propagates (a failure)."""
    counts = COUNTS.setdefault(target, Counter())
    counts["generated"] += 1
    try:
        call()
    except WsisegError as err:
        counts[type(err).__name__] += 1
        if "\n" in str(err).strip():
            raise AssertionError(f"{target}: a multi-line message: {err}") from err
    except BaseException as err:
        counts["UNHANDLED"] += 1
        raise AssertionError(f"{target}: unhandled {type(err).__name__}: {err}") from err
    else:
        counts["ok"] += 1


def _both(
    prop: Callable[..., None], *strategies: Any, fast_n: int = FAST, slow_n: int = SLOW
) -> tuple[Callable[..., None], Callable[..., None]]:
    """A CI test (seeded, ``fast_n`` examples) and a slow one (``slow_n`` random examples) of one property."""
    common: dict[str, Any] = {
        "deadline": None,
        "database": None,
        "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    }
    fast = settings(max_examples=fast_n, derandomize=True, **common)(given(*strategies)(prop))
    slow = settings(max_examples=slow_n, derandomize=False, **common)(given(*strategies)(prop))
    return fast, pytest.mark.slow(slow)


WORK = Path(tempfile.mkdtemp(prefix="wsiseg-fuzz-"))  # one scratch folder, rewritten by every example


# --- GeoJSON ---------------------------------------------------------------------------------------------------
def _geojson(data: Any, size: tuple[int, int]) -> None:
    from wsiseg.tiling.annotation_io import rasterize_geojson

    path = WORK / "a.geojson"
    path.write_text(json.dumps(data, allow_nan=True))
    _outcome("GeoJSON", lambda: rasterize_geojson(path, level0_size=size, downsample=4.0))


sizes = st.tuples(st.integers(-2, 3000), st.integers(-2, 3000))
test_fuzz_geojson, test_fuzz_geojson_slow = _both(_geojson, geojson, sizes)


# --- ASAP XML --------------------------------------------------------------------------------------------------
attr = st.text(alphabet=string.ascii_letters + string.digits + ".,-_ ", max_size=6)
coordinate = st.builds(
    lambda o, x, y: f"<Coordinate{o}{x}{y}/>",
    st.sampled_from(["", ' Order="0"', ' Order="x"', ' Order="3"']).map(str) | attr.map(lambda a: f' Order="{a}"'),
    st.one_of(st.just(""), numbers.map(lambda v: f' X="{v}"'), attr.map(lambda a: f' X="{a}"')),
    st.one_of(st.just(""), numbers.map(lambda v: f' Y="{v}"'), attr.map(lambda a: f' Y="{a}"')),
)
annotation = st.builds(
    lambda kind, group, coords: (
        f'<Annotation Name="a" Type="{kind}" PartOfGroup="{group}"><Coordinates>'
        f"{''.join(coords)}</Coordinates></Annotation>"
    ),
    st.sampled_from(["Polygon", "Spline", "Rectangle", "Dot", "x"]),
    st.sampled_from(["tumor", "stroma", "None", "_2", ""]),
    st.lists(coordinate, max_size=6),
)
asap = st.one_of(
    st.lists(annotation, max_size=4).map(
        lambda a: f"<ASAP_Annotations><Annotations>{''.join(a)}</Annotations></ASAP_Annotations>"
    ),
    st.text(max_size=60),
    st.sampled_from(["<ASAP_Annotations>", "<Other/>", "", "<?xml version='1.0'?><ASAP_Annotations/>"]),
)


def _asap(text: str, size: tuple[int, int]) -> None:
    from wsiseg.tiling.annotation_io import rasterize_asap_xml

    path = WORK / "a.xml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _outcome("ASAP XML", lambda: rasterize_asap_xml(path, level0_size=size, downsample=4.0))


test_fuzz_asap, test_fuzz_asap_slow = _both(_asap, asap, sizes)


# --- label images ----------------------------------------------------------------------------------------------
@st.composite
def label_files(draw: st.DrawFn) -> tuple[bytes, str]:
    """A label image file: mode, size, values, palette and format drawn; sometimes a truncated copy."""
    kind = draw(st.sampled_from(["L", "P", "P-wsss", "I;16", "RGB", "1", "tiff8", "tiff16", "tiff-rgb", "junk"]))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    values = np.asarray(draw(st.lists(st.integers(0, 7), min_size=h * w, max_size=h * w)), dtype=np.uint8)
    values = values.reshape(h, w)
    buf = io.BytesIO()
    suffix = ".png"
    if kind == "junk":
        return draw(st.binary(max_size=64)), draw(st.sampled_from([".png", ".tif"]))
    if kind.startswith("tiff"):
        suffix = ".tif"
        array = {"tiff8": values, "tiff16": values.astype(np.uint16) * 300, "tiff-rgb": np.dstack([values] * 3)}[kind]
        tifffile.imwrite(buf, array)
    else:
        mode = "P" if kind.startswith("P") else kind
        img = Image.fromarray(values if mode != "RGB" else np.dstack([values] * 3)).convert(mode)
        if mode == "P":
            pal = (
                [0, 64, 128, 64, 128, 0, 243, 152, 0]
                if kind == "P-wsss"
                else draw(st.lists(st.integers(0, 255), min_size=9, max_size=9))
            )
            img.putpalette(pal + [255] * 6)
        img.save(buf, format="PNG")
    data = buf.getvalue()
    if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data, suffix


def _label_image(file: tuple[bytes, str], size: tuple[int, int], palette: str) -> None:
    from wsiseg.export.maskio import read_label_mask
    from wsiseg.tiling.label_images import load_label_image

    data, suffix = file
    path = WORK / f"label{suffix}"
    path.write_bytes(data)
    tile_palette: Any = palette
    _outcome("label image (tile)", lambda: load_label_image(path, level0_size=size, palette=tile_palette))
    _outcome("label image (export)", lambda: read_label_mask(path))


test_fuzz_label_images, test_fuzz_label_images_slow = _both(
    _label_image, label_files(), st.tuples(st.integers(1, 100), st.integers(1, 100)),
    st.sampled_from(["auto", "ids", "wsss4luad"]),
)  # fmt: skip


# --- tile manifests --------------------------------------------------------------------------------------------
def _valid_manifest() -> dict[str, Any]:
    return {
        "format": "wsiseg-tiles",
        "version": 1,
        "settings": {"window": 200, "stride": 100, "size": 32},
        "classes": [{"id": 0, "name": "background", "color": [255, 255, 255]}],
        "slides": [
            {
                "id": "a",
                "source": "a.png",
                "dimensions": [400, 300],
                "mpp": None,
                "window_level0": 200,
                "stride_level0": 100,
                "level": 0,
                "read_size": 200,
                "n_windows": 6,
                "n_tiles": 2,
            }
        ],
    }


@st.composite
def manifests(draw: st.DrawFn) -> Any:
    """A valid manifest with some entries replaced by fuzzed values (or wholly fuzzed JSON)."""
    if draw(st.integers(0, 5)) == 0:
        return draw(json_values)
    data = _valid_manifest()
    parts = {"top": data, "settings": data["settings"], "slide": data["slides"][0], "class": data["classes"][0]}
    for _ in range(draw(st.integers(0, 3))):
        target = parts[draw(st.sampled_from(sorted(parts)))]  # the original objects, wherever they now hang
        key = draw(st.sampled_from([*target.keys(), "extra"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    return data


def _manifest(data: Any, csv_text: str) -> None:
    from wsiseg.tiling.manifest import load_manifest

    folder = WORK / "ds"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(data, allow_nan=True))
    (folder / "tiles.csv").write_text(csv_text)
    _outcome("tile manifest", lambda: load_manifest(folder))


csv_texts = st.one_of(
    st.just("slide_id,image,mask,x,y,level,read_size,window_level0,tissue,mpp,site\na,a/i.jpg,,0,0,0,200,200,0.5,,\n"),
    st.text(max_size=80),
    st.just(""),
)
test_fuzz_manifest, test_fuzz_manifest_slow = _both(_manifest, manifests(), csv_texts)


# --- checkpoint cards ------------------------------------------------------------------------------------------
@st.composite
def cards(draw: st.DrawFn) -> Any:
    card: dict[str, Any] = {
        "format": "wsiseg-checkpoint",
        "version": 1,
        "model": {"name": "unet_tiny", "args": {}},
        "classes": [
            {"id": 0, "name": "background", "color": [255, 255, 255]},
            {"id": 1, "name": "tumor", "color": [0, 64, 128]},
        ],
        "tiling": {"window": 1000, "stride": 500, "size": 224},
    }
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["format", "version", "model", "classes", "tiling", "extra"]))
        card[key] = draw(json_values | st.lists(st.fixed_dictionaries({"id": json_values, "name": st.text(max_size=12),
                                                                       "color": json_values}), max_size=3))  # fmt: skip
    return card if draw(st.integers(0, 6)) else draw(json_values)


def _card(data: Any) -> None:
    from wsiseg.train.card import ModelCard

    def use() -> None:
        card = ModelCard.from_dict(data, source="card.json")
        card.class_table.palette()
        card.tiling_config  # noqa: B018 (the property validates)

    _outcome("checkpoint card", use)


test_fuzz_card, test_fuzz_card_slow = _both(_card, cards())


# --- TOML run configs ------------------------------------------------------------------------------------------
toml_scalars = st.one_of(
    st.integers(-5, 10**4), st.floats(-5, 1e4), st.booleans(), st.text(string.ascii_letters, max_size=6)
)
toml_keys = st.sampled_from(["epochs", "batch_size", "lr", "model", "data", "seed", "dp", "sigma", "clip", "rounds",
                             "fraction", "delta", "workers", "model_args", "unknown-key", "local_epochs"])  # fmt: skip


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.text(max_size=40))
    lines = []
    for key in draw(st.lists(toml_keys, max_size=5, unique=True)):
        value = draw(toml_scalars | st.lists(toml_scalars, max_size=2))
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    return "\n".join(lines)


def _toml(text: str) -> None:
    from wsiseg.config import load_toml
    from wsiseg.federated.config import FedConfig
    from wsiseg.train.trainer import TrainConfig

    path = WORK / "run.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for label, cls in (("TOML config (train)", TrainConfig), ("TOML config (fed-train)", FedConfig)):
        # the keys of the other command are dropped half the time, so the values themselves get checked too
        keep = {f.name for f in dataclasses.fields(cls)} if len(text) % 2 else None

        def build(cls: Any = cls, keep: set[str] | None = keep) -> object:
            data = load_toml(path)
            return cls.from_dict({k: v for k, v in data.items() if keep is None or k in keep})

        _outcome(label, build)


test_fuzz_toml, test_fuzz_toml_slow = _both(_toml, toml_texts())


# --- CLI values ------------------------------------------------------------------------------------------------
cli_numbers = st.sampled_from(["0", "-1", "1", "nan", "inf", "-inf", "1e9", "abc", "", "0.5", "2"])
CLI_OPTIONS = {
    "tile": [
        "--window",
        "--stride",
        "--size",
        "--mpp",
        "--slide-mpp",
        "--min-tissue",
        "--workers",
        "--resize",
        "--format",
        "--palette",
    ],
    "export": ["--min-area", "--geojson-mpp", "--as", "--alpha"],
}
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}


@st.composite
def cli_calls(draw: st.DrawFn) -> tuple[str, list[str]]:
    command = draw(st.sampled_from(sorted(CLI_OPTIONS)))
    args: list[str] = []
    for opt in draw(st.lists(st.sampled_from(CLI_OPTIONS[command]), max_size=3, unique=True)):
        args += [opt, draw(cli_numbers | st.sampled_from(["jpg", "png", "box", "detection", "ids", "x"]))]
    return command, args


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsiseg.testing.synthetic import make_patch_image

    root = tmp_path_factory.mktemp("cli-in")
    make_patch_image(root / "p.png", size=(128, 96), seed=3)
    return root


def _cli(cli_inputs: Path, call: tuple[str, list[str]]) -> None:
    from typer.testing import CliRunner

    from wsiseg.cli import app

    command, args = call
    out = cli_inputs / "out"
    target = [str(cli_inputs / "p.png")] if command == "tile" else [str(cli_inputs / "p_mask.png")]
    res = CliRunner().invoke(app, [command, *target, "--out", str(out), *args])
    counts = COUNTS.setdefault("CLI values", Counter())
    counts["generated"] += 1
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        counts["UNHANDLED"] += 1
        raise AssertionError(f"{command} {args}: unhandled {type(res.exception).__name__}: {res.exception}")
    assert res.exit_code in DOCUMENTED, (command, args, res.output)
    counts["ok" if res.exit_code == 0 else f"exit {res.exit_code}"] += 1
    if res.exit_code not in {0, 1} and out.exists():
        assert not _final_files(out), (command, args, _final_files(out))
    if out.exists():
        shutil.rmtree(out)


def _final_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*") if p.is_file())


def test_fuzz_cli(cli_inputs: Path) -> None:
    fast, _ = _both(_cli, st.just(cli_inputs), cli_calls(), fast_n=25)
    fast()


@pytest.mark.slow
def test_fuzz_cli_slow(cli_inputs: Path) -> None:
    _, slow = _both(_cli, st.just(cli_inputs), cli_calls(), slow_n=400)
    slow()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = ["fuzz counts (target: generated; outcomes):"]
    total = Counter[str]()
    for target, counts in sorted(COUNTS.items()):
        outcome = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "generated")
        lines.append(f"  {target}: {counts['generated']} generated; {outcome}")
        total.update(counts)
    lines.append(f"  all: {total['generated']} generated, {total['UNHANDLED']} unhandled")
    shutil.rmtree(WORK, ignore_errors=True)
    request.config._wsiseg_fuzz_report = lines  # type: ignore[attr-defined]  # printed by conftest's summary hook
