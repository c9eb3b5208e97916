"""OpenAI completions as pieces: each choice's text deltas with the logprobs of exactly their bytes.

Tokens are bytes. In `logprobs`, a token's text is its byte alone: the character itself for ASCII (so
ASCII text is exactly the concatenation of its tokens), and the escape "\\xNN" for a byte >= 0x80, which is
not text by itself (the escape keeps every byte's key distinct in top_logprobs). text_offset[i] is the
offset, in characters of the returned text, of the character that byte i belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from model.generate import FinishReason, TextAssembler
from model.runner import Scored
from model.tokenizer import IncrementalDecoder, tokenizer
from server import sse
from server.errors import APIError, check_finish
from server.jobs import FinishEvent, Job, TokenEvent

# OpenAI knows two reasons: a completion that ran out of context ran to its length.
FINISH_REASONS = {FinishReason.LENGTH: "length", FinishReason.CONTEXT_FULL: "length", FinishReason.STOP: "stop"}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_text(byte: int) -> str:
    return tokenizer.label(byte, escape_controls=False)


def top_dict(byte: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, float]:
    """The top alternatives, most likely first, plus the chosen byte (as OpenAI: up to logprobs + 1 entries)."""
    out = {token_text(b): lp for b, lp in top}
    out.setdefault(token_text(byte), logprob)
    return out


class ChoiceStream:
    """One choice as pieces: text deltas, each carrying the logprobs of exactly the bytes that make it up.

    Bytes that may begin a stop string are held back (as the engine holds back their text), and a stop
    string's own bytes are dropped, so the tokens always spell the text. The non-streamed choice is the
    concatenation of the pieces, so streaming and not streaming give the same text and logprobs.
    """

    def __init__(self, index: int, stops: list[bytes], top_n: int | None, text_start: int):
        self.index, self.top_n = index, top_n
        self.assembler = TextAssembler(stops)
        self.pending: list[Scored] = []  # pushed, not yet given out
        self.given = 0  # bytes of the assembler's data given out
        self.chars = text_start  # characters of the returned text before the next byte given out
        self.decoder = IncrementalDecoder()
        self.pieces: list[dict] = []
        self.taken = 0  # pieces already taken by the stream
        self.completion_tokens = 0

    def echo_piece(self, text: str, scored: list[Scored]) -> None:
        chars, decoder, offsets = 0, IncrementalDecoder(), []
        for byte, _, _ in scored:
            offsets.append(chars)
            chars += len(decoder.push(byte))
        self._add(text, scored, offsets)

    def token_piece(self, event: TokenEvent) -> None:
        self.pending.append((event.id, event.logprob, event.top_logprobs))
        text, _ = self.assembler.push(event.id)
        self._give(text, self.assembler.released - self.given)

    def finish_piece(self, reason: FinishReason, completion_tokens: int) -> None:
        self.completion_tokens = completion_tokens
        text = self.assembler.finish()
        self._give(text, self.assembler.released - self.given, FINISH_REASONS[reason])
        self.pending.clear()  # what is left is a stop string

    def _give(self, text: str, n: int, finish: str | None = None) -> None:
        scored, self.pending = self.pending[:n], self.pending[n:]
        self.given += n
        offsets = []
        for byte, _, _ in scored:
            offsets.append(self.chars)
            self.chars += len(self.decoder.push(byte))
        if text or finish or (scored and self.top_n is not None):
            self._add(text, scored, offsets, finish)

    def _add(self, text: str, scored: list[Scored], offsets: list[int], finish: str | None = None) -> None:
        logprobs = None
        if self.top_n is not None:
            logprobs = {
                "tokens": [token_text(b) for b, _, _ in scored],
                "token_logprobs": [lp for _, lp, _ in scored],
                "top_logprobs": [None if top is None else top_dict(b, lp, top) for b, lp, top in scored],
                "text_offset": offsets,
            }
        self.pieces.append({"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": finish})

    def take(self) -> list[dict]:
        """Pieces added since the last take."""
        new, self.taken = self.pieces[self.taken :], len(self.pieces)
        return new

    def choice(self) -> dict:
        """The whole choice: all pieces joined."""
        logprobs = None
        if self.top_n is not None:
            logprobs = {
                k: [v for p in self.pieces for v in p["logprobs"][k]]
                for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")
            }
        return {
            "index": self.index,
            "text": "".join(p["text"] for p in self.pieces),
            "logprobs": logprobs,
            "finish_reason": self.pieces[-1]["finish_reason"],
        }


async def sse_chunks(
    all_pieces: AsyncIterator[list[dict]],
    head: dict,
    choices: list[ChoiceStream],
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """`data: {chunk}` per piece, an optional usage chunk, then `data: [DONE]`; an error mid-stream is one event.
    The chunks of the pieces waiting when the stream wakes go out in one write."""
    extra = {"usage": None} if include_usage else {}  # as OpenAI: with include_usage, every chunk has the field
    async with contextlib.aclosing(all_pieces):
        try:
            async for batch in all_pieces:
                yield b"".join(sse.event({**head, "choices": [piece], **extra}) for piece in batch)
        except APIError as e:
            yield sse.event({"error": {"message": e.message, "type": e.type, "param": None, "code": None}}) + sse.DONE
            return
    end = b""
    if include_usage:
        end = sse.event(
            {**head, "choices": [], "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices))}
        )
    yield end + sse.DONE


async def merged(jobs: list[Job]) -> AsyncIterator[tuple[int, list[TokenEvent | FinishEvent]]]:
    """(job index, its events waiting) from all jobs as they come; closing it early cancels the unfinished ones."""
    if len(jobs) == 1:  # the usual request: no tasks to merge through
        async with contextlib.aclosing(jobs[0].batches()) as batches:
            async for batch in batches:
                yield 0, batch
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, job):
        async for batch in job.batches():
            await queue.put((i, batch))

    tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        finished = 0
        while finished < len(jobs):
            item = await queue.get()
            finished += isinstance(item[1][-1], FinishEvent)
            yield item
    finally:
        for task in tasks:
            task.cancel()


async def pieces(jobs: list[Job], choices: list[ChoiceStream]) -> AsyncIterator[list[dict]]:
    """Every choice's pieces in order of arrival, the echoed prompts first, in lists: those made from the events
    waiting when the stream wakes.

    Raises APIError on a timeout or an engine failure."""
    echoed = [piece for choice in choices for piece in choice.take()]
    if echoed:
        yield echoed
    async with contextlib.aclosing(merged(jobs)) as events:
        async for index, batch in events:
            choice = choices[index]
            for event in batch:
                if isinstance(event, TokenEvent):
                    choice.token_piece(event)
                else:
                    check_finish(event)
                    choice.finish_piece(event.reason, event.completion_tokens)
            if new := choice.take():
                yield new
    if not jobs:  # max_tokens 0
        for choice in choices:
            choice.finish_piece(FinishReason.LENGTH, 0)
        yield [piece for choice in choices for piece in choice.take()]
