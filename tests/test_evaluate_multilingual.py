"""scripts/evaluate_multilingual.py on a tiny random checkpoint and a made-up two-language corpus."""

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import TinyLLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate_multilingual as ev


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return TinyLLM.load(tiny_checkpoint, device="cpu")


def brute_force_bits(llm, data: bytes, context: int) -> float:
    """Every byte predicted from (up to) the `context` bytes right before it, one forward pass per byte."""
    ids = list(data)
    total = 0.0
    with torch.inference_mode():
        for t in range(1, len(ids)):
            x = torch.tensor([ids[max(0, t - context) : t]])
            logits, _ = llm.model(x)
            total += F.cross_entropy(logits[0, -1:].float(), torch.tensor([ids[t]])).item()
    return total / (len(ids) - 1) / math.log(2)


def test_bits_per_byte_scores_every_byte_once(llm):
    ctx = llm.config.context_length
    data = ("Grüße, мир! 中文 😀 " * 40).encode()[: 3 * ctx + 17]
    # one window: exactly the brute force with the whole prefix as context
    short = data[: ctx + 1]
    assert ev.bits_per_byte(llm, short, stride=ctx) == pytest.approx(brute_force_bits(llm, short, ctx), rel=1e-4)
    # stride 1: every byte after the first window sees exactly `ctx - 1`.. bytes, as the brute force with ctx
    assert ev.bits_per_byte(llm, data, stride=1) == pytest.approx(brute_force_bits(llm, data, ctx), rel=1e-4)
    for stride in (ctx, ctx // 2, 7):
        assert math.isfinite(ev.bits_per_byte(llm, data, stride=stride))  # its own assert checks the count


def test_whole_characters_and_prompts():
    data = "añ中😀".encode()  # 1 + 2 + 3 + 4 bytes
    assert [ev.whole_characters(data, n) for n in (0, 1, 2, 3, 5, 6, 9, 10)] == [
        b"",
        b"a",
        b"a",
        "añ".encode(),
        "añ".encode(),
        "añ中".encode(),
        "añ中".encode(),
        data,
    ]
    text = b"first doc\n\nsecond doc\n\nthird doc\n\n"
    assert ev.document_starts(text) == [0, 11, 23]
    assert ev.prompts_of(text, 2, 5) == [b"first", b"third"]


def test_is_valid_utf8():
    assert ev.is_valid_utf8("ок 😀".encode())
    assert ev.is_valid_utf8("ок 😀".encode()[:-2])  # cut short at the end only
    assert not ev.is_valid_utf8(b"a\x80b")
    assert not ev.is_valid_utf8(b"\xe4\xb8a")
    assert ev.invalid_sequences(b"a\x80b\xff\xe4\xb8") == 2  # the cut-off 3-byte character is not counted


def test_generate_bytes_slides_past_the_context(llm):
    ctx = llm.config.context_length
    out = ev.generate_bytes(llm, b"Hello", 2 * ctx + 10, seed=1, utf8="any")
    assert len(out) == 2 * ctx + 10
    assert out == ev.generate_bytes(llm, b"Hello", 2 * ctx + 10, seed=1, utf8="any")
    valid = ev.generate_bytes(llm, b"Hello", 2 * ctx + 10, seed=1)
    assert len(valid) == 2 * ctx + 10 and ev.is_valid_utf8(valid)
    valid.decode("utf-8")  # whole characters to the end


def test_main_writes_tables_and_json(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    # shorter samples: the wiring is under test here; the sliding generation has its own test above
    monkeypatch.setattr(ev, "SAMPLE_BYTES", 200)
    corpus = tmp_path / "corpus"
    texts = {
        "en": b"An English sentence.\n\nAnother one here.\n\n" * 8,
        "ru": "Русский текст.\n\nЕщё один.\n\n".encode() * 8,
    }
    files = {}
    for lang, data in texts.items():
        (corpus / "val").mkdir(parents=True, exist_ok=True)
        (corpus / "val" / f"{lang}.txt").write_bytes(data)
        files[f"val/{lang}.txt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (corpus / "manifest.json").write_text(json.dumps({"languages": {k: {} for k in texts}, "files": files}))
    out = tmp_path / "eval.json"
    ev.main(
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--corpus",
            str(corpus),
            "--compare",
            str(tiny_checkpoint),
            "--samples",
            "2",
            "--passages",
            "2",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "| en |" in printed and "xz -9" in printed and 'valid samples, "any"' in printed
    results = json.loads(out.read_text())
    assert set(results["bits_per_byte"]) == {"en", "ru"}
    assert results["utf8"]["valid"]["ru"]["samples"] == results["utf8"]["any"]["ru"]["samples"] == 2
    assert all(v["valid"] == v["samples"] for v in results["utf8"]["valid"].values()), "the default is always valid"
    assert 0 <= results["heads"]["uniform_head_same_character"] <= 1
