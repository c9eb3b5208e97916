"""The Python API from several threads: TinyLLM runs one call at a time, so concurrent generations give exactly
what the same calls give one after another (without the lock they shared one cache row and corrupted each other)."""

from __future__ import annotations

import threading

import pytest

from model import TinyLLM

PROMPTS = ["ROMEO:", "To be, or not", "JULIET: O", "Now is the winter"]


def generate_together(llm: TinyLLM, calls: list[dict]) -> list[list[int]]:
    """Each call in its own thread, all released at once: the tokens of each."""
    tokens: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def one(i: int) -> None:
        start.wait()
        tokens[i] = llm.generate(**calls[i]).tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return tokens


@pytest.mark.parametrize(
    "dtype", [pytest.param("float32", marks=pytest.mark.native), "bfloat16"], ids=["native", "torch"]
)
def test_concurrent_generations_equal_the_same_calls_in_turn(tiny_checkpoint, dtype):
    llm = TinyLLM.load(tiny_checkpoint, device="cpu", dtype=dtype, form="float32")  # bfloat16: the torch step
    assert llm.runner.describe()["native"] == (dtype == "float32")
    calls = [dict(prompt=p, max_new_tokens=48, temperature=0.9, seed=i, utf8="any") for i, p in enumerate(PROMPTS)]
    in_turn = [llm.generate(**c).tokens for c in calls]
    for _trial in range(3):
        assert generate_together(llm, calls) == in_turn
