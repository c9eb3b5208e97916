"""A stream whose reader falls behind gets the waiting events in one write, and loses or repeats nothing.

The job's mailbox hands a reader every event waiting when it wakes (server/jobs.py); the routes write those events
together (one HTTP chunk), each still its own `data:` event. Checked here: the mailbox's batches, the routes'
writes against the same events written one at a time, and over a real socket, a reader with a tiny receive
window that reads nothing until the generation has ended: the server's chunks hold several events, and the bytes
equal a fast reader's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import orjson
import pytest

from live import live_app, wait_for
from model.generate import FinishReason
from server import sse
from server.jobs import EngineRequest, FinishEvent, Job, TokenEvent
from server.openai_choices import ChoiceStream, pieces, sse_chunks
from server.routes.generate import sse_events


def token(i: int, text: str) -> TokenEvent:
    return TokenEvent(id=ord(text), logprob=-0.5 - i, top_logprobs=[(ord(text), -0.5 - i)], text=text, attention=None)


def finish(text: str) -> FinishEvent:
    return FinishEvent(FinishReason.LENGTH, text, 1, len(text), queue_ms=0.0, prefill_ms=1.0, decode_ms=2.0)


def new_job(loop: asyncio.AbstractEventLoop, tokens: int) -> Job:
    return Job(EngineRequest(prompt=[104], max_new_tokens=tokens), loop, [], threading.Event(), 64)


def test_a_reader_that_fell_behind_gets_every_waiting_event_at_once():
    async def main():
        job = new_job(asyncio.get_running_loop(), 4)
        batches = job.batches()
        job.deliver([token(0, "a")])
        job.deliver([token(1, "b"), token(2, "c")])  # two engine steps before the reader woke
        first = await anext(batches)
        reader = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)  # the reader now waits on an empty mailbox
        job.deliver([token(3, "d"), finish("abcd")])
        second = await reader
        with pytest.raises(StopAsyncIteration):  # the finish ends it
            await anext(batches)
        return first, second, job.cancelled

    first, second, cancelled = asyncio.run(main())
    assert [e.text for e in first] == ["a", "b", "c"]
    assert [e.text for e in second[:-1]] == ["d"] and isinstance(second[-1], FinishEvent)
    assert cancelled  # the finished job lets its cache row go


def test_generate_writes_a_batch_as_the_same_events_in_one_chunk():
    events = [token(0, "h"), token(1, "i"), token(2, "!"), finish("hi!")]

    async def written(batches):
        async def source():
            for batch in batches:
                yield batch

        return [chunk async for chunk in sse_events(source(), "fp")]

    together = asyncio.run(written([events]))
    one_by_one = asyncio.run(written([[e] for e in events]))
    assert len(together) == 1 and len(one_by_one) == 4
    assert together[0] == b"".join(one_by_one)
    assert together[0].count(b"data: ") == 5 and together[0].endswith(sse.DONE)


def test_completions_write_a_batch_as_the_same_chunks_in_one_write():
    async def written(batched: bool):
        job = new_job(asyncio.get_running_loop(), 3)
        events = [token(0, "o"), token(1, "k"), finish("ok")]
        if batched:
            job.deliver(events)
        else:
            asyncio.get_running_loop().call_soon(lambda: [job.deliver([e]) for e in events])
        choices = [ChoiceStream(0, [], 1, 0)]
        head = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m", "system_fingerprint": "fp"}
        return [chunk async for chunk in sse_chunks(pieces([job], choices), head, choices, 1, True)]

    together = asyncio.run(written(True))
    assert len(together) == 2  # the waiting pieces, then the usage chunk and [DONE]
    chunks = [json.loads(line[6:]) for line in b"".join(together).decode().split("\n\n") if line[6:7] == "{"]
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["o", "k", ""]
    assert chunks[-1]["usage"]["completion_tokens"] == 2 and together[-1].endswith(sse.DONE)
    assert b"".join(asyncio.run(written(False))) == b"".join(together)


def test_an_event_stays_on_one_line_for_line_splitters():
    text = "a\x85b\u2028c\u2029d é🙂\x00\n"
    data = sse.event({"text": text})
    lines = data.decode().splitlines()  # what httpx's iter_lines does
    assert len(lines) == 2 and lines[1] == "" and json.loads(lines[0][6:]) == {"text": text}
    assert orjson.loads(data[6:]) == {"text": text}


# ------------------------------------------------------------------ a reader that falls behind, over a real socket


def send_request(sock: socket.socket, body: dict) -> None:
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )


def read_response(sock: socket.socket) -> tuple[bytes, list[bytes]]:
    """Read a chunked response to its end: its header block and its HTTP chunks (the server's writes)."""
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks = []
    while True:  # chunked transfer coding: hex size, CRLF, data, CRLF; a 0-size chunk ends it
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


def without_timing(stream: bytes) -> list[dict | str]:
    events = []
    for event in stream.decode().split("\n\n")[:-1]:
        assert event.startswith("data: ") and "\n" not in event
        data = event[6:]
        events.append(data if data == "[DONE]" else json.loads(data))
    events[-2].pop("timing")  # the one field a second run of the same request changes
    return events


def test_a_reader_that_fell_behind_gets_every_byte_once_in_order_with_the_last_event_whole(long_checkpoint):
    """A reader that reads nothing until the generation has ended, on a connection whose buffers hold less than two
    events (a tiny receive window here, a tiny send buffer on the server's side; each event carries ~1,800
    attention weights per head): uvicorn pauses the route's writes (its own sign that the stream fell behind),
    the engine's events wait in the job's mailbox, and the route writes them together once the reader reads."""
    body = {
        "prompt": "ROMEO: " * 257,  # 1,799 bytes
        "max_new_tokens": 12,
        "temperature": 0.9,
        "seed": 5,
        "logprobs": 20,
        "attention": {},
        "stream": True,
        "utf8": "any",
    }
    with live_app(long_checkpoint) as live:
        port = int(live.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:  # a reader that keeps up
            send_request(sock, body)
            _, fast = read_response(sock)
        before = live.connections()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", port))
        wait_for(lambda: live.connections() - before, "the server to take the connection")
        (connection,) = live.connections() - before
        connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        send_request(sock, body)
        wait_for(lambda: connection.flow.write_paused, "the server's writes to back up")
        wait_for(lambda: live.engine().active_count == 0, "the generation to end")
        head, slow = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert without_timing(b"".join(slow)) == without_timing(b"".join(fast))
    events = without_timing(b"".join(slow))
    assert events[-1] == "[DONE]"
    tokens, last = events[:-2], events[-2]
    assert len(tokens) == last["usage"]["completion_tokens"] == 12 and last["finish_reason"] == "length"
    assert "".join(e["text"] for e in tokens) == last["text"]
    # an engine loop hands out a prompt's first two tokens together: more than two in one write is the waiting
    tokens_per_write = [chunk.count(b'"token":') for chunk in slow]
    assert max(tokens_per_write) > 2, tokens_per_write
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in slow)  # no write cuts an event
