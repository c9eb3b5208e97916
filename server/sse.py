"""Server-sent events: how every streaming route frames its events and ends its stream.

Each event is `data: <one JSON object>` and a blank line; the JSON is written by orjson (compact, UTF-8, as the
routes' whole responses). A route hands the server several events in one write when its reader fell behind (see
server/jobs.py): the events themselves, and so the bytes a client receives, are the same either way."""

from __future__ import annotations

import orjson

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering: tokens as they come
DONE = b"data: [DONE]\n\n"


# Characters that Python's str.splitlines() takes for line ends, which orjson writes raw (it escapes those below
# U+0020): a client reading the stream by lines with it (httpx's iter_lines does) would cut an event in two. In
# valid UTF-8 these byte strings are those characters and nothing else, so escaping them keeps the same JSON value.
LINE_BREAKS_OUTSIDE_ASCII = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def event(payload: dict) -> bytes:
    """One `data:` event carrying a JSON object, on one line for any line splitter."""
    data = orjson.dumps(payload)
    for raw, escaped in LINE_BREAKS_OUTSIDE_ASCII:
        data = data.replace(raw, escaped)
    return b"data: " + data + b"\n\n"
