"""The page teaches the arithmetic (issue 31), in a real headless Chromium against a real server on the tiny model:
every operand of softmax(q·kᵀ/√d_k)·V on the page and equal to the API's, one text (a click on a byte in the head
view, the map or the generation opens its walkthrough), the block diagram lit by the step under the pointer, the
switched-off head described honestly, the next-byte distribution under temperature, top-k and top-p, and a 420 px
wide page that does not scroll sideways. Screenshots go to test-artifacts/ (looked at when written)."""

from __future__ import annotations

import math

import numpy as np

from browser import ARTIFACTS, NEEDS_BROWSER, api, open_page

pytestmark = NEEDS_BROWSER

TEXT = "The cat sat on the mat"
T = len(TEXT.encode())


def analysed(page, text: str = TEXT) -> None:
    page.fill("#text", text)
    page.click("#analyse")
    page.wait_for_selector(f"#heatmap[data-t='{len(text.encode())}']")
    page.wait_for_selector(f"#step-walk[data-query='{len(text.encode()) - 1}']")


def column(page, cls: str) -> list[float]:
    return page.eval_on_selector_all(f"#step-table tbody td.{cls}", "els => els.map(e => +e.textContent)")


def test_every_operand_is_on_the_page_and_is_the_apis(page, server):
    analysed(page)
    out = api(server, "/v1/attention/explain", text=TEXT, layer=0, head=0, query=T - 1)
    scaled = np.array(out["scaled_scores"])
    exps = np.exp(scaled - scaled.max())
    np.testing.assert_allclose(column(page, "raw"), out["raw_scores"], atol=5e-4)
    np.testing.assert_allclose(column(page, "scaled"), scaled, atol=5e-4)
    np.testing.assert_allclose(column(page, "exp"), exps, atol=5e-5)
    sum_cell = page.get_attribute("#step-table tfoot td[data-sum]", "data-sum")
    assert math.isclose(float(sum_cell), exps.sum(), rel_tol=1e-6)
    np.testing.assert_allclose(exps / exps.sum(), out["weights"], atol=1e-6)  # what the learner checks: exp ÷ Σ
    # a strip per key, per q∘k, per value and per w·v: head_dim cells each, every row
    widths = page.eval_on_selector_all("#step-table tbody td.op canvas", "els => els.map(e => e.width)")
    assert widths == [out["head_dim"]] * (4 * T)
    stages = page.eval_on_selector_all("#step-table thead th", "els => els.map(e => e.textContent)")
    assert [s.split(" ")[0] for s in stages] == ["key", "k", "q∘k", "q·k", "÷", "exp(s", "weight", "v", "w·v"]

    # A row's numbers, dimension by dimension: Σ q_i·k_i is its q·k, the z_i column is z.
    j = 9
    page.click(f"#step-table tr[data-key='{j}']")
    detail = page.eval_on_selector_all(
        ".step-detail tbody tr", "rows => rows.map(r => Array.from(r.cells, c => +c.textContent))"
    )
    assert len(detail) == out["head_dim"]
    q, k, qk, v, wv, z = (np.array([row[c] for row in detail]) for c in range(1, 7))
    np.testing.assert_allclose(q, out["q"], atol=5e-5)
    np.testing.assert_allclose(k, out["keys"][j], atol=5e-5)
    np.testing.assert_allclose(v, out["values"][j], atol=5e-5)
    np.testing.assert_allclose(wv, out["weights"][j] * np.array(out["values"][j]), atol=5e-5)
    np.testing.assert_allclose(z, out["z"], atol=5e-5)
    assert abs(qk.sum() - out["raw_scores"][j]) < 1e-3
    assert f"= {np.dot(out['q'], out['keys'][j]):.4f}" in page.inner_text(".step-detail .detail-title")
    page.locator(".step").screenshot(path=str(ARTIFACTS / "page-operands.png"))

    # The diagram: the step under the pointer is lit, and said in a line.
    page.hover("#step-table tbody td.scaled >> nth=0")
    assert page.get_attribute("#block-diagram .stage.lit", "data-stage") == "scale"
    assert page.inner_text("#diagram-note").startswith("÷ √d_k: divide by the square root of d_k")
    page.hover("#block-diagram .stage[data-stage='rope']")
    assert "rotary position embedding" in page.inner_text("#diagram-note")
    terms = page.inner_text(".terms dl") if page.click(".terms summary") is None else ""
    for term in ("RoPE", "residual stream", "bits/byte", "dk", "WO"):
        assert term in terms


def test_one_text_a_click_on_any_byte_opens_its_walkthrough(page, server):
    analysed(page)
    assert page.locator("#step-text").count() == 0, "one text: the step panel has no input of its own"
    page.click("#bytes .b[data-i='5']")  # the head view
    page.wait_for_selector("#step-walk[data-query='5']")
    page.wait_for_selector("#next-bars .next-row")
    assert page.inner_text("#next-title").startswith("after ‹a› #5")
    box = page.locator("#heatmap").bounding_box()
    cell = box["height"] / T
    page.mouse.click(box["x"] + 2, box["y"] + cell * 12.5)  # the map: row 12
    page.wait_for_selector("#step-walk[data-query='12']")
    assert page.eval_on_selector_all("#step-bytes .b", "els => els.length") == T


def test_a_switched_off_head_is_said_to_add_nothing(page, server):
    analysed(page)
    page.wait_for_selector("#summary td[data-head]")
    page.click("#summary td[data-layer='0'][data-head='0'] .off-toggle")
    page.wait_for_function("document.querySelector('#step-walk .step-title').textContent.includes('switched off')")
    walk = page.inner_text("#step-walk")
    assert "switched off in this run" in walk and "adds nothing to the residual stream" in walk
    assert "what this head adds" not in walk
    out = api(server, "/v1/attention/explain", text=TEXT, layer=0, head=0, query=T - 1, heads_off=[[0, 0]])
    assert out["switched_off"]

    page.fill("#max-new", "4")
    page.fill("#temperature", "0")
    page.click("#generate")
    page.wait_for_selector("#gen-bytes[data-done='true']")
    page.click(f"#gen-bytes .b[data-i='{T + 1}']")
    readout = page.inner_text("#gen-readout")
    assert "0.0 was switched off in this generation" in readout and "added nothing" in readout


def test_the_next_byte_distribution_under_temperature_top_k_and_top_p(page, server):
    analysed(page)
    page.wait_for_selector("#next-bars .next-row")
    out = api(server, "/v1/next-byte", text=TEXT)
    assert out["position"] == T - 1
    rows = lambda: page.eval_on_selector_all(
        "#next-bars .next-row", "els => els.map(e => [+e.dataset.byte, +e.dataset.p, +e.dataset.sampled])"
    )
    shown = rows()
    assert [b for b, _, _ in shown] == out["ids"][:12]
    np.testing.assert_allclose([p for _, p, _ in shown], out["probs"][:12], rtol=1e-6)
    np.testing.assert_allclose([s for _, _, s in shown], out["probs"][:12], rtol=1e-5)  # temperature 1: the same

    def expected(temperature, top_k=0, top_p=1.0):
        logits = np.log(np.array(out["probs"], dtype=np.float64)) / temperature
        w = np.exp(logits - logits.max())
        if top_k:
            w[top_k:] = 0
        p = w / w.sum()
        if top_p < 1:
            p[1:][np.cumsum(p)[:-1] >= top_p] = 0
            p /= p.sum()
        return p[:12]

    page.fill("#next-temperature", "0.5")
    np.testing.assert_allclose([s for _, _, s in rows()], expected(0.5), atol=1e-6)
    page.fill("#next-top-k", "3")
    sampled = [s for _, _, s in rows()]
    assert sum(s > 0 for s in sampled) == 3
    np.testing.assert_allclose(sampled, expected(0.5, 3), atol=1e-6)
    page.fill("#next-top-k", "0")
    page.fill("#next-temperature", "2")
    page.fill("#next-top-p", "0.3")
    np.testing.assert_allclose([s for _, _, s in rows()], expected(2, 0, 0.3), atol=1e-6)
    assert "bytes can be drawn with these settings" in page.inner_text("#next-summary")
    page.locator(".next").screenshot(path=str(ARTIFACTS / "page-next-byte.png"))


def test_420_px_wide_nothing_scrolls_sideways(browser, server):
    page = open_page(browser, server.url)
    page.set_viewport_size({"width": 420, "height": 900})
    analysed(page)
    page.fill("#max-new", "6")
    page.click("#generate")
    page.wait_for_selector("#gen-bytes[data-done='true']")
    page.wait_for_selector("#grid canvas.mini")
    page.click(f"#gen-bytes .b[data-i='{T + 2}']")
    page.wait_for_selector(f"#step-walk[data-query='{T + 1}']")
    page.wait_for_selector("#next-bars .next-row")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 420, f"the page is {width} px wide at a 420 px viewport"
    overflowing = page.eval_on_selector_all(
        ".card, .card *",
        "els => els.filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5"
        " && !e.closest('.step-scroll, .lens-scroll, .summary-scroll, .detail-scroll, .bytes'))"
        ".map(e => e.id || e.className || e.tagName)",
    )
    assert overflowing == [], overflowing
    page.screenshot(path=str(ARTIFACTS / "page-420px.png"), full_page=True)
    assert not page.errors, page.errors
    page.context.close()
