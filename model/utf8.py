"""UTF-8 as a byte-level model's grammar: which bytes may come next, so that generated text is always valid.

The exact rules of RFC 3629, as a state machine over bytes. A state says how many continuation bytes the
current character still needs and in what range the next one must lie:

    state  due  next byte           reached after
    0      0    00-7F C2-DF E0-F4   a whole character (or nothing)
    1      1    80-BF               C2-DF, or the second-to-last byte of a longer character
    2      2    80-BF               E1-EC, EE-EF
    3      2    A0-BF               E0 (no overlong forms)
    4      2    80-9F               ED (no surrogates)
    5      3    80-BF               F1-F3
    6      3    90-BF               F0 (no overlong forms)
    7      3    80-8F               F4 (nothing above U+10FFFF)

C0, C1 and F5-FF are never allowed. `MASKS[mask_row(state, room)]` is the set of allowed bytes, for masking
logits: with fewer than 4 bytes of room left before the length limit, a character is never started that could
not be finished (rows 8-10: the start of a character with room for 1, 2 or 3 bytes).
"""

from __future__ import annotations

import torch

START = 0
N_STATES = 8
DUE = (0, 1, 2, 2, 2, 3, 3, 3)  # continuation bytes still due in each state


def _table() -> list[list[int]]:
    """NEXT[state][byte]: the state after byte, or -1 where byte is not allowed."""
    table = [[-1] * 256 for _ in range(N_STATES)]
    for b in range(0x80):
        table[0][b] = 0
    for b in range(0xC2, 0xE0):
        table[0][b] = 1
    table[0][0xE0], table[0][0xED], table[0][0xF0], table[0][0xF4] = 3, 4, 6, 7
    for b in (*range(0xE1, 0xED), 0xEE, 0xEF):
        table[0][b] = 2
    for b in range(0xF1, 0xF4):
        table[0][b] = 5
    ranges = {1: (0x80, 0xBF, 0), 2: (0x80, 0xBF, 1), 3: (0xA0, 0xBF, 1), 4: (0x80, 0x9F, 1)}
    ranges |= {5: (0x80, 0xBF, 2), 6: (0x90, 0xBF, 2), 7: (0x80, 0x8F, 2)}
    for state, (lo, hi, after) in ranges.items():
        for b in range(lo, hi + 1):
            table[state][b] = after
    return table


NEXT = _table()
_LEADS_UP_TO = {1: 0x80, 2: 0xE0, 3: 0xF0}  # with room for n bytes: lead bytes below this (ASCII is 1 byte)
MASKS = torch.tensor(
    [[n >= 0 for n in row] for row in NEXT]
    + [[NEXT[START][b] >= 0 and b < _LEADS_UP_TO[room] for b in range(256)] for room in (1, 2, 3)]
)  # (N_STATES + 3, 256) bool


def mask_row(state: int, room: int) -> int:
    """The row of MASKS for `state` with `room` more bytes allowed before the limit (room >= 1)."""
    return N_STATES + room - 1 if state == START and room < 4 else state


def advance(state: int, byte: int) -> int:
    """The state after `byte`; -1 if the byte is not allowed in `state`."""
    return NEXT[state][byte]


def state_after(data: bytes | list[int], state: int = START) -> int | None:
    """The state after data (a valid UTF-8 prefix), or None if data is not one."""
    for byte in data:
        state = NEXT[state][byte]
        if state < 0:
            return None
    return state


def state_after_window(data: bytes | list[int]) -> int | None:
    """The state after data if it is a window of valid UTF-8 text: whole characters, except that it may begin
    with the last bytes of one cut off before it (up to 3 continuation bytes) and end inside one; else None.
    A text cut into windows (lm-evaluation-harness's rolling windows) gives such prompts."""
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] < 0xC0:
        start += 1
    return state_after(data[start:])
