"""Generated text is valid UTF-8: the grammar (model.utf8) against Python's own decoder, the masked sampler
(only allowed bytes, whatever the logits), and a live server on the multilingual model: no replacement
character with the default, some with "any"; replies of exactly max_new_tokens bytes never end inside a
character."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import utf8
from model.sampling import SamplingParams, sample_rows
from server.process import ROOT, running_server
from support import assert_envelope

MULTILINGUAL = ROOT / "checkpoints" / "multilingual"
PROMPTS = {
    "de": "Der Himmel über",
    "el": "Η Αθήνα είναι",
    "emoji": "🙂🎉",
    "en": "The city of",
    "es": "El cielo de",
    "fr": "La ville de",
    "ja": "東京の",
    "ru": "Москва —",
    "zh": "北京是",
}


def encoded_prefixes() -> set[bytes]:
    """Every proper prefix of every character's encoding, from Python's encoder (surrogates excluded)."""
    out = set()
    for code in range(0x80, 0x110000):
        if not 0xD800 <= code < 0xE000:
            encoded = chr(code).encode()
            out.update(encoded[:k] for k in range(1, len(encoded)))
    return out


PARTIAL = encoded_prefixes()


def is_valid_prefix(data: bytes) -> bool:
    """The oracle, from Python's codec alone: data is whole characters (each one Python decodes strictly), then at
    most the beginning of one more."""
    i = 0
    while i < len(data):
        for n in (1, 2, 3, 4):
            try:
                if len(data) - i >= n and len(data[i : i + n].decode("utf-8")) == 1:
                    i += n
                    break
            except UnicodeDecodeError:
                pass
        else:
            return data[i:] in PARTIAL
    return True


def test_the_grammar_agrees_with_pythons_decoder_on_every_short_sequence():
    """Every sequence of up to 2 bytes, every 3-byte sequence after a lead byte E0-F4, and every 4-byte one after
    F0-F4 with continuation-range bytes: valid exactly where Python's decoder says so."""
    tails = range(0x70, 0xD0)  # both sides of the continuation range
    sequences = itertools.chain(
        (bytes([a]) for a in range(256)),
        (bytes([a, b]) for a in range(256) for b in range(256)),
        (bytes([a, b, c]) for a in range(0xE0, 0xF5) for b in tails for c in tails),
        (bytes([a, b, c, d]) for a in range(0xF0, 0xF5) for b in tails for c in (0x80, 0xBF, 0xC0) for d in tails),
    )
    for data in sequences:
        assert (utf8.state_after(data) is not None) == is_valid_prefix(data), data.hex()
        if (state := utf8.state_after(data)) is not None:
            complete = data.decode("utf-8", errors="ignore").encode() == data
            assert (utf8.DUE[state] == 0) == complete, data.hex()


def test_a_window_of_valid_text_may_begin_and_end_inside_a_character():
    text = "añ東🙂".encode()
    for start in range(len(text)):
        for end in range(start + 1, len(text) + 1):
            assert utf8.state_after_window(text[start:end]) is not None, text[start:end].hex()
    assert utf8.state_after_window(b"\x80\x80\x80\x80A") is None, "four continuation bytes are no character's end"
    assert utf8.state_after_window(b"\x9dA\xff") is None and utf8.state_after_window(b"A\xc0\x80") is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-30, 30, allow_nan=False), min_size=256, max_size=256),
    st.integers(0, utf8.N_STATES - 1),
    st.integers(1, 6),
    st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    st.integers(0, 2**63),
)
def test_the_masked_sampler_only_returns_allowed_bytes(logits, state, room, temperature, seed):
    """Whatever the logits: a byte the state allows, and (at a character's start) one that begins a character
    that fits in the room left."""
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0)
    mask = utf8.mask_row(state, room)
    (token,) = sample_rows(torch.tensor([logits]), [params], [None], [0], [seed], [0], [mask])
    after = utf8.advance(state, token)
    assert after >= 0
    assert state != utf8.START or 1 + utf8.DUE[after] <= room


def test_ten_thousand_masked_random_streams_all_decode():
    """10,000 streams of exactly 40 bytes from random logits that favour invalid bytes, sampled as the server
    does (one batch, the mask, no character started without room to finish it): every stream decodes, and some
    hold 2-, 3- and 4-byte characters."""
    n, limit = 10_000, 40
    gen = torch.Generator().manual_seed(0)
    bias = torch.zeros(256)
    bias[0x80:] = 3.0  # continuation and lead bytes (and the forbidden ones) are the likely ones
    params = [SamplingParams(temperature=[0.0, 1.0, 2.0][i % 3]) for i in range(n)]
    states, streams = [utf8.START] * n, [bytearray() for _ in range(n)]
    for step in range(limit):
        logits = torch.randn(n, 256, generator=gen) * 2 + bias
        masks = [utf8.mask_row(states[i], limit - step) for i in range(n)]
        tokens = sample_rows(logits, params, [None] * n, [0] * n, list(range(n)), [step] * n, masks)
        for i, token in enumerate(tokens):
            states[i] = utf8.advance(states[i], token)
            assert states[i] >= 0
            streams[i].append(token)
    assert {len(s) for s in streams} == {limit}
    texts = [bytes(s).decode("utf-8") for s in streams]  # never raises
    lengths = {len(ch.encode()) for text in texts for ch in text}
    assert lengths == {1, 2, 3, 4}


# ---------------------------------------------------------------- a live server on the multilingual model


@pytest.fixture(scope="module")
def multilingual():
    with running_server(MULTILINGUAL, "--max-batch", "64") as srv:
        yield srv


def sample_all(url: str, bodies: list[dict]) -> list[dict]:
    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            return await asyncio.gather(*(c.post("/v1/generate", json=b) for b in bodies))

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:1]
    return [r.json() for r in responses]


def test_hot_sampling_in_every_language_gives_valid_text_by_default_and_not_with_any(multilingual):
    """Temperature 1.5, 50 samples of 200 bytes per language (the model's context is 256 bytes: 300 do not fit):
    no replacement character by default; with "any", the raw model produces some, so the test can fail."""
    bodies = [
        {"prompt": prompt, "max_new_tokens": 200, "temperature": 1.5, "seed": seed}
        for prompt in PROMPTS.values()
        for seed in range(50)
    ]
    valid = sample_all(multilingual.url, bodies)
    assert not [r["text"] for r in valid if "\ufffd" in r["text"]]
    for r in valid:
        assert bytes(t["id"] for t in r["tokens"]).decode("utf-8") == r["text"]
        assert r["usage"]["completion_tokens"] == len(r["text"].encode()) == 200
    raw = sample_all(multilingual.url, [{**b, "utf8": "any"} for b in bodies if b["seed"] < 10])
    assert sum("\ufffd" in r["text"] for r in raw) >= 5


def test_a_reply_never_ends_inside_a_character(multilingual):
    """Japanese is three bytes a character: with every limit from 1 to 12 bytes the reply has exactly that many
    bytes and ends on a whole character (near the limit only characters that fit are started). With "any" the
    limit cuts characters."""
    bodies = [
        {"prompt": "東京の", "max_new_tokens": m, "temperature": 0.9, "seed": s} for m in range(1, 13) for s in range(3)
    ]
    for body, r in zip(bodies, sample_all(multilingual.url, bodies)):
        assert "\ufffd" not in r["text"] and r["finish_reason"] == "length"
        assert r["usage"]["completion_tokens"] == len(r["text"].encode()) == len(r["tokens"]) == body["max_new_tokens"]
    raw = sample_all(multilingual.url, [{**b, "utf8": "any"} for b in bodies])
    assert any(r["text"].endswith("\ufffd") for r in raw)
    assert all(r["usage"]["completion_tokens"] == b["max_new_tokens"] for b, r in zip(bodies, raw))


def test_a_prompt_ending_inside_a_character_is_continued_validly(multilingual):
    """Byte ids on the OpenAI route: a prompt ending with the first two bytes of 東 (E6 9D) gets a continuation
    byte first; an invalid prompt is a 400 naming it unless "any" is asked."""
    body = {"model": "multilingual", "max_tokens": 20, "temperature": 1.2, "seed": 3, "logprobs": 0}
    r = httpx.post(f"{multilingual.url}/v1/completions", json={**body, "prompt": [0x41, 0xE6, 0x9D]})
    assert r.status_code == 200, r.text
    first = r.json()["choices"][0]["logprobs"]["tokens"][0]
    assert first.startswith("\\x") and 0x80 <= int(first[2:], 16) <= 0xBF, first
    bad = httpx.post(f"{multilingual.url}/v1/completions", json={**body, "prompt": [0x41, 0xFF]})
    assert_envelope(bad, 400, param="prompt", openai=True)
    assert "utf8" in bad.json()["error"]["message"]
    ok = httpx.post(f"{multilingual.url}/v1/completions", json={**body, "prompt": [0x41, 0xFF], "utf8": "any"})
    assert ok.status_code == 200
    scored = {**body, "prompt": [0x9D, 0x41, 0xFF], "max_tokens": 0, "echo": True}  # scoring takes any bytes
    assert httpx.post(f"{multilingual.url}/v1/completions", json=scored).status_code == 200
    window = {**body, "prompt": [0x9D, 0x41]}  # a window of text that begins inside a character, as lm-eval cuts
    assert httpx.post(f"{multilingual.url}/v1/completions", json=window).status_code == 200


def test_logprobs_are_the_models_own_and_agree_across_routes(multilingual):
    """The reported log-probability of a byte is the unmasked model's (prompt scoring gives the same number), and
    /v1/generate, its stream and /v1/completions report the same bytes and numbers for one seeded request."""
    gen = {"prompt": "Москва —", "max_new_tokens": 24, "temperature": 1.0, "seed": 5, "logprobs": 1}
    whole = httpx.post(f"{multilingual.url}/v1/generate", json=gen).json()
    with httpx.stream("POST", f"{multilingual.url}/v1/generate", json={**gen, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: {")]
    streamed = [httpx.Response(200, content=line[6:]).json() for line in events[:-1]]
    assert [e["token"]["id"] for e in streamed] == [t["id"] for t in whole["tokens"]]
    assert [e["token"]["logprob"] for e in streamed] == [t["logprob"] for t in whole["tokens"]]
    openai = {"model": "multilingual", "prompt": gen["prompt"], "max_tokens": 24, "temperature": 1.0, "seed": 5}
    choice = httpx.post(f"{multilingual.url}/v1/completions", json={**openai, "logprobs": 1}).json()["choices"][0]
    assert choice["text"] == whole["text"]
    assert choice["logprobs"]["token_logprobs"] == [t["logprob"] for t in whole["tokens"]]
    prompt = list(gen["prompt"].encode())
    ids = prompt + [t["id"] for t in whole["tokens"]]
    scored = httpx.post(
        f"{multilingual.url}/v1/completions",
        json={"model": "multilingual", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0},
    ).json()["choices"][0]["logprobs"]["token_logprobs"][len(prompt) :]
    # the int8 step's numbers against the exact model's: close, not equal (masked, they would be renormalised)
    assert scored == pytest.approx([t["logprob"] for t in whole["tokens"]], abs=0.1)
