"""Optional bearer-token auth: with TINYLLM_API_KEY set, every route needs `Authorization: Bearer <key>`,
except /health and the explorer page's static files (`/`, `/static/...`): a browser cannot send a bearer
token when it opens a page, and the files hold no data — the page asks for the key and sends it with
every API call it makes.

Plain ASGI middleware, so it guards everything the app serves (docs, static files and unknown paths
included) and answers before the body is read. The key is compared in constant time (hmac.compare_digest
over SHA-256 digests, so not even its length leaks) and never logged: it lives in a SecretStr.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from fastapi import FastAPI
from pydantic import SecretStr

from server.config import Settings
from server.errors import error_response

log = logging.getLogger("tinyllm.server")
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIX = "/static/"


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Require the bearer token when settings.api_key is set (an empty key means off, with a warning)."""
    if settings.api_key is None:
        return
    if not settings.api_key.get_secret_value():
        log.warning("TINYLLM_API_KEY is empty: authentication is off")
        return
    app.add_middleware(BearerAuth, api_key=settings.api_key)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the first `Authorization: Bearer <token>` header (the scheme is case-insensitive)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _is_preflight(scope) -> bool:
    """A CORS preflight carries no credentials by design; the CORS middleware answers it."""
    headers = dict(scope["headers"])
    return scope["method"] == "OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers


class BearerAuth:
    def __init__(self, app, api_key: SecretStr, open_paths: frozenset[str] = OPEN_PATHS):
        self.app, self.open_paths = app, open_paths
        self.key_digest = _digest(api_key.get_secret_value())

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] != "http"
            or scope["path"] in self.open_paths
            or scope["path"].startswith(OPEN_PREFIX)
            or _is_preflight(scope)
        ):
            return await self.app(scope, receive, send)
        token = bearer_token(scope["headers"])
        if token is not None and hmac.compare_digest(_digest(token), self.key_digest):
            return await self.app(scope, receive, send)
        if token is None:
            message = 'missing API key: send the header "Authorization: Bearer <key>"'
        else:
            message = "invalid API key"
        log.info(
            "401 %s %s: %s",
            scope["method"],
            scope["path"],
            "no bearer token" if token is None else "wrong bearer token",
        )
        response = error_response(
            401,
            message,
            "authentication_error",
            headers={"WWW-Authenticate": "Bearer"},
            path=scope["path"],
            code="invalid_api_key",
        )  # code: on OpenAI paths only
        await response(scope, receive, send)
