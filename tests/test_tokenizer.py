"""ByteTokenizer: bytes are tokens; decoding, incremental decoding and display labels."""

from __future__ import annotations

import pytest

from model.tokenizer import ByteTokenizer

tok = ByteTokenizer()

SAMPLES = {
    "ascii": "Hello, world!\n\tdone",
    "accents": "naïve café, Ærøskøbing, señor",
    "cjk": "日本語のテキスト，中文",
    "emoji": "ok 🙂👍🏽 𝄞",  # 4-byte characters, and a skin-tone modifier sequence
    "empty": "",
}


@pytest.mark.parametrize("text", SAMPLES.values(), ids=SAMPLES.keys())
def test_round_trip(text):
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(isinstance(i, int) and 0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_ids_are_byte_values():
    assert tok.vocab_size == 256
    assert tok.encode("A") == [65]
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("日") == [0xE6, 0x97, 0xA5]
    assert tok.encode("🙂") == [0xF0, 0x9F, 0x99, 0x82]
    assert tok.decode(range(128)) == "".join(map(chr, range(128)))


def test_invalid_bytes_decode_to_replacement_character():
    assert tok.decode([0xFF]) == "\ufffd"
    assert tok.decode([ord("a"), 0xC3, ord("b")]) == "a\ufffdb"  # a lead byte without its continuation
    assert tok.decode([0x80, ord("x")]) == "\ufffdx"  # a stray continuation byte
    assert tok.decode(list("🙂".encode())[:3]) == "\ufffd"  # a truncated 4-byte character at the end
    assert tok.decode([0xC0, 0xAF]) == "\ufffd\ufffd"  # an overlong encoding is not a character


def test_lone_surrogate_cannot_be_encoded():
    with pytest.raises(UnicodeEncodeError):
        tok.encode("\ud800")


def test_incremental_decoder_never_emits_half_a_character():
    text = "".join(SAMPLES.values())
    data = text.encode()
    boundaries = {0}
    for ch in text:
        boundaries.add(max(boundaries) + len(ch.encode()))
    dec = tok.incremental_decoder()
    emitted = ""
    for i, b in enumerate(data):
        emitted += dec.push(b)
        # all whole characters so far have come out, and nothing of the next one
        done = max(n for n in boundaries if n <= i + 1)
        assert emitted.encode() == data[:done], f"after byte {i}"
    emitted += dec.flush()
    assert emitted == tok.decode(data) == text


def test_incremental_decoder_on_invalid_bytes_matches_full_decode():
    data = b"ab\xc3\xa9\xff\xe6\x97\xa5\xf0\x9f\x99\x82\xe6\x97z\x80\xc3\xf0\x9f"  # mixed, truncated end
    dec = tok.incremental_decoder()
    pieces = [dec.push(b) for b in data] + [dec.flush()]
    assert "".join(pieces) == tok.decode(data)
    assert "".join(pieces).count("\ufffd") == 5


def test_incremental_decoder_holds_a_multibyte_character_until_complete():
    dec = tok.incremental_decoder()
    assert [dec.push(b) for b in "🙂".encode()] == ["", "", "", "🙂"]
    assert [dec.push(b) for b in "é".encode()] == ["", "é"]
    assert dec.push(ord("a")) == "a"
    dec.push(0xE6)  # a 3-byte character left unfinished ...
    assert dec.flush() == "\ufffd"  # ... is replaced at the end, not dropped


def test_label_of_single_bytes():
    assert tok.label(ord("a")) == "a"
    assert tok.label(ord(" ")) == " "
    assert tok.label(ord("\n")) == "\\n"
    assert tok.label(ord("\t")) == "\\t"
    assert tok.label(0) == "\\x00"
    assert tok.label(0x7F) == "\\x7f"
    assert tok.label(0xE2) == "\\xe2"
    assert all(tok.label(b) for b in range(256)), "every byte has a non-empty label"


def test_char_labels_show_a_multibyte_character_once_on_its_first_byte():
    ids = tok.encode("aé日🙂\n")
    assert tok.char_labels(ids) == ["a", "é", "", "日", "", "", "🙂", "", "", "", "\\n"]
    assert len(tok.char_labels(ids)) == len(ids)


def test_char_labels_of_invalid_or_truncated_sequences_are_escapes():
    ids = [0xFF, ord("x"), 0xE6, 0x97, ord("y"), 0xC3]  # invalid byte, truncated 日 then a byte, lone lead at end
    assert tok.char_labels(ids) == ["\\xff", "x", "\\xe6", "\\x97", "y", "\\xc3"]
    assert tok.char_labels([0xF0, 0x9F, 0x99]) == ["\\xf0", "\\x9f", "\\x99"]  # 🙂 cut short


def test_last_char_labels_are_the_labels_of_the_newest_bytes_character():
    assert tok.last_char_labels(tok.encode("ab")) == ["b"]
    assert tok.last_char_labels(tok.encode("a🙂")) == ["🙂", "", "", ""]
    assert tok.last_char_labels(tok.encode("日é")) == ["é", ""]
    assert tok.last_char_labels([ord("a"), 0xE6, 0x97]) == ["\\x97"]  # 日 not complete yet: an escape
    assert tok.last_char_labels([0x97]) == ["\\x97"]


def test_byte_char_spans():
    text = "aé日🙂"
    spans = tok.byte_char_spans(text)
    assert spans == [(0, 1), (1, 2), (1, 2), (2, 3), (2, 3), (2, 3), (3, 4), (3, 4), (3, 4), (3, 4)]
    assert len(spans) == len(tok.encode(text))
    for start, end in set(spans):  # every span's bytes are that character's bytes
        assert [i for i, s in enumerate(spans) if s == (start, end)]
        assert text[start:end].encode() == bytes(b for b, s in zip(tok.encode(text), spans) if s == (start, end))
    assert tok.byte_char_spans("") == []
