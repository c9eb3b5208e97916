"""Fuzzing every route of the server's own OpenAPI schema (schemathesis) against what ships: the server as `make serve`
and the Docker image start it, every bundled model with its atlas (conftest's shipped_server).

Schemathesis's three unit phases run on every operation: examples (the schema's own: the served models' names, a
byte pair and a head for the atlas), coverage (each field's boundaries, missing and wrong-typed values, unexpected
methods) and fuzzing (hypothesis-generated bodies and parameters, valid and invalid). The contract, per answer: never
a 5xx; a 4xx is the error envelope; every JSON body and every stream event is strict JSON (no NaN or Infinity).
And each operation answers 2xx at least once, so the cases reached its core, not only its validation.

FUZZ_EXAMPLES cases per operation and phase (fuzzing); the `slow` test runs a deeper pass.
"""

from __future__ import annotations

import collections
import json
import os

import httpx
import orjson
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.pytest.lazy import get_all_tests

FUZZ_EXAMPLES = int(os.environ.get("TINYLLM_FUZZ_EXAMPLES", "40"))
OPENAI_PREFIXES = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")


def envelope_problem(path: str, status: int, body: bytes) -> str | None:
    """Why an answer breaks the contract (a 5xx, or a 4xx outside the error envelope); None when it is fine."""
    if status >= 500:
        return f"{status}: {body[:300]!r}"
    if status < 400:
        return None
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without the error envelope: {body[:300]!r}"
    keys = {"message", "type", "param"} | ({"code"} if path.startswith(OPENAI_PREFIXES) else set())
    if not isinstance(error, dict) or set(error) != keys or not error["message"] or not isinstance(error["type"], str):
        return f"{status} with a malformed envelope: {body[:300]!r}"
    if b"Traceback" in body:
        return f"{status} carries a stack trace"
    return None


def json_problem(content_type: str, body: bytes) -> str | None:
    """A JSON body or an event stream whose JSON is not strict (orjson refuses NaN and Infinity, as browsers do)."""
    if content_type.startswith("application/json"):
        documents = [body]
    elif content_type.startswith("text/event-stream"):
        lines = body.decode("utf-8").splitlines()
        documents = [line[6:] for line in lines if line.startswith("data: ") and line != "data: [DONE]"]
    else:
        return None
    for document in documents:
        try:
            orjson.loads(document)
        except orjson.JSONDecodeError as e:
            return f"not strict JSON ({e}): {document[:300]!r}"
    return None


def fuzz(url: str, examples: int) -> tuple[collections.Counter, list[str]]:
    """Every operation through examples, coverage and fuzzing; returns (answers by (operation, status), problems)."""
    config = SchemathesisConfig.from_dict(
        {
            "seed": 1,
            "generation": {"max-examples": examples, "mode": "all", "database": "none", "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    answers: collections.Counter = collections.Counter()
    problems: list[str] = []

    def call(case):
        response = case.call(base_url=url, timeout=120)
        operation = f"{case.method.upper()} {case.operation.path}"
        answers[operation, response.status_code] += 1
        content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: a list per header
        problem = envelope_problem(case.operation.path, response.status_code, response.content) or json_problem(
            content_type, response.content
        )
        if problem and len(problems) < 20:
            problems.append(
                f"{case.method.upper()} {case.formatted_path}: {problem}\n"
                f"    body={case.body!r} query={case.query!r} path={case.path_parameters!r}"
            )

    for result in get_all_tests(schema=schema, test_func=call, settings=None, given_kwargs=None):
        _, test = result.ok()
        test()
    return answers, problems


def operations(url: str) -> set[str]:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    return {f"{method.upper()} {path}" for path, item in paths.items() for method in item}


def check(server, examples: int) -> None:
    answers, problems = fuzz(server.url, examples)
    by_operation = collections.defaultdict(dict)
    for (operation, status), n in sorted(answers.items()):
        by_operation[operation][status] = n
    print("\n".join(f"{op}: {statuses}" for op, statuses in sorted(by_operation.items())))
    assert not problems, "\n".join(problems)
    never_answered = sorted(op for op in operations(server.url) if not any(s < 300 for s in by_operation.get(op, {})))
    assert not never_answered, f"no case reached these operations' core (no 2xx): {never_answered}"
    assert "Traceback" not in server.log.read_text()


def test_fuzz_every_route_of_what_ships(shipped_server):
    check(shipped_server, FUZZ_EXAMPLES)


@pytest.mark.slow
def test_fuzz_every_route_of_what_ships_deeper(shipped_server):
    check(shipped_server, 500)
