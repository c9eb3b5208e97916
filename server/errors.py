"""One error envelope for every route: {"error": {"message", "type", "param"}}. Never a stack trace.

The OpenAI-compatible routes (and any path under them) add OpenAI's "code" field, whoever answers: a
route, the router (404/405), the body-size limit or the auth middleware.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from server.engine import Engine, FinishEvent

log = logging.getLogger("tinyllm.server")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    """An error answered to the client as-is."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers


def engine_of(request: Request) -> "Engine":
    """The app's engine, or a 503 while the model is still loading."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready.is_set():
        raise APIError(503, "the model is still loading", "overloaded", headers={"Retry-After": "1"})
    return engine


def check_finish(event: "FinishEvent") -> None:
    """A generation that ended in a timeout or an engine failure becomes the matching error."""
    if event.reason == "timeout":
        raise APIError(504, "request timed out; ask for fewer tokens or retry", "timeout")
    if event.reason == "error":
        raise APIError(500, event.message or "internal error", "server_error")


OPENAI_PATHS = ("/v1/completions", "/v1/models")


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def error_body(message: str, type: str, param: str | None = None, path: str = "", code: str | None = None) -> dict:
    """The envelope; on an OpenAI path (the request's path) with OpenAI's extra `code` field."""
    error = {"message": message, "type": type, "param": param}
    if is_openai_path(path):
        error["code"] = code
    return {"error": error}


def error_response(status: int, message: str, type: str, param: str | None = None, headers=None, path: str = "",
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, path, code), status_code=status, headers=headers)


_STATUS_TYPES = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed",
                 413: "request_too_large", 503: "overloaded"}


def _param(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.headers, request.url.path,
                              getattr(exc, "code", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return error_response(400, f"invalid JSON body: {err.get('msg')}", "invalid_request_error",
                                  path=request.url.path)
        param = _param(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        if param is None and err.get("type") in ("model_attributes_type", "dict_type", "model_type"):
            msg = "the request body must be a JSON object (Content-Type: application/json)"
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "missing":
            msg = "field required"
        return error_response(400, f"{param}: {msg}" if param else msg, "invalid_request_error", param,
                              path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        message = str(exc.detail)
        if message == "There was an error parsing the body":  # FastAPI's words for a body that is not UTF-8 JSON
            message = "invalid JSON body: it could not be parsed (is it UTF-8 JSON?)"
        return error_response(exc.status_code, message, kind, headers=getattr(exc, "headers", None),
                              path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "server_error", path=request.url.path)
