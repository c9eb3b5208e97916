"""Driving the page in a real headless Chromium (Debian's package, through Playwright): shared by the page tests.
The `browser` and `page` fixtures are in conftest.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from server.process import ROOT

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the skip below says what to install
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

NEEDS_BROWSER = [  # a page test module's pytestmark
    pytest.mark.skipif(
        sync_playwright is None,
        reason="playwright is not installed: .venv/bin/pip install playwright "
        "(never `playwright install`: the test drives Debian's chromium)",
    ),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install -y chromium"),
]

# Reads a canvas back: its size, how many cells on/below and above the diagonal are painted, and (for small
# canvases) the RGBA bytes.
READ_CANVAS = """(el) => {
  const {width: w, height: h} = el;
  const px = el.getContext("2d").getImageData(0, 0, w, h).data;
  let lower = 0, upper = 0;
  for (let q = 0; q < h; q++) for (let k = 0; k < w; k++) {
    if (px[(q * w + k) * 4 + 3] > 0) { if (k <= q) lower++; else upper++; }
  }
  return {w, h, lower, upper, rgba: w * h <= 128 * 128 ? Array.from(px) : null};
}"""


def open_page(browser, url):
    """A fresh page on `url`; it records page errors and console errors (page.errors), every URL requested
    (page.requests: all must be this server's) and the requests that failed (page.failed)."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.errors, page.requests = [], []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("request", lambda r: page.requests.append(r.url))
    # what a page test may hold to "nothing failed": requests that failed at the network level (an abort the page
    # chose, by its Stop button, included: the test that presses it removes its own) and answers of 400 and up
    page.failed = []
    page.on("requestfailed", lambda r: page.failed.append(f"{r.method} {r.url}: {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and page.failed.append(f"{r.request.method} {r.url}: {r.status}"))
    page.goto(url)
    page.wait_for_function("document.getElementById('head').options.length > 0")  # GET /v1/model answered
    return page


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    return ARTIFACTS / name


def api(server, path: str, **body) -> dict:
    """A page test's direct call to the live server's API, what the page's own numbers are checked against."""
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()
