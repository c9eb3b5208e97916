"""The page's panels across text, worked as a learner does and checked against the live server's own answers: the
atlas (or, for a model without one, its controls off with the command that makes it), the head detectors,
activation patching and the same byte in contexts. Shared by tests/test_page_shipped.py."""

from __future__ import annotations

from browser import api
from page_panels import analyse, get, wait_analysed

ATLAS_CONTROLS = ["#atlas-go", "#atlas-query", "#atlas-key", "#atlas-where", "#atlas-char-input", "#atlas-char-go"]
CELL = 6  # the atlas map's cell, in canvas and CSS pixels
CELL_CENTRES = """(el, cell) => { const px = el.getContext("2d").getImageData(0, 0, el.width, el.height).data;
  const out = [], n = el.width / cell;
  for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
    const at = ((r * cell + cell / 2) * el.width + c * cell + cell / 2) * 4;
    out.push(Array.from(px.slice(at, at + 4)));
  }
  return out; }"""


def check_atlas(page, server, model: str, atlas: dict, L: int) -> None:
    """The selected head's atlas: every cell painted, its top pairs, the corpus named; the H → i cell's numbers and
    examples; where H attends to i in every head; a character's bytes on each other, when the corpus has any."""
    layer, head = int(page.input_value("#layer")), int(page.input_value("#head"))
    page.click("#atlas-go")
    page.wait_for_function("document.getElementById('atlas-status').textContent.startsWith('layer ')")
    # each cell's colour is its lift's: blue well above the head's habit, opaque grey where the pair never occurs
    lift = get(server, "/v1/atlas/map", model=model, layer=layer, head=head)["lift"]
    pixels = page.eval_on_selector("#atlas-map", CELL_CENTRES, CELL)
    assert len(pixels) == len(lift) ** 2
    high = [i for i, v in enumerate(x for row in lift for x in row) if v is not None and v >= 2]
    never = [i for i, v in enumerate(x for row in lift for x in row) if v is None]
    assert high and all(pixels[i][2] > pixels[i][0] and pixels[i][3] >= 64 for i in high)
    assert all(pixels[i] == [243, 244, 246, 255] for i in never)
    top = get(server, "/v1/atlas", model=model, layer=layer, head=head, top=12)
    shown = page.eval_on_selector_all("#atlas-top tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
    assert shown == [p["query_text"] for p in top["top_pairs"]]
    assert top["corpus"] == atlas["corpus"]  # GET /v1/model names the atlas the routes read
    status = page.inner_text("#atlas-status")
    assert f"in {atlas['corpus']['windows']} windows" in status and atlas["corpus"]["data_sha256"][:12] in status

    pair = get(server, "/v1/atlas", model=model, layer=layer, head=head, query="H", key="i")
    page.locator("#atlas-map").scroll_into_view_if_needed()
    box = page.locator("#atlas-map").bounding_box()
    page.mouse.click(box["x"] + (ord("i") - 0x20 + 0.5) * CELL, box["y"] + (ord("H") - 0x20 + 0.5) * CELL)
    page.wait_for_selector("#atlas-readout .atlas-examples")
    assert page.inner_text("#atlas-readout").startswith('"H" → "i": mean weight')
    assert page.locator("#atlas-readout .atlas-examples li").count() == len(pair["examples"])

    everywhere = get(server, "/v1/atlas", model=model, query="H", key="i")
    page.click("#atlas-where")
    page.wait_for_function("document.getElementById('atlas-where-out').textContent.includes('pairs.')")
    assert page.inner_text("#atlas-where-out").startswith(f"{everywhere['count']:,} pairs.")
    assert page.locator("#atlas-where-out .chip").count() == min(6, len(everywhere["heads"]))

    if atlas["characters"]:
        char = get(server, "/v1/atlas/binding", model=model)["characters"][0]["character"]
        page.fill("#atlas-char-input", char)
        page.click("#atlas-char-go")
        page.wait_for_selector("#atlas-char tbody tr")
        assert page.locator("#atlas-char tbody tr").count() == L
    else:  # nothing to ask: the controls say why instead of asking
        assert not page.is_enabled("#atlas-char-go") and not page.is_enabled("#atlas-char-input")
        assert "no multi-byte characters" in page.inner_text("#atlas-char-status")
        binding = get(server, "/v1/atlas/binding", model=model)
        assert binding["continuation_bytes"] == 0 and {b for row in binding["binding"] for b in row} == {None}


def check_no_atlas(page, model: str, note: str) -> None:
    """A model without an atlas: the atlas controls are off, the message names the command that makes one, and the
    page asked for no atlas."""
    for control in ATLAS_CONTROLS:
        assert not page.is_enabled(control), control
    status = page.text_content("#atlas-status")
    assert "tinyllm-atlas" in note and note in status
    assert not [u for u in page.requests if "/v1/atlas" in u and f"model={model}" in u]


def check_detectors(page, server, model: str, L: int, H: int, has_atlas: bool) -> None:
    """Every head scored on the text above, the induction heads those of /v1/detectors."""
    out = api(server, "/v1/detectors", model=model, text=page.input_value("#text"))
    page.click("#detect-go")
    page.wait_for_function("!document.getElementById('detect-status').textContent.startsWith('scoring')")
    assert page.locator("#detect-table tbody tr").count() == L * H
    assert page.locator("#detect-table tbody tr.induction").count() == len(out["induction_heads"])
    status = page.inner_text("#detect-status")
    assert status.startswith(f"{len(out['induction_heads'])} induction head(s)")
    assert ("tinyllm-atlas" in status) is not has_atlas  # without an atlas: no corpus scores, and how to get them


def check_patching(page, server, model: str, clean: str, corrupt: str, L: int, H: int) -> None:
    """Both grids of /v1/patch, and a head's cell opening the walkthrough of the clean text's last byte."""
    out = api(server, "/v1/patch", model=model, clean=clean, corrupt=corrupt)
    page.fill("#patch-clean", clean)
    page.fill("#patch-corrupt", corrupt)
    page.click("#patch-go")
    page.wait_for_function("!document.getElementById('patch-status').textContent.startsWith('patching')")
    assert f"clean {out['clean_logit_diff']:.2f}, corrupt {out['corrupt_logit_diff']:.2f}" in page.inner_text(
        "#patch-status"
    )
    assert page.locator("#patch-residual tbody tr").count() == len(out["residual"]) == L
    assert page.locator("#patch-residual thead td").count() == len(clean.encode()) + 1
    assert page.locator("#patch-heads tbody tr").count() == L
    page.locator("#patch-heads tbody tr").nth(L - 1).locator("td").nth(H).click()  # the last layer's last head
    assert page.input_value("#layer") == str(L - 1) and page.input_value("#head") == str(H - 1)
    page.wait_for_selector(f"#step-walk[data-query='{len(clean.encode()) - 1}']")


def check_contexts(page, server, model: str, text: str, byte: str) -> None:
    """The cosines of /v1/contexts, one row per stage."""
    out = api(server, "/v1/contexts", model=model, text=text, byte=byte)
    page.fill("#contexts-text", text)
    page.fill("#contexts-byte", byte)
    page.click("#contexts-go")
    page.wait_for_selector("#contexts-strip tbody tr")
    rows = page.eval_on_selector_all("#contexts-strip tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
    assert rows == [f"{c[0][1]:.3f}" for c in out["cosine"]]


HELD = ["#gen-bytes", "#gen-readout", "#atlas-top", "#detect-table", "#patch-residual", "#patch-heads"]


def leave_answers(page) -> None:
    """Answers of the model now selected in the panels that keep them: a generation with a byte in focus, a patching
    grid, and the atlas where it has one (cheap ones: short texts, few bytes)."""
    page.fill("#max-new", "2")
    page.click("#generate")
    page.wait_for_selector("#gen-bytes[data-done='true']")
    page.click("#gen-bytes .b.gen")
    page.fill("#patch-clean", "ab")
    page.fill("#patch-corrupt", "cb")
    page.click("#patch-go")
    page.wait_for_selector("#patch-heads tbody tr")
    if page.is_enabled("#atlas-go"):
        page.click("#atlas-go")
        page.wait_for_selector("#atlas-top tbody tr")


def check_answers_gone(page) -> None:
    """After another model was chosen: nothing of the last one's answers is left to click (their layers and heads
    need not exist in this one)."""
    for held in HELD:
        assert page.inner_text(held) == "", held
    assert page.eval_on_selector("#atlas-map", "el => el.width") == 0
    assert not page.is_enabled("#analyse-generated")


ANALYSIS_VIEWS = ["#bytes", "#grid", "#summary", "#step-bytes", "#step-walk", "#lens", "#next-bars"]


def switch_model(page, first: str, first_context: int, model: str, context: int) -> None:
    """From the first model, with its answers left in every panel that keeps them, to `model`: nothing of the first
    model's stays to be clicked into a request the new one would refuse. Where the first model's context allows,
    its maps are of a text longer than the new model's context, which the new model cannot analyse: then the
    analysis views go too."""
    wait_analysed(page, first, page.input_value("#text"))
    leave_answers(page)
    too_long = context < first_context
    if too_long:
        analyse(page, first, ("To be, or not to be: that is the question. " * 20)[: context + 1])
    page.select_option("#model", model)
    if too_long:
        page.wait_for_function("document.getElementById('status').textContent.endsWith('shorten it')")
        for view in ANALYSIS_VIEWS:
            assert page.inner_text(view) == "", view
        assert page.eval_on_selector("#heatmap", "el => el.width") == 0
    else:
        page.wait_for_function(
            "m => document.getElementById('summary-title').textContent.startsWith(`${m} · `)", arg=model
        )
    check_answers_gone(page)
