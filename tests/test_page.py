"""The attention page at `/`, in a real headless Chromium (Debian's package, driven by Playwright) against a
real server process.

How cells are counted: the map is a <canvas> holding exactly one pixel per (query, key) cell, scaled up by
CSS. The test reads the pixels back with getImageData and checks that every cell on or below the diagonal is
painted and none above it is, that the colours rise with the probabilities the API serves, and that both axes
carry one label element per byte. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from browser import ARTIFACTS, NEEDS_BROWSER, READ_CANVAS, open_page, screenshot
from model import checkpoint
from model.config import ModelConfig
from model.model import Transformer
from model.tokenizer import ByteTokenizer
from server.process import ROOT, running_server

pytestmark = NEEDS_BROWSER

TEXT = "Hé! ☃ to be, or not"  # 2- and 3-byte characters: 23 bytes
AXIS_SHOWN = {" ": "␣", "\\n": "↵", "\\t": "⇥", "\\r": "␍"}


def analyse(page, text: str) -> int:
    page.fill("#text", text)
    page.click("#analyse")
    T = len(text.encode("utf-8"))
    page.wait_for_selector(f"#heatmap[data-t='{T}']")
    return T


def api_attention(server, text: str, **body) -> np.ndarray:
    r = httpx.post(f"{server.url}/v1/attention", json={"text": text, **body}, timeout=30)
    assert r.status_code == 200, r.text
    return np.array(r.json()["attention"], dtype=np.float32)


def floats(page, selector: str, attr: str) -> dict[int, float]:
    """{byte index: value} of the data-`attr` attribute of the elements matched by selector, where present."""
    pairs = page.eval_on_selector_all(
        selector, f"els => els.filter(e => '{attr}' in e.dataset).map(e => [+e.dataset.i, +e.dataset.{attr}])"
    )
    return {i: v for i, v in pairs}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------ the map and the head view


def test_analysis_draws_every_cell_and_hovering_a_byte_highlights_its_row(page, server):
    T = analyse(page, TEXT)
    data = TEXT.encode("utf-8")
    expected = api_attention(server, TEXT)  # (layers, heads, T, T)

    # Every cell of the causal map is painted, nothing above the diagonal; colours rise with probability.
    canvas = page.eval_on_selector("#heatmap", READ_CANVAS)
    assert (canvas["w"], canvas["h"]) == (T, T)
    assert canvas["lower"] == T * (T + 1) // 2 and canvas["upper"] == 0
    rgba = np.array(canvas["rgba"], dtype=np.float64).reshape(T, T, 4)
    luminance = rgba[..., :3] @ [0.2126, 0.7152, 0.0722]
    lower = np.tril_indices(T)
    assert spearman(luminance[lower], expected[0, 0][lower]) > 0.95, "colours do not follow layer 0, head 0"

    # One label per byte on each axis; a multi-byte character once, as the character, on its first byte.
    labels = [
        AXIS_SHOWN.get(lab, "·" if lab.startswith("\\") and len(lab) > 1 else lab)
        for lab in ByteTokenizer().char_labels(list(data))
    ]
    for axis in ("#key-labels", "#query-labels"):
        assert page.eval_on_selector_all(f"{axis} span", "els => els.map(e => e.textContent)") == labels
    assert labels[1:3] == ["é", ""] and labels[5:8] == ["☃", "", ""]
    assert page.locator("#bytes .b").count() == T
    assert page.eval_on_selector("#heatmap-frame", "el => el.classList.contains('dense')") is False

    # Hovering a byte outlines its row on the map and shades what it attends to and what attends to it.
    i = TEXT.encode().index(b"be")  # 'b'
    page.hover(f"#bytes .b[data-i='{i}']")
    row = page.locator("#row-highlight")
    assert row.is_visible() and row.get_attribute("data-row") == str(i)
    box, plot = row.bounding_box(), page.locator("#heatmap").bounding_box()
    cell = plot["height"] / T
    assert abs((box["y"] - plot["y"]) - i * cell) < 1.5 and abs(box["height"] - cell) < 1.5, (box, plot, cell)
    assert abs(box["width"] - (i + 1) * cell) < 1.5  # the row up to the diagonal
    assert "on" in page.locator(f"#query-labels span:nth-child({i + 1})").get_attribute("class")
    assert "focus" in page.locator(f"#bytes .b[data-i='{i}']").get_attribute("class")
    to, frm = floats(page, "#bytes .b", "to"), floats(page, "#bytes .b", "from")
    assert sorted(to) == list(range(i + 1)) and sorted(frm) == list(range(i, T))
    np.testing.assert_allclose([to[k] for k in range(i + 1)], expected[0, 0, i, : i + 1], atol=1e-3)  # float16
    np.testing.assert_allclose([frm[q] for q in range(i, T)], expected[0, 0, i:, i], atol=1e-3)
    assert "attends to" in page.inner_text("#readout")
    screenshot(page, "page-analysis.png")

    # The mean of heads: the same row, averaged over the heads.
    page.select_option("#head", "mean")
    page.wait_for_selector("#heatmap[data-head='mean']")
    to = floats(page, "#bytes .b", "to")
    np.testing.assert_allclose([to[k] for k in range(i + 1)], expected[0, :, i, : i + 1].mean(0), atol=1e-3)

    # Moving off the text clears it.
    page.mouse.move(1, 1)
    assert not page.locator("#row-highlight").is_visible()


def test_all_heads_grid_has_every_layer_and_head_and_selects_one(page, server):
    T = analyse(page, TEXT)
    info = httpx.get(f"{server.url}/v1/model").json()["config"]
    minis = page.locator("#grid canvas.mini")
    assert minis.count() == info["n_layer"] * info["n_head"]
    for n in range(minis.count()):
        mini = minis.nth(n).evaluate(READ_CANVAS)
        assert (mini["w"], mini["lower"], mini["upper"]) == (T, T * (T + 1) // 2, 0)

    last = f"#grid canvas.mini[data-layer='{info['n_layer'] - 1}'][data-head='{info['n_head'] - 1}']"
    page.click(last)
    page.wait_for_selector(f"#heatmap[data-layer='{info['n_layer'] - 1}'][data-head='{info['n_head'] - 1}']")
    assert page.input_value("#layer") == str(info["n_layer"] - 1)
    assert page.input_value("#head") == str(info["n_head"] - 1)
    assert page.locator("#grid canvas.mini.selected").count() == 1
    assert "selected" in page.locator(last).get_attribute("class")
    # the big map now shows exactly the clicked small one
    assert page.eval_on_selector("#heatmap", READ_CANVAS)["rgba"] == page.eval_on_selector(last, READ_CANVAS)["rgba"]
    screenshot(page, "page-all-heads.png")

    # A byte pinned past the end of the next, shorter text: the new analysis starts with nothing in focus.
    page.click(f"#bytes .b[data-i='{T - 1}']")
    assert page.get_attribute("#row-highlight", "data-row") == str(T - 1)
    analyse(page, "to be")
    assert not page.locator("#row-highlight").is_visible() and page.locator("#bytes .b.focus").count() == 0


# ------------------------------------------------------------------ streaming generation


def test_streamed_generation_appends_bytes_and_a_generated_byte_shows_its_row(page, server):
    prompt, n_new = "To be, or", 12
    P = len(prompt.encode())
    # A MutationObserver counts generated bytes as they land, to see them arrive in more than one step.
    page.evaluate("""() => { window.seenCounts = [];
      new MutationObserver(() => window.seenCounts.push(document.querySelectorAll('#gen-bytes .b.gen').length))
        .observe(document.getElementById('gen-bytes'), {childList: true}); }""")
    page.fill("#text", prompt)
    page.fill("#max-new", str(n_new))
    page.fill("#temperature", "0")
    with page.expect_response("**/v1/generate") as response:
        page.click("#generate")
    assert response.value.headers["content-type"].startswith("text/event-stream")
    page.wait_for_selector("#gen-bytes[data-done='true']")
    assert page.locator("#gen-bytes .b.prompt").count() == P
    assert page.locator("#gen-bytes .b.gen").count() == n_new
    seen = page.evaluate("window.seenCounts")
    assert seen[-1] == n_new and seen == sorted(seen), seen
    assert "finished: length" in page.inner_text("#gen-status")

    # The same request, not streamed, from the test: the page shows the very bytes and rows it returns.
    r = httpx.post(
        f"{server.url}/v1/generate",
        timeout=30,
        json={
            "prompt": prompt,
            "max_new_tokens": n_new,
            "temperature": 0,
            "attention": {"layers": None, "heads": None},
        },
    )
    tokens = r.json()["tokens"]
    shown_ids = page.eval_on_selector_all("#gen-bytes .b.gen", "els => els.map(e => +e.dataset.i)")
    assert shown_ids == list(range(P, P + n_new))

    j = 5  # the sixth generated byte: chosen by the query at P + j - 1, over keys 0..P + j - 1
    page.click(f"#gen-bytes .b[data-i='{P + j}']")
    assert "was chosen looking at" in page.inner_text("#gen-readout")
    assert "focus" in page.locator(f"#gen-bytes .b[data-i='{P + j}']").get_attribute("class")
    w = floats(page, "#gen-bytes .b", "w")
    assert sorted(w) == list(range(P + j))
    np.testing.assert_allclose([w[k] for k in range(P + j)], tokens[j]["attention"][0][0], rtol=1e-6)

    page.select_option("#layer", "1")
    page.select_option("#head", "1")
    w = floats(page, "#gen-bytes .b", "w")
    np.testing.assert_allclose([w[k] for k in range(P + j)], tokens[j]["attention"][1][1], rtol=1e-6)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".generate").screenshot(path=str(ARTIFACTS / "page-generate.png"))


CYCLE = "é☃a".encode()  # c3 a9 e2 98 83 61: a 2-byte, a 3-byte and a 1-byte character


@pytest.fixture(scope="module")
def cycle_checkpoint(tmp_path_factory) -> Path:
    """A model that greedily continues each byte of CYCLE with the next one, round and round.

    Every block's output projections are zero, so the last hidden state is the byte's own embedding (one-hot
    here), and the head maps that to the byte that follows it in CYCLE.
    """
    torch.manual_seed(0)
    cfg = ModelConfig(context_length=64, n_layer=2, n_head=2, d_model=32, mlp_hidden=64)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for block in model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for slot, (byte, following) in enumerate(zip(CYCLE, CYCLE[1:] + CYCLE[:1])):
            model.embed_tokens.weight[byte] = torch.eye(cfg.d_model)[slot]
            model.lm_head.weight[following, slot] = 1.0
    path = tmp_path_factory.mktemp("cycle") / "cycle"
    checkpoint.save(path, model, training={"note": "writes é☃a over and over"})
    return path


def test_streamed_characters_relabel_only_their_own_chips(browser, cycle_checkpoint):
    prompt, n_new = "a", 12
    P = len(prompt.encode())
    with running_server(cycle_checkpoint) as server:
        page = open_page(browser, server.url)
        # Every change under the generation strip: chips whose text is replaced once they are in the strip
        # (a relabelling), and nodes removed from the strip itself (a rebuild).
        page.evaluate("""() => { window.relabelled = []; window.removed = 0;
          const strip = document.getElementById('gen-bytes');
          new MutationObserver((records) => { for (const r of records) {
            if (r.target === strip) window.removed += r.removedNodes.length;
            else if (r.target.classList.contains('b')) window.relabelled.push(+r.target.dataset.i);
          } }).observe(strip, {childList: true, subtree: true}); }""")
        page.fill("#text", prompt)
        page.fill("#max-new", str(n_new))
        page.fill("#temperature", "0")
        page.click("#generate")
        page.wait_for_selector("#gen-bytes[data-done='true']")
        generated = (CYCLE * 2)[:n_new]
        assert (
            httpx.post(
                f"{server.url}/v1/generate",
                timeout=30,
                json={"prompt": prompt, "max_new_tokens": n_new, "temperature": 0},
            ).json()["text"]
            == generated.decode()
        )

        # Each character is shown once, on its first byte, as the server labels it; its other bytes are slots.
        ids = list(prompt.encode() + generated)
        chips = page.eval_on_selector_all("#gen-bytes .b", "els => els.map(e => [e.textContent, e.className])")
        assert (
            [text for text, _ in chips]
            == ByteTokenizer().char_labels(ids)
            == ["a", "é", "", "☃", "", "", "a", "é", "", "☃", "", "", "a"]
        )
        assert [i for i, (_, cls) in enumerate(chips) if "cont" in cls] == [2, 4, 5, 8, 10, 11]

        # Only the bytes a later byte completed into a character were relabelled, each once (é's first byte;
        # ☃'s first and second); nothing was removed from the strip, so no earlier chip was rebuilt.
        waiting = [P + k for k, b in enumerate(generated) if b in (0xC3, 0xE2, 0x98)]
        assert page.evaluate("window.relabelled") == waiting
        assert page.evaluate("window.removed") == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator(".generate").screenshot(path=str(ARTIFACTS / "page-generate-characters.png"))
        assert not page.errors, page.errors
        page.context.close()


# ------------------------------------------------------------------ 512 bytes


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory) -> Path:
    """A random model with the default model's shape of attention (512 context, 6 layers x 6 heads), tiny widths."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(context_length=512, n_layer=6, n_head=6, d_model=48, mlp_hidden=64)).eval()
    path = tmp_path_factory.mktemp("wide") / "ctx512"
    checkpoint.save(path, model, training={"note": "random weights for the page test"})
    return path


def test_usable_at_512_bytes(browser, wide_checkpoint):
    text = ("ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. " * 6)[
        :512
    ]
    assert len(text.encode()) == 512
    with running_server(wide_checkpoint) as server:
        page = open_page(browser, server.url)
        t0 = time.perf_counter()
        T = analyse(page, text)
        seconds = time.perf_counter() - t0
        canvas = page.eval_on_selector("#heatmap", READ_CANVAS)
        assert (canvas["w"], canvas["lower"], canvas["upper"]) == (512, 512 * 513 // 2, 0)
        assert page.locator("#grid canvas.mini").count() == 36
        assert page.locator("#bytes .b").count() == T == 512
        t1 = time.perf_counter()
        page.hover("#bytes .b[data-i='500']")
        page.wait_for_selector("#row-highlight[data-row='500']")
        hover_seconds = time.perf_counter() - t1
        screenshot(page, "page-512.png")
        print(  # how long is bench.inspect's question (a test's pass does not depend on the machine's speed)
            f"\n512 bytes, 6 x 6 heads: analysed and drawn in {seconds:.2f} s "
            f"({page.inner_text('#status')}); hover {hover_seconds * 1e3:.0f} ms"
        )
        assert not page.errors, page.errors
        page.context.close()


def test_page_asks_for_the_api_key_when_the_server_needs_one(browser, tiny_checkpoint):
    key = "page-test-key-41"
    with running_server(tiny_checkpoint, env={"TINYLLM_API_KEY": key}) as srv:
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        page = context.new_page()
        asked = []
        page.on("dialog", lambda d: (asked.append(d.message), d.accept(key)))
        page.goto(srv.url)  # the page's own files load without the key
        page.wait_for_function("document.getElementById('head').options.length > 0")  # /v1/model, with the key
        T = analyse(page, "to be")
        assert len(asked) == 1 and "API key" in asked[0]
        assert page.eval_on_selector("#heatmap", READ_CANVAS)["lower"] == T * (T + 1) // 2
        context.close()


# ------------------------------------------------------------------ several models, the heads' summary, characters


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_checkpoint) -> Path:
    """A folder of two checkpoints: the bundled Shakespeare model (whose heads have clear kinds) and the tiny one."""
    root = tmp_path_factory.mktemp("two")
    (root / "shakespeare").symlink_to(ROOT / "checkpoints" / "shakespeare")
    (root / "tiny").symlink_to(tiny_checkpoint)
    return root


def posted_models(page, path: str) -> list[str]:
    """The `model` of every POST the page sent to path, in order."""
    return [json.loads(body).get("model") for url, body in page.posts if url.endswith(path)]


def test_model_selector_and_the_summary_table(browser, two_models):
    with running_server(two_models) as server:
        page = open_page(browser, server.url)
        page.posts = []
        page.on("request", lambda r: r.method == "POST" and page.posts.append((r.url, r.post_data)))
        assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == ["shakespeare", "tiny"]
        analyse(page, TEXT)
        page.wait_for_selector("#summary td[data-head]")
        expected = httpx.post(
            f"{server.url}/v1/attention", json={"model": "shakespeare", "text": TEXT, "format": "summary"}, timeout=60
        ).json()
        cells = page.eval_on_selector_all(
            "#summary td[data-head]", "els => els.map(e => [+e.dataset.layer, +e.dataset.head, e.dataset.label])"
        )
        assert [(layer, head) for layer, head, _ in cells] == [(layer, head) for layer in range(6) for head in range(6)]
        assert [lab or None for _, _, lab in cells] == [lab for row in expected["labels"] for lab in row]
        labelled = [cell for cell in cells if cell[2]]
        assert labelled, "the Shakespeare model has heads of a clear kind on this text"
        layer, head, label = labelled[-1]
        cell = page.locator(f"#summary td[data-layer='{layer}'][data-head='{head}']")
        assert label in cell.inner_text() and " back · " in cell.inner_text()
        cell.click()
        page.wait_for_selector(f"#heatmap[data-layer='{layer}'][data-head='{head}']")
        assert page.input_value("#layer") == str(layer) and page.input_value("#head") == str(head)
        assert "selected" in cell.get_attribute("class")
        page.locator(".summary").screenshot(path=str(ARTIFACTS / "page-summary.png"))
        assert set(posted_models(page, "/v1/attention")) == {"shakespeare"}

        # The other model: its layers and heads in the selectors and the table, its maps on the page.
        tiny = httpx.get(f"{server.url}/v1/model", params={"model": "tiny"}).json()["config"]
        page.select_option("#model", "tiny")
        page.wait_for_function(f"document.getElementById('head').options.length === {tiny['n_head'] + 1}")
        page.wait_for_function(
            f"document.querySelectorAll('#summary td[data-head]').length === {tiny['n_layer'] * tiny['n_head']}"
        )
        page.wait_for_function("document.getElementById('summary-title').textContent.startsWith('tiny')")
        assert posted_models(page, "/v1/attention")[-2:] == ["tiny", "tiny"]  # the maps and the summary
        # The selected layer and head stay where the smaller model has them; the map is the tiny model's.
        layer, head = min(layer, tiny["n_layer"] - 1), min(head, tiny["n_head"] - 1)
        assert page.input_value("#layer") == str(layer) and page.input_value("#head") == str(head)
        T = len(TEXT.encode())
        page.wait_for_selector(f"#heatmap[data-t='{T}'][data-layer='{layer}'][data-head='{head}']")
        rgba = np.array(page.eval_on_selector("#heatmap", READ_CANVAS)["rgba"], dtype=np.float64).reshape(T, T, 4)
        lower = np.tril_indices(T)
        maps = api_attention(server, TEXT, model="tiny")
        assert spearman((rgba[..., :3] @ [0.2126, 0.7152, 0.0722])[lower], maps[layer, head][lower]) > 0.95
        page.fill("#max-new", "4")
        page.click("#generate")
        page.wait_for_selector("#gen-bytes[data-done='true']")
        assert posted_models(page, "/v1/generate") == ["tiny"]
        screenshot(page, "page-models.png")
        assert not page.errors, page.errors
        page.context.close()


def test_character_toggle_shows_the_maps_between_characters(page, server):
    T = analyse(page, TEXT)
    chars = list(TEXT)
    C = len(chars)
    page.click(".toggle label:has(input[value=character])")  # the radio itself is hidden behind its label
    page.wait_for_selector(f"#heatmap[data-t='{C}'][data-unit='character']")
    canvas = page.eval_on_selector("#heatmap", READ_CANVAS)
    assert (canvas["w"], canvas["lower"], canvas["upper"]) == (C, C * (C + 1) // 2, 0)
    shown = [AXIS_SHOWN.get(c, c) for c in chars]
    assert page.eval_on_selector_all("#key-labels span", "els => els.map(e => e.textContent)") == shown
    assert page.eval_on_selector_all("#bytes .b", "els => els.map(e => e.textContent)") == chars
    assert "characters" in page.inner_text("#map-title")

    # Hovering a character shades what it attends to: the server's character view of layer 0, head 0.
    expected = httpx.post(
        f"{server.url}/v1/attention", json={"text": TEXT, "granularity": "character"}, timeout=30
    ).json()["attention"]
    i = chars.index("☃")
    page.hover(f"#bytes .b[data-i='{i}']")
    to = floats(page, "#bytes .b", "to")
    np.testing.assert_allclose([to[k] for k in range(i + 1)], expected[0][0][i][: i + 1], atol=2e-3)  # float16
    screenshot(page, "page-characters.png")

    page.click(".toggle label:has(input[value=byte])")
    page.wait_for_selector(f"#heatmap[data-t='{T}'][data-unit='byte']")
    assert page.locator("#bytes .b").count() == T
