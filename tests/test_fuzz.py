"""Property-based fuzzing of every documented route from the server's own OpenAPI schema (schemathesis),
against a real server process: never a 5xx, and every 4xx is the error envelope.

Bounded for CI (FUZZ_EXAMPLES per operation and mode); the `slow` test runs a deeper pass.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from server.process import running_server

FUZZ_EXAMPLES = int(os.environ.get("TINYLLM_FUZZ_EXAMPLES", "25"))
OPENAI_PREFIXES = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    # a small token cap so positive cases generate quickly; the limits themselves are tested elsewhere
    with running_server(
        tiny_checkpoint, "--max-new-tokens", "32", "--max-batch", "8", "--max-body-bytes", "65536"
    ) as srv:
        yield srv


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


def fuzz(url: str, mode: GenerationMode, examples: int) -> tuple[int, list[str]]:
    """Run `examples` generated cases per operation; return (cases run, problems found)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    problems: list[str] = []
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            print_blob=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode))
        def run(case):  # called within this iteration: `operation` is this iteration's
            nonlocal count
            count += 1
            response = case.call(base_url=url, timeout=60)
            problem = envelope_problem(operation.path, response.status_code, response.content)  # noqa: B023
            if problem and len(problems) < 20:
                problems.append(
                    f"{operation.method.upper()} {operation.path} {mode.value}: {problem}\n"  # noqa: B023
                    f"    body={case.body!r} query={case.query!r} path={case.path_parameters!r}"
                )

        try:
            run()
        except Unsatisfiable:  # negative mode on an operation without parameters: nothing to break
            assert mode is GenerationMode.NEGATIVE, operation.path
    return count, problems


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_fuzz_every_route(server, mode):
    count, problems = fuzz(server.url, mode, FUZZ_EXAMPLES)
    print(f"fuzz {mode.value}: {count} cases")
    assert count >= FUZZ_EXAMPLES, count
    assert not problems, "\n".join(problems)
    assert "Traceback" not in server.log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_fuzz_every_route_deeper(server, mode):
    count, problems = fuzz(server.url, mode, 500)
    print(f"fuzz {mode.value} (deeper): {count} cases")
    assert not problems, "\n".join(problems)
