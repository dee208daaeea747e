"""The evaluation report: escaped captions, relative PNG links, repeatable bytes, and a render in
headless Chromium (Playwright) with no console error, page error or failed request.

Chromium is Debian's ``/usr/bin/chromium``; without it (or Playwright) the browser test skips,
unless ``CLIPSR_REQUIRE_BROWSER=1`` (CI), where it fails.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from clipsr.evaluation import GRID_IMAGES, evaluate_batch, mismatched_captions
from clipsr.inference import SuperResolver
from jobs.eval_report import write_report
from jobs.evaluate import build_document
from tests.conftest import text_sensitive_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # Playwright gives each launch a new, empty user data dir itself
HOSTILE = '<img src=x onerror="console.error(1)"> & "quotes" </td></table>'
CAPTIONS = [HOSTILE, "a red bird on a branch", "a grey rocket <script>alert(2)</script>"]


@pytest.fixture(scope="module")
def evaluation(tiny_clip, tmp_path_factory):
    """(document, rows) of a real evaluation of three astronaut crops with hostile captions."""
    resolver = SuperResolver.from_checkpoint(
        text_sensitive_checkpoint(tiny_clip, tmp_path_factory.mktemp("ck") / "ck"), "cpu"
    )
    image = data.astronaut()
    hrs = [image[y : y + 128, x : x + 128] for y, x in ((0, 0), (100, 200), (300, 150))]
    lrs = [np.asarray(Image.fromarray(h).resize((32, 32), Image.Resampling.BICUBIC)) for h in hrs]

    def tensor(images):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1

    batch = {
        "lr": tensor(lrs),
        "hr": tensor(hrs),
        "captions": CAPTIONS,
        "keys": ["k0", "k1", "k2"],
        "scale": 4,
    }
    rows = evaluate_batch(resolver, batch, mismatched_captions(CAPTIONS), 0, 4, grid_rows=2)
    model = {"uri": "models:/clipsr-x4@champion", "name": "clipsr-x4", "version": "3", "scale": 4}
    settings = {"batch_size": 3, "crop_border": 4, "limit": 0, "lpips": False}
    return build_document(model, "ab" * 32, "test", settings, rows), rows


def _write(evaluation, out: Path) -> Path:
    doc, rows = evaluation
    return write_report(out, doc, {4: [r for r in rows if "images" in r]})


def test_report_escapes_links_relative_pngs_and_repeats(evaluation, tmp_path):
    report = _write(evaluation, tmp_path / "a")
    text = report.read_text()
    assert HOSTILE not in text and "<script>" not in text
    assert html.escape(HOSTILE, quote=True) in text
    links = re.findall(r'<img src="([^"]+)"', text)
    assert len(links) == 2 * len(GRID_IMAGES)  # grid_rows=2: the third sample has no images
    for link in links:
        assert not link.startswith(("/", "file:", "http")) and (report.parent / link).is_file()
    png = Image.open(report.parent / links[0])
    assert png.size == (128, 128)
    doc = evaluation[0]
    assert f"{doc['metrics']['x4']['psnr']:.2f}" in text
    assert f"{doc['metrics']['x4']['text_gain_psnr']:+.3f}" in text
    again = _write(evaluation, tmp_path / "b")
    assert again.read_bytes() == report.read_bytes()


def _playwright_or_skip():
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            problem = "the playwright package is missing (pip install playwright)"
    if problem:
        if os.environ.get("CLIPSR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CLIPSR_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return sync_playwright


def test_report_renders_in_chromium_without_errors(evaluation, tmp_path):
    sync_playwright = _playwright_or_skip()
    report = _write(evaluation, tmp_path / "report")
    problems: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(report.as_uri(), wait_until="load")
            loaded = page.evaluate(
                "Array.from(document.images).map(i => i.complete && i.naturalWidth)"
            )
            title = page.title()
            tables = page.locator("table").count()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert loaded == [128] * (2 * len(GRID_IMAGES))
    # metrics, caption ablation, image grid, and the table of every sample
    assert title == "clipsr evaluation: clipsr-x4 version 3" and tables == 4
    assert shot.stat().st_size > 20_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] > 800 and pixels.std() > 20  # a page with pictures, not blank
