"""Limits that protect everyone: the request body size (ASGI middleware, 413) and the number of streaming
responses open at once (503 with Retry-After). Both answer in the error envelope."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from server import sse
from server.errors import error_body, error_response, overloaded


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = error_response(
                413,
                f"request body is {int(length)} bytes; the limit is {self.max_bytes}",
                "request_too_large",
                path=scope["path"],
            )
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a chunked body without Content-Length
                    raise HTTPException(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class StreamLimit:
    """At most `max_streams` streaming responses open at once; the one over it gets a 503 with Retry-After.

    Counted on the event loop (one thread), from the route's answer until the response ends, however it ends:
    finished, failed, or the client gone. On shutdown, drain() ends the streams still open cleanly (an error
    event, then [DONE]) before the server's grace period runs out and it would cut them mid-event.
    """

    def __init__(self, max_streams: int):
        self.max_streams, self.open = max_streams, 0
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def response(self, content: AsyncIterator[str], cancel: Callable[[], None], path: str) -> StreamingResponse:
        """A server-sent-event response over `content` holding one slot; when none is free, cancel() and 503."""
        if self.open >= self.max_streams or self.draining:
            cancel()
            raise overloaded(
                "shutting down" if self.draining else f"{self.open} streams are open, the most it serves at once"
            )
        self.loop = asyncio.get_running_loop()
        self.open += 1
        last = sse.event(error_body("the server is shutting down; retry shortly", "overloaded", path=path)) + sse.DONE
        return _CountedStream(self._until_drained(content, last), self, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)

    def drain(self, after: float) -> None:
        """From any thread (a signal handler): `after` seconds from now, end the open streams at their next event."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.call_later, after, setattr, self, "draining", True)

    async def _until_drained(self, content: AsyncIterator[str], last_words: str) -> AsyncIterator[str]:
        async with contextlib.aclosing(content):  # closing it cancels the engine's sequences
            async for chunk in content:
                yield chunk
                if self.draining:
                    yield last_words
                    return


class _CountedStream(StreamingResponse):
    def __init__(self, content, limit: StreamLimit, **kwargs):
        super().__init__(content, **kwargs)
        self.limit = limit

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.limit.open -= 1
