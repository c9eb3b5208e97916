"""vLLM's tokenizer routes (/tokenize, /detokenize, /tokenizer_info) against a real server process.

Tokens are bytes, so the expected ids are the text's UTF-8 bytes (Python's own encoder is the reference).
"""

from __future__ import annotations

import httpx
import pytest

from support import assert_envelope

MODEL = "tiny"  # the checkpoint folder's name
TEXT = "Hé 🙂\n"  # 1-, 2- and 4-byte characters and a control byte


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def test_tokenize_gives_the_utf8_bytes(server):
    r = post(server, "/tokenize", {"prompt": TEXT})
    assert r.status_code == 200, r.text
    assert r.json() == {"count": 9, "max_model_len": 64, "tokens": list(TEXT.encode("utf-8")), "token_strs": None}


def test_tokenize_adds_no_special_tokens_and_names_each_byte(server):
    plain = post(server, "/tokenize", {"prompt": TEXT, "add_special_tokens": False}).json()
    special = post(server, "/tokenize", {"prompt": TEXT, "add_special_tokens": True, "return_token_strs": True}).json()
    assert special["tokens"] == plain["tokens"]  # no BOS: nothing is ever added
    # the token texts of completions' logprobs: ASCII as itself (controls too), other bytes escaped
    assert special["token_strs"] == ["H", "\\xc3", "\\xa9", " ", "\\xf0", "\\x9f", "\\x99", "\\x82", "\n"]


def test_tokenize_with_the_served_model_or_none(server):
    assert post(server, "/tokenize", {"prompt": "", "model": MODEL}).json()["tokens"] == []
    error = assert_envelope(post(server, "/tokenize", {"prompt": "x", "model": "gpt-4"}), 404, "model", openai=True)
    assert error["code"] == "model_not_found"


def test_detokenize_inverts_tokenize(server):
    ids = post(server, "/tokenize", {"prompt": TEXT}).json()["tokens"]
    assert post(server, "/detokenize", {"tokens": ids, "model": MODEL}).json() == {"prompt": TEXT}
    assert post(server, "/detokenize", {"tokens": []}).json() == {"prompt": ""}


def test_detokenize_replaces_invalid_utf8(server):
    # a character cut in half (as a scoring window may cut one) decodes to U+FFFD, like bytes.decode(errors="replace")
    assert post(server, "/detokenize", {"tokens": [72, 0xF0, 0x9F]}).json() == {"prompt": "H\ufffd"}


def test_tokenizer_info_reports_no_eos_and_a_newline_prefix(server):
    r = httpx.get(f"{server.url}/tokenizer_info")
    assert r.status_code == 200
    assert r.json() == {
        "tokenizer_class": "ByteTokenizer",
        "vocab_size": 256,
        "model_max_length": 64,
        "bos_token": "\n",
        "eos_token": None,
        "pad_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
    }


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {"prompt": "x", "messages": []}, "messages"),  # no chat template: chat form is unknown
        ("/detokenize", {"tokens": [256]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ],
)
def test_bad_requests_are_400_with_openais_code(server, path, body, param):
    error = assert_envelope(post(server, path, body), 400, param, openai=True, kind="invalid_request_error")
    assert error["code"] is None


def test_wrong_method_and_invalid_json_keep_the_envelope(server):
    assert_envelope(httpx.get(f"{server.url}/tokenize"), 405, openai=True)
    assert_envelope(httpx.post(f"{server.url}/tokenizer_info"), 405, openai=True)
    bad = httpx.post(f"{server.url}/detokenize", content=b"{", headers={"Content-Type": "application/json"})
    assert_envelope(bad, 400, openai=True)
