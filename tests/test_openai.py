"""The OpenAI-compatible routes, through the official `openai` client, against a real server process.

Expectations come from the model package run directly on the same checkpoint (an outside reference for
the HTTP layer): greedy continuations, per-token log-probabilities, penalised greedy decoding.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
import torch.nn.functional as F

from model import TinyLLM
from model.sampling import SamplingParams, apply_presence_frequency_penalty, sample
from model.tokenizer import ByteTokenizer

MODEL = "tiny"  # the checkpoint folder's name


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return TinyLLM.load(tiny_checkpoint, device="cpu")


def complete(client, **kw):
    return client.completions.create(model=MODEL, **kw)


def stream(client, **kw) -> list:
    return list(client.completions.create(model=MODEL, stream=True, **kw))


def joined(chunks, index: int = 0) -> tuple[str, dict, str | None]:
    """A streamed choice's text, its concatenated logprobs, and its finish_reason."""
    text, lp, finish = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}, None
    for chunk in chunks:
        for c in chunk.choices:
            if c.index != index:
                continue
            text += c.text
            finish = c.finish_reason or finish
            if c.logprobs is not None:
                for k in lp:
                    lp[k] += getattr(c.logprobs, k)
    return text, lp, finish


def byte_of(token: str) -> int:
    """Inverse of the documented token text: the character for ASCII, "\\xNN" for other bytes."""
    return ord(token) if len(token) == 1 else int(token[2:], 16)


@torch.inference_mode()
def next_byte_logprobs(llm, ids: list[int]) -> torch.Tensor:
    """(T, vocab): row t is log P(next byte | ids[:t+1]), one full forward pass without the cache."""
    logits, _ = llm.model(torch.tensor([ids]))
    return F.log_softmax(logits[0].float(), dim=-1)


def assert_openai_error(r: httpx.Response, status: int, param: str | None, code: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param and body["error"]["code"] == code, body
    assert body["error"]["message"] and "Traceback" not in r.text


# ---------------------------------------------------------------- models


def test_models_list_and_retrieve(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model" and models[0].owned_by == "tinyllm"
    assert models[0].model_extra["max_model_len"] == 64
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"


# ---------------------------------------------------------------- completions


def test_greedy_completion_equals_model_package(client, llm):
    r = complete(client, prompt="ROMEO:", max_tokens=20, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL and r.id.startswith("cmpl-")
    (choice,) = r.choices
    assert choice.text == llm.generate("ROMEO:", max_new_tokens=20, temperature=0).text
    assert choice.finish_reason == "length" and choice.logprobs is None and choice.index == 0
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 20, 26)


def test_max_tokens_defaults_to_16_and_null_asks_for_what_fits(client):
    assert complete(client, prompt="x", temperature=0).usage.completion_tokens == 16
    any_bytes = {"utf8": "any"}  # every byte counts up to the limit (with "valid", a character may not fit)
    r = complete(client, prompt="y" * 60, max_tokens=None, temperature=0, extra_body=any_bytes)  # context: 64
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


# ---------------------------------------------------------------- the context (as vLLM: a 400, never cut short)


def test_prompt_plus_max_tokens_past_the_context_is_400_naming_the_numbers(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, prompt="y" * 60, max_tokens=50)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "max_tokens"
    assert e.value.body["message"] == (
        "This model's maximum context length is 64 tokens. However, you requested 110 tokens "
        "(60 in the messages, 50 in the completion). Please reduce the length of the messages or completion."
    )
    # the longest of several prompts decides; streaming is refused before it starts
    body = {"model": MODEL, "prompt": ["short", "z" * 62], "max_tokens": 3, "stream": True}
    r = httpx.post(f"{server.url}/v1/completions", json=body)
    assert_openai_error(r, 400, "max_tokens", "context_length_exceeded")
    assert "65 tokens (62 in the messages, 3 in the completion)" in r.json()["error"]["message"]


@pytest.mark.parametrize("max_tokens", [0, None])
def test_a_prompt_longer_than_the_context_is_400_on_the_prompt(server, max_tokens):
    body = {"model": MODEL, "prompt": list(b"y" * 65), "max_tokens": max_tokens, "echo": True, "logprobs": 1}
    r = httpx.post(f"{server.url}/v1/completions", json=body)
    assert_openai_error(r, 400, "prompt", "context_length_exceeded")
    assert "maximum context length is 64 tokens. However, you requested 65 tokens" in r.json()["error"]["message"]


def test_a_full_context_prompt_scores_but_cannot_generate(client, server, llm):
    """lm-eval's scoring request is echo + max_tokens 1, and it drops the last logprob as the generated token's.
    A prompt that fills the context leaves no room for that token: a 200 would make it drop a real byte's score."""
    ids = list(b"To be, or not to be, that is the question: whether 'tis nobler in")[:64]
    assert len(ids) == 64
    lm_eval_request = {"model": MODEL, "prompt": [ids], "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/completions", json=lm_eval_request)
    assert_openai_error(r, 400, "max_tokens", "context_length_exceeded")
    scored = complete(client, prompt=ids, max_tokens=0, echo=True, logprobs=1).choices[0]
    ref = next_byte_logprobs(llm, ids)
    assert scored.logprobs.token_logprobs[1:] == pytest.approx(
        [float(ref[t - 1, ids[t]]) for t in range(1, 64)], abs=1e-5
    )
    as_many_as_fit = httpx.post(
        f"{server.url}/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": None}
    )
    assert_openai_error(as_many_as_fit, 400, "prompt", "context_length_exceeded")
    assert (
        "64 tokens in the messages, which leaves none for the completion" in as_many_as_fit.json()["error"]["message"]
    )
    fits = complete(client, prompt=ids[:63], max_tokens=1, echo=True, logprobs=1, temperature=0).choices[0]
    assert len(fits.logprobs.token_logprobs) == 64 and fits.finish_reason == "length"


def test_byte_id_prompts_equal_text_prompts(client):
    by_text = complete(client, prompt="Hi", max_tokens=10, temperature=0).choices[0].text
    assert complete(client, prompt=list(b"Hi"), max_tokens=10, temperature=0).choices[0].text == by_text
    r = complete(client, prompt=[list(b"Hi"), list(b"Hi")], max_tokens=10, temperature=0)
    assert [c.text for c in r.choices] == [by_text, by_text]


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=0, max_tokens=30),
        dict(temperature=0.9, seed=3, max_tokens=30, logprobs=3),
        dict(temperature=0, max_tokens=30, logprobs=0, echo=True),
    ],
)
def test_stream_concatenates_to_the_non_streamed_choice(client, params):
    whole = complete(client, prompt="To be, or", **params).choices[0]
    chunks = stream(client, prompt="To be, or", **params)
    assert all(c.object == "text_completion" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert all(c.finish_reason is None for chunk in chunks[:-1] for c in chunk.choices)
    text, logprobs, finish = joined(chunks)
    assert text == whole.text and finish == whole.finish_reason == "length"
    if "logprobs" in params:
        assert logprobs == whole.logprobs.model_dump()


def test_stream_include_usage_adds_a_last_chunk_without_choices(client):
    chunks = stream(client, prompt="abc", max_tokens=7, temperature=0, stream_options={"include_usage": True})
    *body, last = chunks
    assert last.choices == [] and last.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    ) == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
    assert body and all(c.usage is None for c in body)
    assert all(c.usage is None for c in stream(client, prompt="abc", max_tokens=3))  # off by default


def test_logprobs_fields_match_the_model(client, llm):
    prompt = list(b"To be")
    r = complete(client, prompt="To be", max_tokens=12, temperature=0, logprobs=3, extra_body={"utf8": "any"})
    (choice,) = r.choices
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 12
    generated = [byte_of(t) for t in lp.tokens]
    assert ByteTokenizer().decode(generated) == choice.text
    ref = next_byte_logprobs(llm, prompt + generated)
    for i, byte in enumerate(generated):
        row = ref[len(prompt) - 1 + i]
        assert lp.token_logprobs[i] == pytest.approx(float(row[byte]), abs=1e-4)
        ids = torch.topk(row, 3).indices
        top = lp.top_logprobs[i]
        assert {byte_of(t) for t in top} == set(ids.tolist()) | {byte}  # the top 3, plus the chosen byte
        for t, v in top.items():
            assert v == pytest.approx(float(row[byte_of(t)]), abs=1e-4)
        assert lp.token_logprobs[i] == max(top.values())  # greedy picks the most likely
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for token, offset in zip(lp.tokens, lp.text_offset):
        if len(token) == 1:  # ASCII: the token is the character at its offset
            assert choice.text[offset] == token


def test_echo_with_max_tokens_0_scores_the_prompt(client, llm):
    """What evaluation harnesses (lm-eval) do: the prompt's own log-probabilities, the first one null."""
    prompts = ["Hé, to be or not", "xyz"]
    r = complete(client, prompt=prompts, max_tokens=0, echo=True, logprobs=5)
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == sum(len(p.encode()) for p in prompts)
    for prompt, choice in zip(prompts, r.choices):
        ids = list(prompt.encode())
        lp = choice.logprobs
        assert choice.text == prompt and choice.finish_reason == "length"
        assert [byte_of(t) for t in lp.tokens] == ids
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        ref = next_byte_logprobs(llm, ids)
        expected = [float(ref[t - 1, ids[t]]) for t in range(1, len(ids))]
        assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-5)
        for t in range(1, len(ids)):
            top5 = set(torch.topk(ref[t - 1], 5).indices.tolist())
            assert {byte_of(k) for k in lp.top_logprobs[t]} == top5 | {ids[t]}
        assert lp.text_offset == [start for start, _ in ByteTokenizer.byte_char_spans(prompt)]


def test_echo_with_generation_continues_the_offsets(client):
    prompt = "Hé there"
    r = complete(client, prompt=prompt, max_tokens=5, temperature=0, echo=True, logprobs=1)
    (choice,) = r.choices
    alone = complete(client, prompt=prompt, max_tokens=5, temperature=0, logprobs=1).choices[0]
    assert choice.text == prompt + alone.text
    n = len(prompt.encode())
    assert (
        choice.logprobs.tokens
        == [ByteTokenizer.label(b) if b >= 0x80 else chr(b) for b in prompt.encode()] + alone.logprobs.tokens
    )
    assert choice.logprobs.text_offset[n:] == [len(prompt) + o for o in alone.logprobs.text_offset]
    assert choice.logprobs.token_logprobs[n:] == alone.logprobs.token_logprobs
    assert complete(client, prompt=prompt, max_tokens=0, echo=True).choices[0].text == prompt


def test_n_and_list_prompts_batch_and_seed_each_choice(client):
    prompts, raw = ["ab", "xyz"], {"utf8": "any"}  # every choice runs to max_tokens
    r = complete(client, prompt=prompts, n=3, max_tokens=8, temperature=1.0, seed=11, extra_body=raw)
    assert [c.index for c in r.choices] == list(range(6))
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 6 * 8
    for c in r.choices:  # choice j of prompt i is seeded with seed + j
        i, j = divmod(c.index, 3)
        alone = complete(client, prompt=prompts[i], max_tokens=8, temperature=1.0, seed=11 + j, extra_body=raw)
        assert c.text == alone.choices[0].text
    chunks = stream(client, prompt=prompts, n=3, max_tokens=8, temperature=1.0, seed=11, extra_body=raw)
    assert [joined(chunks, c.index)[0] for c in r.choices] == [c.text for c in r.choices]
    greedy = complete(client, prompt="ab", n=2, max_tokens=8, temperature=0).choices
    assert greedy[0].text == greedy[1].text


def test_stop_ends_the_choice_and_is_not_returned(client):
    full = complete(client, prompt="ROMEO:", max_tokens=40, temperature=0).choices[0].text
    ascii_chars = [ch for ch in full[1:] if ch.isascii()]
    assert ascii_chars, f"the tiny model produced no ASCII byte to stop on: {full!r}"
    stop = ascii_chars[0]
    expected = full[: full.index(stop)]
    for stops in (stop, ["\x00never", stop]):
        r = complete(client, prompt="ROMEO:", max_tokens=40, temperature=0, stop=stops, logprobs=0)
        (choice,) = r.choices
        assert choice.text == expected and choice.finish_reason == "stop"
        assert ByteTokenizer().decode([byte_of(t) for t in choice.logprobs.tokens]) == expected
        text, logprobs, finish = joined(
            stream(client, prompt="ROMEO:", max_tokens=40, temperature=0, stop=stops, logprobs=0)
        )
        assert (text, finish, logprobs) == (expected, "stop", choice.logprobs.model_dump())
    # a stop string that begins, then does not complete: its held-back bytes come out with their logprobs
    r = complete(client, prompt="ROMEO:", max_tokens=40, temperature=0, stop=stop + "\x00\x00", logprobs=0)
    assert r.choices[0].text == full and len(r.choices[0].logprobs.tokens) == 40


def test_seed_makes_sampling_reproducible(client):
    a, b, c = (
        complete(client, prompt="The", max_tokens=24, temperature=1.0, seed=s).choices[0].text for s in (5, 5, 6)
    )
    assert a == b and a != c


def greedy_with_penalties(llm, prompt: list[int], n: int, presence: float, frequency: float) -> list[int]:
    """OpenAI's definition, from scratch: logits -= presence * (count > 0) + frequency * count, generated only."""
    ids, generated = list(prompt), []
    for _ in range(n):
        logits = next_byte_logprobs(llm, ids)[-1]
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=256).float()
        token = int(torch.argmax(logits - presence * (counts > 0).float() - frequency * counts))
        generated.append(token)
        ids.append(token)
    return generated


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 0.7), (-1.0, 0.3)])
def test_presence_and_frequency_penalties(client, llm, presence, frequency):
    kw = dict(prompt="aaaa", max_tokens=30, temperature=0, logprobs=0, extra_body={"utf8": "any"})  # the raw model
    plain = [byte_of(t) for t in complete(client, **kw).choices[0].logprobs.tokens]
    r = complete(client, presence_penalty=presence, frequency_penalty=frequency, **kw)
    penalised = [byte_of(t) for t in r.choices[0].logprobs.tokens]
    assert penalised == greedy_with_penalties(llm, list(b"aaaa"), 30, presence, frequency)
    assert penalised != plain


PENALTIES = [{"presence_penalty": 1.5}, {"frequency_penalty": 0.8, "repetition_penalty": 1.3}]


@pytest.mark.parametrize("penalties", PENALTIES)
def test_tinyllm_generate_takes_the_penalties_and_gives_the_servers_bytes(client, llm, penalties):
    """TinyLLM.generate takes every field of SamplingParams, the penalties included: sampled with a seed, it gives the
    server's bytes for the same request, and the penalties change them."""
    kw = dict(max_new_tokens=40, temperature=0.9, top_k=60, seed=11)
    ours = llm.generate("aaaa", **kw, **penalties)
    standard = {k: v for k, v in penalties.items() if k != "repetition_penalty"}  # an extra field for OpenAI's client
    extra = {"top_k": kw["top_k"], **({"repetition_penalty": 1.3} if "repetition_penalty" in penalties else {})}
    r = complete(client, prompt="aaaa", max_tokens=40, temperature=0.9, seed=11, extra_body=extra, **standard)
    assert r.choices[0].text == ours.text and len(ours.tokens) == 40
    assert llm.generate("aaaa", **kw).tokens != ours.tokens, "the penalties changed nothing"
    with pytest.raises(TypeError, match="presence_penalt"):
        llm.generate("aaaa", presence_penalt=1.0)


def test_penalty_function_is_openais_definition():
    logits = torch.zeros(256)
    out = apply_presence_frequency_penalty(logits, torch.tensor([5, 5, 7]), presence=0.5, frequency=0.25)
    assert (out[5], out[7], out[0]) == (-1.0, -0.75, 0.0)
    # only tokens after the prompt count: here the prompt's 255 is not penalised, the generated 254 is
    params = SamplingParams(temperature=0, frequency_penalty=2.0, valid_utf8=False)
    assert sample(torch.arange(256.0), params, torch.tensor([255, 254]), None, n_prompt=1) == 255
    assert sample(torch.arange(256.0), params, torch.tensor([255, 255]), None, n_prompt=0) == 254


# ---------------------------------------------------------------- errors


def test_unknown_model_is_404_model_not_found(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    assert_openai_error(
        httpx.post(f"{server.url}/v1/completions", json={"model": "nope", "prompt": "x"}),
        404,
        "model",
        "model_not_found",
    )


@pytest.mark.parametrize(
    "body, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [256]}, "prompt"),
        ({"prompt": [{"text": "x"}]}, "prompt"),
        ({"stop": [""]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"model": None}, "model"),
    ],
)
def test_bad_parameters_are_400_in_openai_shape(server, body, param):
    r = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x", **body})
    assert_openai_error(r, 400, param)


def test_bad_parameter_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, prompt="x", temperature=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        complete(client, prompt="x", extra_body={"frobnicate": 1})


def test_not_json_is_400_in_openai_shape(server):
    r = httpx.post(f"{server.url}/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_openai_error(r, 400, None)


def test_native_routes_keep_their_envelope(server):
    r = httpx.post(f"{server.url}/v1/generate", json={"prompt": "x", "frobnicate": 1})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param"}
