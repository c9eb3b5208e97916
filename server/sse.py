"""Server-sent events: how every streaming route frames its events and ends its stream."""

from __future__ import annotations

import json

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering: tokens as they come
DONE = "data: [DONE]\n\n"


def event(payload: dict) -> str:
    """One `data:` event carrying a JSON object."""
    return f"data: {json.dumps(payload)}\n\n"
