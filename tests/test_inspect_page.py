"""The page's step-by-step panel, logit-lens strip and head switch-off toggles, in a real headless Chromium
(Debian's package, driven by Playwright) against a real server process on the tiny checkpoint.

What is checked: analysing "The cat sat on the mat" opens the panel on its last byte with a bar per byte the query
may attend to, whose weights are the API's; clicking a byte or choosing a head walks through that one; the lens strip
has a row per stage and a cell per byte holding the API's top byte; switching a head off shows the API's loss change
and the panel then runs without it. Screenshots go to test-artifacts/ and are checked for drawn pixels.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from browser import ARTIFACTS, NEEDS_BROWSER, READ_CANVAS, api, screenshot

pytestmark = NEEDS_BROWSER

OPENING = "The cat sat on the mat"


def opened(page, text: str = OPENING) -> None:
    """The page's one text: analysed, which opens the step-by-step panel on its last byte."""
    page.fill("#text", text)
    page.click("#analyse")


def walked(page, query: int, layer: int, head: int) -> None:
    page.wait_for_selector(f"#step-walk[data-query='{query}']")
    page.wait_for_function(
        f"document.querySelector('#step-walk .step-title').textContent.startsWith('layer {layer}, head {head} ')"
    )


def bars(page) -> dict[int, float]:
    """{key byte: weight} of the bars in the walkthrough's table."""
    pairs = page.eval_on_selector_all(
        "#step-table tr[data-key]", "rows => rows.map(r => [+r.dataset.key, +r.querySelector('.wbar').dataset.w])"
    )
    return dict(pairs)


def drawn_pixels(path, box=None) -> int:
    """Pixels of a screenshot (or of a box of it) that are not near-white."""
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    if box is not None:
        x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
        image = image[y : y + h, x : x + w]
    return int((image.min(-1) < 200).sum())


def test_the_panel_opens_on_the_cat_and_walks_through_a_byte(page, server):
    opened(page)
    T = len(OPENING.encode())
    walked(page, T - 1, 0, 0)  # the last byte, with the layer and head selected above (0, 0)
    expected = api(server, "/v1/attention/explain", text=OPENING, layer=0, head=0, query=T - 1)
    shown = bars(page)
    assert sorted(shown) == list(range(T)), "a bar per byte the last byte may attend to"
    np.testing.assert_allclose([shown[j] for j in range(T)], expected["weights"], rtol=1e-6)
    assert page.locator("#step-table tr.masked").count() == 0
    assert page.locator("#step-bytes .b").count() == T and "focus" in page.locator(
        f"#step-bytes .b[data-i='{T - 1}']"
    ).get_attribute("class")

    # Another byte and another head: the walkthrough of that one, later bytes masked.
    page.select_option("#layer", "1")
    page.select_option("#head", "1")
    page.click("#step-bytes .b[data-i='6']")
    walked(page, 6, 1, 1)
    expected = api(server, "/v1/attention/explain", text=OPENING, layer=1, head=1, query=6)
    shown = bars(page)
    assert sorted(shown) == list(range(7))
    np.testing.assert_allclose([shown[j] for j in range(7)], expected["weights"][:7], rtol=1e-6)
    assert "bytes 7–21 come later" in page.inner_text("#step-table tr.masked")
    scores = page.eval_on_selector_all("#step-table tr[data-key] td.raw", "els => els.map(e => +e.textContent)")
    np.testing.assert_allclose(scores, expected["raw_scores"][:7], atol=5e-4)  # shown to 3 decimals
    widths = page.eval_on_selector_all("#step-table .wbar", "els => els.map(e => e.getBoundingClientRect().width)")
    np.testing.assert_allclose(widths, np.maximum(1, np.round(160 * np.array(expected["weights"][:7]))), atol=1)
    text = page.inner_text("#step-walk")
    assert "q after RoPE" in text and "z = Σ weight·v" in text and "z·W_O" in text and "checks" in text

    # The vectors are drawn: q, its rotation, z and the write, every cell of each painted by its value.
    vectors = page.eval_on_selector_all("#step-walk .vector canvas", f"els => els.map({READ_CANVAS})")
    assert [v["w"] for v in vectors] == [16, 16, 16, 32]  # head_dim, head_dim, head_dim, d_model
    for v in vectors:
        alphas = np.array(v["rgba"]).reshape(-1, 4)[:, 3]
        assert (alphas > 0).mean() > 0.5 and alphas.max() == 255

    panel = page.locator(".step")
    path = ARTIFACTS / "page-step.png"
    panel.screenshot(path=str(path))
    assert drawn_pixels(path) > 5000
    box, table = panel.bounding_box(), page.locator("#step-table").bounding_box()
    inside = {
        "x": table["x"] - box["x"],
        "y": table["y"] - box["y"],
        "width": table["width"],
        "height": table["height"],
    }
    assert drawn_pixels(path, inside) > 300, "the score table and its bars are drawn"


def test_a_mean_of_heads_has_no_walkthrough(page):
    opened(page)
    walked(page, len(OPENING.encode()) - 1, 0, 0)
    page.select_option("#head", "mean")
    page.wait_for_function("document.getElementById('step-walk').textContent.startsWith('Choose one head')")


def test_lens_strip_has_a_row_per_stage_and_the_apis_top_bytes(page, server):
    opened(page)
    page.wait_for_selector("#lens tbody tr")
    expected = api(server, "/v1/lens", text=OPENING, top_k=3)
    stages = page.eval_on_selector_all("#lens tbody tr", "rows => rows.map(r => r.dataset.stage)")
    assert stages == expected["stages"] == ["embedding", "0.attention", "0.mlp", "1.attention", "1.mlp"]
    T = len(OPENING.encode())
    for s, stage in enumerate(stages):
        cells = page.eval_on_selector_all(
            f"#lens tbody tr[data-stage='{stage}'] td", "els => els.map(e => [e.title, e.classList.contains('hit')])"
        )[:T]  # the last cell is the stage's bits per byte
        assert len(cells) == T
        for t, (title, hit) in enumerate(cells):
            ids = expected["top_ids"][s][t]
            assert title.split(": ", 1)[1].startswith(expected["byte_labels"][ids[0]] + " "), title
            assert hit == (t + 1 < T and expected["next_rank"][s][t] == 1)
    path = ARTIFACTS / "page-lens.png"
    page.locator(".lens-scroll").screenshot(path=str(path))
    assert drawn_pixels(path) > 1000


def test_switching_a_head_off_shows_the_loss_change_and_the_panel_runs_without_it(page, server):
    text = "To be, or not to be"  # the default text is longer than the tiny model's context
    page.fill("#text", text)
    page.click("#analyse")
    page.wait_for_selector("#summary td[data-head]")
    page.wait_for_selector("#lens tbody tr")
    posts = []
    page.on("request", lambda r: r.method == "POST" and posts.append((r.url, r.post_data)))
    toggle = "#summary td[data-layer='1'][data-head='0'] .off-toggle"
    page.click(toggle)
    page.wait_for_selector("#ablate-result[data-change]")
    expected = api(server, "/v1/ablate", text=text, heads_off=[[1, 0]])
    assert float(page.get_attribute("#ablate-result", "data-change")) == expected["change_bits_per_byte"]
    assert "Without 1.0" in page.inner_text("#ablate-result")
    cell = page.locator("#summary td[data-layer='1'][data-head='0']")
    assert "off" in cell.get_attribute("class") and page.get_attribute(toggle, "aria-pressed") == "true"
    assert page.input_value("#layer") == "0", "the toggle does not select the head"

    # The step-by-step panel asked again, without that head.
    page.wait_for_function("document.getElementById('step-status').textContent.endsWith('with 1.0 off')")
    sent = {url.rsplit("/v1/", 1)[1]: json.loads(body) for url, body in posts}
    assert sent["lens"]["heads_off"] == [[1, 0]] and sent["attention/explain"]["heads_off"] == [[1, 0]]
    screenshot(page, "page-heads-off.png")

    page.click(toggle)  # on again
    page.wait_for_function("document.getElementById('ablate-result').textContent === ''")
    assert "off" not in cell.get_attribute("class")


def test_a_generated_bytes_readout_shows_what_pushed_its_logit_most(page, server):
    prompt, n_new = "To be, or not", 8
    P = len(prompt.encode())
    sent = []
    page.on("request", lambda r: r.url.endswith("/v1/generate") and sent.append(json.loads(r.post_data)))
    page.fill("#text", prompt)
    page.fill("#max-new", str(n_new))
    page.fill("#temperature", "0")
    page.click("#generate")
    page.wait_for_selector("#gen-bytes[data-done='true']")
    assert sent[-1]["explain"] == {"top": 64} and sent[-1]["heads_off"] == []

    # The page's request from the test: a clicked byte's readout shows its five largest pushes, and its five
    # largest heads' (the tiny model has 7 pushes: the embedding, 4 heads and 2 MLPs).
    body = {k: sent[-1][k] for k in ("prompt", "max_new_tokens", "temperature", "attention", "explain")}
    tokens = api(server, "/v1/generate", **body)["tokens"]
    assert page.eval_on_selector_all("#gen-bytes .b.gen", "els => els.map(e => +e.dataset.i)") == list(
        range(P, P + n_new)
    )
    j = 3
    page.click(f"#gen-bytes .b[data-i='{P + j}']")
    # the step that drew it opens below (the walkthrough of the byte before it, and the bytes it was drawn from)
    page.wait_for_selector(f"#step-walk[data-query='{P + j - 1}']")
    page.wait_for_selector(f"#next-bars .next-row.chosen[data-byte='{tokens[j]['id']}']")
    pushes = tokens[j]["explain"]["top"]
    assert len(pushes) == 7
    for line, expected in (("all", pushes[:5]), ("heads", [c for c in pushes if c["kind"] == "head"])):
        shown = page.eval_on_selector_all(f"#gen-readout .{line} .push", "els => els.map(e => ({...e.dataset}))")
        assert len(shown) == len(expected) and expected
        for s, c in zip(shown, expected):
            assert s["kind"] == c["kind"] and float(s["logit"]) == c["logit"]
            if c["kind"] == "head":
                assert (int(s["layer"]), int(s["head"])) == (c["layer"], c["head"])
        widths = page.eval_on_selector_all(
            f"#gen-readout .{line} .push .bar", "els => els.map(e => e.getBoundingClientRect().width)"
        )
        assert widths[0] == 40 and widths == sorted(widths, reverse=True), "bars by size, the largest 40 px"
    readout = page.inner_text("#gen-readout")
    assert "was chosen looking at" in readout and f"its logit {tokens[j]['explain']['logit']:.3f}" in readout
    path = ARTIFACTS / "page-generate-pushes.png"
    page.locator("#gen-readout").screenshot(path=str(path))
    assert drawn_pixels(path) > 300

    # Clicking a head selects it: the readout's attention row is then that head's.
    last = [c for c in pushes if c["kind"] == "head"][-1]
    page.click(f"#gen-readout .heads .push[data-layer='{last['layer']}'][data-head='{last['head']}']")
    assert (page.input_value("#layer"), page.input_value("#head")) == (str(last["layer"]), str(last["head"]))
    assert f"(layer {last['layer']}, head {last['head']})" in page.inner_text("#gen-readout")

    # A head switched off in the table is off in the generation too.
    page.fill("#text", "To be, or not to be")
    page.click("#analyse")
    page.wait_for_selector("#summary td[data-head]")
    page.click("#summary td[data-layer='1'][data-head='0'] .off-toggle")
    page.wait_for_selector("#ablate-result[data-change]")
    page.fill("#text", prompt)
    page.click("#generate")
    page.wait_for_function("document.getElementById('gen-status').textContent.includes('without 1.0')")
    assert sent[-1]["heads_off"] == [[1, 0]]
    tokens = api(server, "/v1/generate", **body, heads_off=[[1, 0]])["tokens"]
    page.click(f"#gen-bytes .b[data-i='{P + j}']")
    shown = page.eval_on_selector_all("#gen-readout .heads .push", "els => els.map(e => ({...e.dataset}))")
    expected = [c for c in tokens[j]["explain"]["top"] if c["kind"] == "head"]
    assert [float(s["logit"]) for s in shown] == [c["logit"] for c in expected]
    assert {"layer": 1, "head": 0, "kind": "head", "logit": 0.0} in expected, "switched off: it pushes nothing"
    screenshot(page, "page-generate-heads-off.png")
