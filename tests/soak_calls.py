"""What the soak's clients send (tests/test_soak.py): one request at a time, drawn at random for a served model, by
kind of client. Every request is built from the model's own config (layers, heads, context), so the valid ones reach
the data and the bad ones are bad for a stated reason: each bad request names the 4xx status and the `param` its
error envelope must carry."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

TEXTS = {  # each model's own kind of text; other names get both
    "shakespeare": ["ROMEO:", "To be, or not to be, that is the question:", "First Citizen:\nBefore we proceed any"],
    "multilingual": ["Grüße, 世界 🙂", "Le chat est sur le tapis.", "Привет, как дела?", "東京は日本の首都です。"],
}
ATLAS_PAIRS = [("H", "i"), ("t", "h"), ("e", " "), ("0x20", "t"), (",", " ")]  # pairs the Shakespeare corpus holds
BODY_LIMIT = 1 << 20  # --max-body-bytes' default
OPENAI_PATHS = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")


@dataclass(frozen=True)
class Model:
    """A served model as GET /v1/model describes it, and whether it has an atlas."""

    name: str
    n_layer: int
    n_head: int
    context: int
    max_batch: int
    has_atlas: bool
    characters: tuple[str, ...]  # multi-byte characters its atlas holds (the most seen): what /v1/atlas/character finds


def served_models(url: str) -> list[Model]:
    models = []
    for card in httpx.get(f"{url}/v1/models").json()["data"]:
        info = httpx.get(f"{url}/v1/model", params={"model": card["id"]}).json()
        binding = httpx.get(f"{url}/v1/atlas/binding", params={"model": card["id"]})
        atlas = binding.status_code == 200
        chars = tuple(c["character"] for c in binding.json()["characters"]) if atlas else ()
        cfg = info["config"]
        shape = (cfg["n_layer"], cfg["n_head"], cfg["context_length"], info["max_batch"])
        models.append(Model(card["id"], *shape, atlas, chars))
    return models


@dataclass
class Call:
    """One request, and what must come back: `expect` (200, or the 4xx of a bad request with its `param`)."""

    method: str
    path: str
    json: object = None
    params: dict | None = None
    content: bytes | None = None
    chunked: bool = False  # send `content` in pieces, without Content-Length
    expect: int = 200
    param: str | None = None
    stream: bool = False
    leave_after: int | None = None  # a stream's client walks away after this many events
    route: str = ""  # the route's template, for counting (default: the path)
    model: str | None = None  # the model that must answer (a 200 JSON body naming one)
    headers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.route = self.route or self.path
        if self.content is not None:
            self.headers.setdefault("content-type", "application/json")

    @property
    def openai(self) -> bool:
        return self.path.startswith(OPENAI_PATHS)


def text_of(rng: random.Random, m: Model) -> str:
    return rng.choice(TEXTS.get(m.name, [t for texts in TEXTS.values() for t in texts]))


def head(rng: random.Random, m: Model) -> list[int]:
    return [rng.randrange(m.n_layer), rng.randrange(m.n_head)]


def sampling(rng: random.Random) -> dict:
    return {
        "temperature": rng.choice([0, 0.7, 1.0]),
        "top_k": rng.choice([0, 40]),
        "top_p": rng.choice([1.0, 0.9]),
        "seed": rng.randrange(1 << 31),
    }


def stream_calls(rng: random.Random, m: Model) -> list[Call]:
    """Streams, native and OpenAI, in the batch or in the exact model (heads off), some with a prompt of several
    prefill chunks; a third of the time the client leaves after 0 to 20 events (0: as soon as the headers came)."""

    def leave() -> int | None:
        return rng.randint(0, 20) if rng.random() < 1 / 3 else None

    prompt, tokens = text_of(rng, m), rng.randint(8, 96)
    native = {
        "model": m.name,
        "prompt": prompt,
        "max_new_tokens": tokens,
        "logprobs": rng.choice([0, 2]),
        "stream": True,
    }
    options = {"stream_options": {"include_usage": True}} if rng.random() < 0.5 else {}
    openai = {"model": m.name, "prompt": prompt, "max_tokens": tokens, "n": rng.choice([1, 2]), "stream": True}
    long = ("To be, or not to be. " * m.context)[: m.context - 100]
    bodies = [
        ("/v1/generate", {**native, **sampling(rng)}),
        ("/v1/completions", {**openai, **options, **sampling(rng)}),
        ("/v1/generate", {**native, **sampling(rng), "heads_off": [head(rng, m)], "max_new_tokens": 24}),
        ("/v1/generate", {**native, **sampling(rng), "prompt": long, "max_new_tokens": 32}),
    ]
    return [Call("POST", path, body, stream=True, leave_after=leave()) for path, body in bodies]


def generate_calls(rng: random.Random, m: Model) -> list[Call]:
    """Whole answers: native (with logprobs, stops, attention rows, heads off, explain, truncation) or OpenAI
    (n choices, byte-id prompts, echo, prompt scoring)."""
    prompt, tokens = text_of(rng, m), rng.randint(1, 48)
    native = {"model": m.name, "prompt": prompt, "max_new_tokens": tokens, **sampling(rng)}
    openai = {"model": m.name, "prompt": prompt, "max_tokens": tokens, **sampling(rng)}
    layer, h = head(rng, m)
    bodies = [
        ("/v1/generate", {**native, "logprobs": rng.randint(0, 5), "stop": rng.choice([[], ["\n"], [" ", "e"]])}),
        ("/v1/generate", {**native, "attention": {"layers": [layer], "heads": [h]}}),
        ("/v1/generate", {**native, "heads_off": [[layer, h]], "max_new_tokens": 8}),
        ("/v1/generate", {**native, "explain": {"top": 3}, "max_new_tokens": 4}),
        ("/v1/generate", {**native, "prompt": "ab" * m.context, "truncate": True, "utf8": "any"}),
        ("/v1/completions", {**openai, "n": rng.randint(1, 3), "logprobs": rng.choice([None, 1, 5])}),
        ("/v1/completions", {**openai, "prompt": list(prompt.encode())}),
        ("/v1/completions", {**openai, "prompt": [prompt, "\x00ctl"], "utf8": "any", "echo": True}),
        ("/v1/completions", {"model": m.name, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}),
    ]
    return [Call("POST", path, body, model=m.name) for path, body in bodies]


def inspect_calls(rng: random.Random, m: Model) -> list[Call]:
    """The looking-inside routes, with indices in range for the model and the text."""
    text = text_of(rng, m)
    n = len(text.encode())
    layer, h = head(rng, m)
    about = {"model": m.name, "text": text}
    off = {"heads_off": [[layer, h]], "ablation": rng.choice(["zero", "mean"])}
    fmt = rng.choice([{}, {"format": "npy", "dtype": "float16"}, {"format": "summary"}, {"granularity": "character"}])
    bodies = [
        ("/v1/attention", {**about, "layers": [layer], **fmt, **rng.choice([{}, off])}),
        ("/v1/attention", {**about, "layers": [layer], "heads": [h], "format": "png"}),
        ("/v1/attention/explain", {**about, "layer": layer, "head": h, "query": rng.randrange(n)}),
        ("/v1/lens", {**about, "top_k": rng.randint(1, 20)}),
        ("/v1/next-byte", {**about, "position": rng.randrange(n)}),
        ("/v1/attribute", {**about, "position": rng.randrange(n - 1), "top": 5}),
        ("/v1/attribute", {**about, "position": n - 1, "target": rng.randrange(256)}),
        ("/v1/ablate", {**about, **off}),
        ("/v1/detectors", rng.choice([{"model": m.name}, about])),
        ("/v1/contexts", {"model": m.name, "text": "the cat and the hat", "byte": "t", "other_text": "at the top"}),
        ("/v1/patch", {"model": m.name, "clean": "ROMEO: ... ROME", "corrupt": "JULIO: ... ROME", "target": "O"}),
    ]
    return [Call("POST", path, body, model=m.name) for path, body in bodies]


CHARACTER = "/v1/atlas/character"


def atlas_calls(rng: random.Random, m: Model) -> list[Call]:
    """The atlas routes with parameters that reach its data (a 404 naming the model where it has no atlas): a character
    the atlas holds, or, over a corpus without one (the Shakespeare corpus is ASCII), "é" and its 404 naming it."""
    layer, h = head(rng, m)
    query, key = rng.choice(ATLAS_PAIRS)
    choices = [
        ("/v1/atlas", {"layer": layer, "head": h, "query": query, "key": key}),
        ("/v1/atlas", {"query": query, "key": key}),
        ("/v1/atlas", {"layer": layer, "head": h, "top": rng.randint(1, 50), "min_count": rng.choice([1, 20])}),
        ("/v1/atlas/map", {"layer": layer, "head": h}),
        ("/v1/atlas/binding", {}),
    ]
    calls = [Call("GET", path, params={"model": m.name, **q}, model=m.name) for path, q in choices]
    if m.characters:
        calls.append(Call("GET", CHARACTER, params={"model": m.name, "char": rng.choice(m.characters)}, model=m.name))
    else:
        calls.append(Call("GET", CHARACTER, params={"model": m.name, "char": "é"}, expect=404, param="char"))
    if not m.has_atlas:
        for call in calls:
            call.expect, call.param = 404, "model"
    return calls


def text_calls(rng: random.Random, m: Model) -> list[Call]:
    """Tokenizing, the models' descriptions, health, metrics, the page and the API's documentation."""
    text = text_of(rng, m)
    return [
        Call("POST", "/v1/tokenize", {"model": m.name, "text": text}),
        Call("POST", "/tokenize", {"model": m.name, "prompt": text, "return_token_strs": True}),
        Call("POST", "/detokenize", {"model": m.name, "tokens": list(text.encode())}),
        Call("GET", "/tokenizer_info", params={"model": m.name}),
        Call("GET", "/v1/model", params={"model": m.name}, model=m.name),
        Call("GET", "/v1/models"),
        Call("GET", f"/v1/models/{m.name}", route="/v1/models/{model}"),
        Call("GET", "/health"),
        Call("GET", "/metrics"),
        Call("GET", "/"),
        Call("GET", "/docs"),
        Call("GET", "/openapi.json"),
    ]


@functools.cache
def oversized_body(model: str) -> bytes:
    """A generate body just over the body limit (built once: a megabyte per request is the server's to refuse)."""
    return json.dumps({"model": model, "prompt": "z" * BODY_LIMIT}).encode()


def bad_calls(rng: random.Random, m: Model) -> list[Call]:
    """Requests the server must refuse with a 4xx envelope: too big, too long, an unknown model, an index out of
    range, a body that is not JSON or not Unicode."""
    over = "z" * (m.context + 1)
    layer, h = head(rng, m)
    big = oversized_body(m.name)
    return [
        Call("POST", "/v1/generate", content=big, expect=413),
        Call("POST", "/v1/completions", content=big, chunked=True, expect=413),
        Call("POST", "/v1/generate", {"model": m.name, "prompt": "z" * 70_000}, expect=413, param="prompt"),
        Call("POST", "/v1/generate", {"model": m.name, "prompt": over, "stream": True}, expect=400, param="prompt"),
        Call("POST", "/v1/completions", {"model": m.name, "prompt": over}, expect=400, param="prompt"),
        Call("POST", "/v1/attention", {"model": m.name, "text": over}, expect=400, param="text"),
        Call("POST", "/v1/generate", {"model": "no-such-model", "prompt": "hi"}, expect=404, param="model"),
        Call("POST", "/v1/completions", {"model": "no-such-model", "prompt": "hi"}, expect=404, param="model"),
        Call("GET", "/v1/models/no-such-model", route="/v1/models/{model}", expect=404, param="model"),
        Call("POST", "/v1/attention", {"model": m.name, "text": "hi", "heads": [m.n_head]}, expect=400, param="heads"),
        Call(
            "POST",
            "/v1/attention/explain",
            {"model": m.name, "text": "hi", "layer": m.n_layer, "head": h, "query": 0},
            expect=400,
            param="layer",
        ),
        Call(
            "GET", "/v1/atlas/map", params={"model": m.name, "layer": layer, "head": m.n_head}, expect=400, param="head"
        ),
        Call(
            "POST",
            "/v1/generate",
            {"model": m.name, "prompt": "hi", "heads_off": [[layer, m.n_head]]},
            expect=400,
            param="heads_off",
        ),
        Call("POST", "/v1/generate", content=b'{"prompt": "unfinished', expect=400),
        Call("POST", "/v1/tokenize", content=b'{"text": "\\ud800"}', expect=400, param="text"),
        Call("POST", "/v1/ablate", {"model": m.name, "text": "h", "heads_off": [[0, 0]]}, expect=400, param="text"),
    ]


KINDS: dict[str, Callable[[random.Random, Model], list[Call]]] = {
    "stream": stream_calls,
    "generate": generate_calls,
    "inspect": inspect_calls,
    "atlas": atlas_calls,
    "text": text_calls,
    "bad": bad_calls,
}
