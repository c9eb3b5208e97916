"""Every panel of the page on every bundled model, served as `make serve` and the Docker image serve them
(conftest's shipped_server), in a real headless Chromium. Each panel must draw something real (painted cells, rows,
numbers equal to the API's: tests/page_panels.py, tests/page_panels_across.py), and nothing may go wrong on the way:
no console error, no page error, no request that failed at the network level or was answered with 400 or more.
And a model without an atlas (the tiny fixture model): its atlas controls are off, with the command that makes one,
and the page asks for no atlas."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from browser import NEEDS_BROWSER, open_page
from page_panels import check_generate, check_head_view_and_walkthrough, check_heads, check_maps
from page_panels_across import (
    check_atlas,
    check_contexts,
    check_detectors,
    check_no_atlas,
    check_patching,
    switch_model,
)
from server.config import Settings
from server.models import find_checkpoints, model_name
from server.process import ROOT

pytestmark = NEEDS_BROWSER

# What `python -m server` serves with the default settings, in its order.
BUNDLED = [
    model_name(p) for p in find_checkpoints([ROOT / p for p in Settings.model_fields["checkpoint"].default_factory()])
]
# The text each model is shown: the page's own for the Shakespeare model (what a learner sees first); text of 2-,
# 3- and 4-byte characters for the others; patching needs two texts of one length in bytes.
TEXT = "Grüße aus Köln! Привет, мир. 猫が好き 🙂 Ça va?"
PATCH = ("Привет, Анна! Привет, Анна", "Привет, Олег! Привет, Анна")
CONTEXTS = ("Café, thé et crème", "e")


@contextlib.contextmanager
def watched(page):
    """Fails on any console or page error and any failed request, and names them when a wait times out instead."""
    try:
        yield
    except Exception as e:
        e.add_note(f"errors: {page.errors}\nfailed requests: {page.failed}")
        raise
    assert not page.errors, page.errors
    assert not page.failed, page.failed


@pytest.mark.parametrize("model", BUNDLED)
def test_every_panel_works_on_a_bundled_model(browser, shipped_server, model):
    t0 = time.perf_counter()
    info = httpx.get(f"{shipped_server.url}/v1/model", params={"model": model}).json()
    L, H = info["config"]["n_layer"], info["config"]["n_head"]
    page = open_page(browser, shipped_server.url)
    with watched(page):
        assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == BUNDLED
        if model != BUNDLED[0]:
            first = httpx.get(f"{shipped_server.url}/v1/model", params={"model": BUNDLED[0]}).json()
            switch_model(page, BUNDLED[0], first["context_length"], model, info["context_length"])
        text = page.input_value("#text") if model == "shakespeare" else TEXT
        T = check_maps(page, shipped_server, model, text, L, H)
        check_head_view_and_walkthrough(page, shipped_server, model, text, T)
        check_heads(page, shipped_server, model, text, T, L, H)
        check_generate(page, shipped_server, model, info["context_length"], L, H)
        if info["atlas"]:
            check_atlas(page, shipped_server, model, info["atlas"], L)
        else:
            check_no_atlas(page, model, info["atlas_note"])
        check_detectors(page, shipped_server, model, L, H, has_atlas=bool(info["atlas"]))
        if model == "shakespeare":  # the page's own examples
            clean, corrupt = page.input_value("#patch-clean"), page.input_value("#patch-corrupt")
            check_patching(page, shipped_server, model, clean, corrupt, L, H)
            check_contexts(page, shipped_server, model, page.input_value("#contexts-text"), "e")
        else:
            check_patching(page, shipped_server, model, *PATCH, L, H)
            check_contexts(page, shipped_server, model, *CONTEXTS)
    page.context.close()
    print(f"\n{model}: every panel in {time.perf_counter() - t0:.1f} s")


def test_a_model_without_an_atlas_says_how_to_make_one_and_asks_for_none(browser, server):
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["atlas"] is None and "tinyllm-atlas" in info["atlas_note"]
    page = open_page(browser, server.url)
    with watched(page):
        page.wait_for_function("document.getElementById('atlas-status').textContent !== ''")
        check_no_atlas(page, info["model"], info["atlas_note"])
        page.fill("#text", "abcabc")  # the detectors' text, within the tiny model's context
        cfg = info["config"]
        check_detectors(page, server, info["model"], cfg["n_layer"], cfg["n_head"], has_atlas=False)
    page.context.close()
