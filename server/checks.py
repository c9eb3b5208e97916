"""The checks of a request against the served model that several routes share, each a 400 naming its field: a text
that fits the model's context, heads to switch off, layer or head indices, and ablation "mean" on a request that
generates. (What a body says on its own, without the model, is checked by its schema's fields: server/schemas.py.)"""

from __future__ import annotations

from typing import Protocol

from model.config import ModelConfig
from model.tokenizer import tokenizer
from model.trace import Ablation, Head, check_text, heads_off_problem
from server.errors import APIError
from server.models import ServedModel, ServedModels


class AsksAboutText(Protocol):
    """A request body about one text, with heads to switch off (AttentionRequest, the inspection requests)."""

    model: str | None
    text: str
    heads_off: list[list[int]]


def checked_text(body: AsksAboutText, models: ServedModels) -> tuple[ServedModel, list[int], list[Head]]:
    """The served model, the text's bytes and the heads to switch off, each checked against the model."""
    served = models.get(body.model)
    cfg = served.engine.config
    return served, text_ids(body.text, cfg), check_heads_off(body.heads_off, cfg)


def text_ids(text: str, cfg: ModelConfig, param: str = "text") -> list[int]:
    """The text's bytes, or a 400 naming the field `param` when they do not fit the context (model.trace.check_text's
    rule)."""
    ids = tokenizer.encode(text)
    try:
        check_text(cfg, ids)
    except ValueError:
        raise APIError(
            400, f"{param} is {len(ids)} bytes; the context holds {cfg.context_length}", param=param
        ) from None
    return ids


def check_heads_off(heads_off: list[list[int]], cfg: ModelConfig) -> list[Head]:
    """The [layer, head] pairs to switch off, or a 400 naming one the model does not have or one named twice."""
    pairs = [(layer, head) for layer, head in heads_off]
    if problem := heads_off_problem(cfg, pairs):
        raise APIError(400, problem, param="heads_off")
    return pairs


def check_indices(chosen: list[int] | None, n: int, param: str) -> list[int]:
    """Layer or head indices: all of them for None, else the chosen ones, each checked against n."""
    if chosen is None:
        return list(range(n))
    if not chosen:
        raise APIError(400, f"{param} is empty; leave it null for all", param=param)
    bad = [i for i in chosen if i >= n]
    if bad:
        raise APIError(400, f"{param} {bad} out of range: valid indices are 0..{n - 1}", param=param)
    return chosen


def check_ablation_while_generating(ablation: Ablation) -> None:
    """A 400 for ablation "mean" on a request that generates: generation switches heads off with zeros only."""
    if ablation == "mean":
        raise APIError(
            400,
            'ablation "mean" replaces a head\'s output by its mean over the text, which is not defined while the text '
            'is still growing: generation switches heads off with "zero"',
            param="ablation",
        )


def one_byte(value: int | str | None, param: str) -> int | None:
    """A byte given as 0..255 or as a one-byte character (None stays None), or a 400 naming param."""
    if value is None:
        return None
    if isinstance(value, int) and 0 <= value < 256:
        return value
    if isinstance(value, str) and len(value.encode("utf-8", errors="replace")) == 1:
        return value.encode()[0]
    raise APIError(400, f"{param} must be a byte: 0..255 or a one-byte character, got {value!r}", param=param)
