"""/docs renders with no network: Swagger UI's files come from this server (server/docs_pages.py),
checked in a real headless Chromium that aborts every request to a host other than the server's."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from browser import ARTIFACTS, NEEDS_BROWSER

pytestmark = NEEDS_BROWSER


def offline_page(browser, server):
    """A page whose requests to any host but the server's are aborted (and recorded)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.blocked, page.errors = [], []
    own = urlsplit(server.url).netloc

    def route(r):
        if urlsplit(r.request.url).netloc == own or r.request.url.startswith("data:"):
            return r.continue_()
        page.blocked.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page


def test_docs_render_from_the_servers_own_files(browser, server):
    html = httpx.get(f"{server.url}/docs").text
    assert "cdn" not in html.lower() and "/static/docs/swagger-ui-bundle.js" in html
    page = offline_page(browser, server)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=30_000)  # the operations were drawn
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path || e.textContent)")
    assert "/v1/attention/explain" in paths and "/v1/generate" in paths
    assert "TinyLLM" in page.inner_text(".swagger-ui .info .title")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs-offline.png"))
    assert page.blocked == [] and page.errors == [], (page.blocked, page.errors)
    page.context.close()


def test_no_redoc(server):
    """ReDoc's bundle fetches its logo from a CDN whatever it is given: not served (server/docs_pages.py)."""
    assert httpx.get(f"{server.url}/redoc").status_code == 404
