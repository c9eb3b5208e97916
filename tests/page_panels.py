"""Working each panel of the page as a learner does, and checking what it drew against the live server's own answer
(browser.api): shared by tests/test_page_shipped.py. Every wait is on the page's own signal (a status text, an
element or attribute appearing), never a sleep."""

from __future__ import annotations

import re

import httpx
import numpy as np

from browser import READ_CANVAS, api

# The sum of a canvas's bytes: enough to tell two paintings apart at any size.
CANVAS_SUM = "el => el.getContext('2d').getImageData(0, 0, el.width, el.height).data.reduce((a, b) => a + b, 0)"
SET_SLIDER = "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }"  # Playwright cannot fill a range


def get(server, path: str, **params) -> dict:
    r = httpx.get(f"{server.url}{path}", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def analyse(page, model: str, text: str) -> int:
    """Analyse `text` and wait until its maps and its heads' table are drawn (Analyse sets "analysing…" at once)."""
    page.fill("#text", text)
    page.click("#analyse")
    return wait_analysed(page, model, text)


def wait_analysed(page, model: str, text: str) -> int:
    T = len(text.encode())
    page.wait_for_function(
        """([model, T]) => document.getElementById('status').textContent.startsWith(`${T} bytes ·`)
             && document.getElementById('summary-title').textContent === `${model} · ${T} bytes`""",
        arg=[model, T],
    )
    return T


def data_floats(page, selector: str, attr: str) -> list[float]:
    return page.eval_on_selector_all(
        selector, f"els => els.filter(e => '{attr}' in e.dataset).map(e => +e.dataset.{attr})"
    )


def check_maps(page, server, model: str, text: str, L: int, H: int) -> int:
    """The map (every causal cell painted), the head view's strip, the all-heads grid and the heads' table, whose
    labels are the server's summary's."""
    T = analyse(page, model, text)
    canvas = page.eval_on_selector("#heatmap", READ_CANVAS)
    assert (canvas["w"], canvas["h"], canvas["lower"], canvas["upper"]) == (T, T, T * (T + 1) // 2, 0)
    assert page.locator("#bytes .b").count() == T
    assert page.locator("#grid canvas.mini").count() == L * H
    summary = api(server, "/v1/attention", model=model, text=text, format="summary")
    labels = page.eval_on_selector_all("#summary td[data-head]", "els => els.map(e => e.dataset.label)")
    assert labels == [label or "" for row in summary["labels"] for label in row]
    return T


def check_head_view_and_walkthrough(page, server, model: str, text: str, T: int) -> None:
    """A clicked byte: its row in the head view, its walkthrough (weights, a row's detail, the block diagram), the
    logit lens, what comes next and its sliders; the arrow key; a cell of the map, hovered and clicked. Layer 0,
    head 0 is selected."""
    maps = np.array(api(server, "/v1/attention", model=model, text=text, layers=[0], heads=[0])["attention"])[0, 0]
    i = T // 2
    page.click(f"#bytes .b[data-i='{i}']")
    np.testing.assert_allclose(data_floats(page, "#bytes .b", "to"), maps[i, : i + 1], atol=1e-3)  # float16 maps
    assert "attends to" in page.inner_text("#readout")

    page.wait_for_selector(f"#step-walk[data-query='{i}']")
    explain = api(server, "/v1/attention/explain", model=model, text=text, layer=0, head=0, query=i)
    np.testing.assert_allclose(data_floats(page, "#step-table .wbar", "w"), explain["weights"][: i + 1], rtol=1e-6)
    page.click("#step-table tr[data-key='0']")
    page.wait_for_selector("#step-walk .step-detail[data-key='0']")
    page.hover("#step-walk .vector[data-stage='rope']")
    assert page.get_attribute("#diagram-note", "data-stage") == "rope"

    lens = api(server, "/v1/lens", model=model, text=text, top_k=3)
    page.wait_for_function("n => document.querySelectorAll('#lens tbody tr').length === n", arg=len(lens["stages"]))
    bits = page.eval_on_selector_all("#lens tbody tr", "rows => rows.map(r => r.lastElementChild.textContent)")
    assert bits == ["–" if b is None else f"{b:.2f}" for b in lens["bits_per_byte"]]
    assert page.locator("#lens thead th").count() == T + 2

    check_next_byte(page, server, model, text, i)

    page.focus("#bytes")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f"#step-walk[data-query='{i + 1}']")

    page.locator("#heatmap").scroll_into_view_if_needed()  # the mouse reaches what is in the viewport
    box = page.locator("#heatmap").bounding_box()
    cell = box["width"] / T
    x, y = box["x"] + cell / 2, box["y"] + (T - 0.5) * cell  # the last query on the first key
    page.mouse.move(x, y)
    shown = re.search(r": (\d\.\d{4})$", page.inner_text("#cell-readout"))
    assert shown and abs(float(shown.group(1)) - maps[T - 1, 0]) < 2e-3, page.inner_text("#cell-readout")
    page.mouse.click(x, y)
    assert page.get_attribute("#row-highlight", "data-row") == str(T - 1)
    page.wait_for_selector(f"#step-walk[data-query='{T - 1}']")


def check_next_byte(page, server, model: str, text: str, position: int) -> None:
    """The bars after byte `position` are the server's probabilities; temperature, top-k and top-p change how many
    bytes can be drawn as model/sampling.py would."""
    probs = np.array(api(server, "/v1/next-byte", model=model, text=text, position=position)["probs"])
    page.wait_for_function(
        "p => { const r = document.querySelectorAll('#next-bars .next-row');"
        " return r.length === 12 && Math.abs(+r[0].dataset.p - p) < 1e-12; }",
        arg=float(probs[0]),
    )
    np.testing.assert_allclose(data_floats(page, "#next-bars .next-row", "p"), probs[:12], rtol=1e-9)
    page.eval_on_selector("#next-temperature", SET_SLIDER, "0")
    assert page.inner_text("#next-summary").startswith("1 of 256 bytes can be drawn")
    page.eval_on_selector("#next-temperature", SET_SLIDER, "1")
    page.fill("#next-top-k", "5")
    assert page.inner_text("#next-summary").startswith("5 of 256 bytes can be drawn")
    page.fill("#next-top-k", "0")
    page.eval_on_selector("#next-top-p", SET_SLIDER, "0.5")
    kept = 1 + int(np.sum(np.cumsum(probs)[:-1] < 0.5))  # a byte is kept while the mass before it is short of p
    assert page.inner_text("#next-summary").startswith(f"{kept} of 256 bytes can be drawn")
    page.eval_on_selector("#next-top-p", SET_SLIDER, "1")


def check_heads(page, server, model: str, text: str, T: int, L: int, H: int) -> None:
    """Switching head 0.0 off (the loss change is /v1/ablate's, the walkthrough says so) and on again; the grid's
    last head selected; the mean of heads; the character view; the linear colour scale."""
    cell = page.locator("#summary td[data-layer='0'][data-head='0']")
    cell.locator(".off-toggle").click()
    page.wait_for_selector("#ablate-result[data-change]")
    ablated = api(server, "/v1/ablate", model=model, text=text, heads_off=[[0, 0]])
    assert abs(float(page.get_attribute("#ablate-result", "data-change")) - ablated["change_bits_per_byte"]) < 1e-9
    assert cell.locator(".off-toggle").get_attribute("aria-pressed") == "true"
    page.wait_for_function("document.querySelector('#step-walk .step-title')?.textContent.endsWith('switched off')")
    cell.locator(".off-toggle").click()
    page.wait_for_function("document.getElementById('ablate-result').textContent === ''")

    last = f"#grid canvas.mini[data-layer='{L - 1}'][data-head='{H - 1}']"
    page.click(last)
    page.wait_for_selector(f"#heatmap[data-layer='{L - 1}'][data-head='{H - 1}']")
    assert page.input_value("#layer") == str(L - 1) and page.input_value("#head") == str(H - 1)
    assert page.eval_on_selector("#heatmap", CANVAS_SUM) == page.eval_on_selector(last, CANVAS_SUM)

    page.select_option("#head", "mean")
    page.wait_for_selector("#heatmap[data-head='mean']")
    page.wait_for_function("document.getElementById('step-walk').textContent.startsWith('Choose one head')")
    page.select_option("#head", str(H - 1))

    C = len(text)
    page.click(".toggle label:has(input[value=character])")
    page.wait_for_selector(f"#heatmap[data-unit='character'][data-t='{C}']")
    assert page.eval_on_selector("#heatmap", READ_CANVAS)["lower"] == C * (C + 1) // 2
    assert page.locator("#key-labels span").count() == C
    page.click(".toggle label:has(input[value=byte])")
    page.wait_for_selector(f"#heatmap[data-unit='byte'][data-t='{T}']")

    before = page.eval_on_selector("#heatmap", CANVAS_SUM)
    page.select_option("#scale", "linear")
    assert page.eval_on_selector("#heatmap", CANVAS_SUM) != before
    page.select_option("#scale", "sqrt")


def check_generate(page, server, model: str, context: int, L: int, H: int) -> str:
    """Greedy generation from the text box, streamed: the very bytes and attention rows of the same request not
    streamed; a generated byte clicked (what chose it, its walkthrough, where it was drawn); "Analyse this text";
    then a long generation stopped as its first byte lands. Returns the text then in the box."""
    prompt = page.input_value("#text")
    P, n_new = len(prompt.encode()), 8
    for field, value in {"#max-new": n_new, "#temperature": 0, "#top-k": 0, "#top-p": 1, "#seed": ""}.items():
        page.fill(field, str(value))
    page.click("#generate")
    page.wait_for_selector("#gen-bytes[data-done='true']")
    assert page.locator("#gen-bytes .b.prompt").count() == P and page.locator("#gen-bytes .b.gen").count() == n_new
    assert "finished: length" in page.inner_text("#gen-status")
    body = {"temperature": 0, "top_k": 0, "top_p": 1, "seed": None, "heads_off": [], "explain": {"top": 64}}
    tokens = api(
        server,
        "/v1/generate",
        model=model,
        prompt=prompt,
        max_new_tokens=n_new,
        attention={"layers": None, "heads": None},
        **body,
    )["tokens"]

    j = 3  # a generated byte: chosen looking at bytes 0..P + j - 1
    page.click(f"#gen-bytes .b[data-i='{P + j}']")
    assert "was chosen looking at" in page.inner_text("#gen-readout")
    np.testing.assert_allclose(data_floats(page, "#gen-bytes .b", "w"), tokens[j]["attention"][L - 1][H - 1], rtol=1e-6)
    assert page.locator("#gen-readout .pushes.heads .push").count() > 0
    page.wait_for_selector(f"#step-walk[data-query='{P + j - 1}']")
    page.wait_for_selector("#next-bars .next-row.chosen")
    assert "was drawn" in page.inner_text("#next-title")

    page.click("#analyse-generated")
    text = (prompt.encode() + bytes(t["id"] for t in tokens)).decode("utf-8", errors="replace")
    assert page.input_value("#text") == text
    wait_analysed(page, model, text)

    # Stop: clicked by the page itself the moment the first generated byte lands, so no timing decides it.
    page.evaluate("""() => { const strip = document.getElementById('gen-bytes');
      const watch = new MutationObserver(() => { if (strip.querySelector('.b.gen')) {
        watch.disconnect(); document.getElementById('stop').click(); } });
      watch.observe(strip, {childList: true}); }""")
    longest = context - len(text.encode())
    page.fill("#max-new", str(longest))
    page.click("#generate")
    page.wait_for_function("document.getElementById('gen-status').textContent.startsWith('stopped after')")
    stopped = int(re.search(r"stopped after (\d+) bytes", page.inner_text("#gen-status")).group(1))
    assert 1 <= stopped < longest
    assert page.is_enabled("#generate") and not page.is_enabled("#stop")
    # the one request the page cancelled on purpose is no failure
    page.failed[:] = [f for f in page.failed if not ("/v1/generate" in f and "ERR_ABORTED" in f)]
    return text
