"""The cohort report in a real browser: Debian's headless Chromium, driven by Playwright, opening the page from disk.

``make test`` installs Chromium (apt-get) when it is missing; the test skips only where it could not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wsiseg.export.cohort import build_cohort_table
from wsiseg.export.cohort_report import write_cohort_report

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# quiet on a machine without network: no first-run, sync, update or QUIC traffic, a fresh profile per test
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 900}


def _rows_text(page: Any) -> list[str]:
    return page.eval_on_selector_all("#cohort tbody tr", "rs => rs.map(r => r.cells[0].textContent)")


def _gallery_text(page: Any) -> list[str]:
    return page.eval_on_selector_all("#gallery figure", "fs => fs.map(f => f.querySelector('b').textContent)")


def _expected(rows: list[dict[str, Any]], col: str, *, reverse: bool) -> list[str]:
    known = sorted((r for r in rows if r[col] is not None), key=lambda r: r[col], reverse=reverse)
    return [r["slide"] for r in known] + [r["slide"] for r in rows if r[col] is None]  # empty cells last


def test_report_in_headless_chromium(cohort_outputs: Any, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed: `make test` installs it (apt-get install chromium)")
    rows = build_cohort_table(cohort_outputs.pred_dir, export_dir=tmp_path / "exp", min_tissue_mm2=0.01,
                              failures={"/data/broken.svs": (3, "cannot open /data/broken.svs")})  # fmt: skip
    page_path = write_cohort_report(rows, tmp_path / "report")
    problems: list[str] = []
    requests: list[str] = []
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=ARGS, viewport=VIEWPORT)  # fmt: skip
        try:
            page = ctx.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            # the gallery: one loaded image per segmented slide, and the HTML-named slide shown as text
            sizes = page.eval_on_selector_all("#gallery img", "is => is.map(i => [i.complete, i.naturalWidth])")
            assert len(sizes) == 4
            assert all(done and width > 0 for done, width in sizes), sizes
            assert page.locator("img").count() == 4  # no element injected by a slide name
            assert cohort_outputs.hostile in _gallery_text(page)
            assert page.locator("#tsr-histogram rect.bar").count() == 10
            # sorting: table rows and gallery cards follow a header click; a second click reverses
            assert _rows_text(page) == [r["slide"] for r in rows]
            for col, label in (("tsr", "tsr"), ("tumor_mm2", "tumor mm²")):
                button = page.locator("#cohort th button", has_text=label).first
                button.click()
                assert _rows_text(page) == _expected(rows, col, reverse=False)
                assert _gallery_text(page) == _rows_text(page)
                button.click()
                assert _rows_text(page) == _expected(rows, col, reverse=True)
                assert _gallery_text(page) == _rows_text(page)
                assert _rows_text(page) != _expected(rows, col, reverse=False)
            page.locator("#cohort th button", has_text="status").first.click()
            assert _rows_text(page)[0] == "broken"  # "failed" before "ok"
            page.screenshot(path=str(shot))
        finally:
            ctx.close()
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # nothing from the network
    with Image.open(shot) as img:
        assert img.format == "PNG"
        assert img.size == (VIEWPORT["width"], VIEWPORT["height"])
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # thumbnails, text and chart, not a blank page
