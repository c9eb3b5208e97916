"""Bytes are tokens: id i is the byte value i (0..255). Nothing to train, every language works."""

from __future__ import annotations

import codecs

VOCAB_SIZE = 256  # one token per byte value; no special tokens are reserved

# There is no BOS. Tools that condition a text's first token on one (lm-evaluation-harness's prefix token,
# a tokenizer's bos_token) are given a line break: a text in a corpus begins after one, and it is an
# ordinary byte the model has seen, so the first byte is scored as the start of a line.
PREFIX_TOKEN = "\n"


def _display(b: int, escape_controls: bool = True) -> str:
    if b < 0x80:
        ch = chr(b)
        if ch.isprintable() or not escape_controls:
            return ch
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{b:02x}")
    return f"\\x{b:02x}"


class ByteTokenizer:
    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of `text`. Raises UnicodeEncodeError on lone surrogates (not valid Unicode text)."""
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Text of the bytes; invalid UTF-8 sequences become U+FFFD."""
        return bytes(ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder()

    @staticmethod
    def label(byte: int, escape_controls: bool = True) -> str:
        """A byte alone as text: its character if printable ASCII, else an escape like \\n or \\xe2.

        escape_controls=False keeps ASCII control characters as themselves (OpenAI's logprobs tokens, whose
        concatenation must spell ASCII text); a byte >= 0x80 is no text alone, so it is always escaped.
        """
        return _display(byte, escape_controls)

    def char_labels(self, ids) -> list[str]:
        """A label per byte where a multi-byte character is shown once, on its first byte.

        The first byte of a complete UTF-8 character gets the character; its continuation bytes get "".
        Bytes that form no valid character get their escape.
        """
        labels = [_display(b) for b in ids]
        data = bytes(ids)
        for start, end in char_spans(data):
            if end - start > 1:
                labels[start:end] = [data[start:end].decode("utf-8")] + [""] * (end - start - 1)
        return labels

    def last_char_labels(self, ids) -> list[str]:
        """`char_labels` of the last character of `ids` (complete or not): one label per byte of it.

        Appending a byte changes only the labels of the character it belongs to, so a client that shows
        bytes as they stream in relabels just these, counting back from the newest byte.
        """
        labels = self.char_labels(list(ids)[-4:])  # a UTF-8 character is at most 4 bytes
        start = max(i for i, label in enumerate(labels) if label)  # the first label is never ""
        return labels[start:]

    @staticmethod
    def byte_char_spans(text: str) -> list[tuple[int, int]]:
        """For every UTF-8 byte of `text`, the [start, end) code-point offsets of the character it belongs to."""
        spans = []
        for i, ch in enumerate(text):
            spans.extend([(i, i + 1)] * len(ch.encode("utf-8")))
        return spans


def _utf8_len(lead: int) -> int:
    """Length of the sequence a valid lead byte starts; 1 for bytes that cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 1


def char_spans(ids) -> list[tuple[int, int]]:
    """[start, end) byte spans of the characters of `ids`, in order, covering every byte exactly once: a
    complete, valid UTF-8 character is one span; any other byte is a span of its own."""
    data = bytes(int(i) for i in ids)
    spans, i = [], 0
    while i < len(data):
        n = _utf8_len(data[i])
        if n > 1:
            try:
                data[i : i + n].decode("utf-8")  # rejects truncation, bad continuations, overlongs, surrogates
            except UnicodeDecodeError:
                n = 1
        spans.append((i, i + n))
        i += n
    return spans


class IncrementalDecoder:
    """Feeds bytes one at a time; returns only whole characters, never half of a multi-byte one."""

    def __init__(self):
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, byte: int) -> str:
        return self._dec.decode(bytes([byte]))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


tokenizer = ByteTokenizer()  # stateless: the one instance everything shares
