"""The page's panels across text, in a real headless Chromium: the atlas (map, a cell's examples, where a pair happens
most, a character's bytes), the head detectors, activation patching (both grids, a click into the walkthrough) and
the same byte in contexts. Screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest

from browser import NEEDS_BROWSER, screenshot
from model import checkpoint
from model.atlas_cli import main as atlas_main
from server.process import running_server
from support import sharp_model

pytestmark = NEEDS_BROWSER

SEGMENT = "Hi, Hello! hi é there; Him 猫 his 🙂 it."
CORPUS = ((SEGMENT + "." * (64 - len(SEGMENT.encode()))) * 3).encode()
CELL = 6  # the map's cell size in CSS pixels (612 px for 102 groups)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Overrides conftest's: a model with an atlas (the page fixture runs on this server)."""
    path = tmp_path_factory.mktemp("page") / "sharp"
    checkpoint.save(path, sharp_model(seed=7), training={"note": "random weights, sharp attention"})
    data = path.parent / "corpus.txt"
    data.write_bytes(CORPUS)
    assert atlas_main([str(path), "--data", str(data)]) == 0
    with running_server(path) as s:
        yield s


def test_the_atlas_panel_shows_a_heads_map_and_a_pairs_examples(page):
    page.select_option("#layer", "1")
    page.click("#atlas-go")
    page.wait_for_function("document.getElementById('atlas-map').width > 0")
    assert page.locator("#atlas-top tbody tr").count() > 0
    box = page.locator("#atlas-map").bounding_box()
    row, col = ord("H") - 0x20, ord("i") - 0x20
    page.mouse.click(box["x"] + col * CELL + CELL / 2, box["y"] + row * CELL + CELL / 2)
    page.wait_for_selector(".atlas-examples li")
    readout = page.locator("#atlas-readout").inner_text()
    assert readout.startswith('"H" → "i": mean weight') and "Hi" in readout
    page.click("#atlas-where")
    page.wait_for_selector("#atlas-where-out .chip")
    assert page.locator("#atlas-where-out .chip").count() == 4
    page.fill("#atlas-char-input", "猫")
    page.click("#atlas-char-go")
    page.wait_for_selector("#atlas-char tbody tr")
    assert page.locator("#atlas-char tbody tr").count() == 2
    assert "seen 3 times" in page.locator("#atlas-char-status").inner_text()
    page.fill("#text", "ROMEO: abcdefg abcdefg")  # the detectors score the heads on the text above
    page.click("#detect-go")
    page.wait_for_selector("#detect-table tbody tr")
    assert page.locator("#detect-table tbody tr").count() == 4
    page.locator("section.atlas").screenshot(
        path=str(screenshot(page, "page-atlas-full.png").with_name("page-atlas.png"))
    )


def test_the_patching_grids_open_the_walkthrough_and_the_contexts_strip(page):
    page.click("#patch-go")
    page.wait_for_selector("#patch-heads tbody tr")
    assert page.locator("#patch-residual tbody tr").count() == 2
    clean = page.input_value("#patch-clean")
    assert page.locator("#patch-residual thead td").count() == len(clean.encode()) + 1
    assert "clean" in page.locator("#patch-status").inner_text()
    page.locator("#patch-heads tbody tr").nth(1).locator("td").nth(2).click()  # layer 1, head 1
    assert page.input_value("#layer") == "1" and page.input_value("#head") == "1"
    page.wait_for_selector(f"#step-walk[data-query='{len(clean.encode()) - 1}']")  # the walkthrough of its last byte
    page.click("#contexts-go")
    page.wait_for_selector("#contexts-strip tbody tr")
    assert page.locator("#contexts-strip tbody tr").count() == 3  # embedding, layer 0, layer 1
    assert page.locator("#contexts-strip tbody tr").first.locator("td").nth(1).inner_text() == "1.000"
    page.locator("section.patching").screenshot(
        path=str(screenshot(page, "page-patch-full.png").with_name("page-patching.png"))
    )
