"""One error envelope for every route: {"error": {"message", "type", "param"}}. Never a stack trace.

The OpenAI-compatible routes (and any path under them), vLLM's tokenizer routes included, add OpenAI's
"code" field, whoever answers: a route, the router (404/405), the body-size limit or the auth middleware.
Every error is translated here: API errors, validation errors, HTTP errors, a full queue, and anything
unexpected.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.generate import FinishReason
from server.jobs import FinishEvent, QueueFull
from server.responses import JSON

log = logging.getLogger("tinyllm.server")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class OpenAIErrorBody(ErrorBody):
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503, 504)}
OPENAI_ERROR_RESPONSES = {code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 413, 503, 504)}


class APIError(Exception):
    """An error answered to the client as-is; `code` is OpenAI's extra field (sent on OpenAI paths only)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: dict | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers, self.code = (
            status,
            message,
            type,
            param,
            headers,
            code,
        )


def overloaded(reason: str) -> APIError:
    """503 with Retry-After: the server is busy (or shutting down); the client should retry shortly."""
    return APIError(503, f"server busy: {reason}; retry shortly", "overloaded", headers={"Retry-After": "1"})


def finish_error(event: FinishEvent) -> APIError | None:
    """The error a generation that ended in a timeout or an engine failure is answered with; None if it did not."""
    if event.reason == FinishReason.TIMEOUT:
        return APIError(504, "request timed out; ask for fewer tokens or retry", "timeout")
    if event.reason == FinishReason.ERROR:
        return APIError(500, event.message or "internal error", "server_error")
    return None


def check_finish(event: FinishEvent) -> None:
    if (error := finish_error(event)) is not None:
        raise error


# vLLM serves its tokenizer routes beside the OpenAI ones, with the same envelope.
OPENAI_PATHS = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def error_body(message: str, type: str, param: str | None = None, path: str = "", code: str | None = None) -> dict:
    """The envelope; on an OpenAI path (the request's path) with OpenAI's extra `code` field."""
    error = {"message": message, "type": type, "param": param}
    if is_openai_path(path):
        error["code"] = code
    return {"error": error}


def error_response(
    status: int,
    message: str,
    type: str,
    param: str | None = None,
    headers=None,
    path: str = "",
    code: str | None = None,
) -> JSON:
    return JSON(error_body(message, type, param, path, code), status_code=status, headers=headers)


_STATUS_TYPES = {
    401: "authentication_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    503: "overloaded",
}
_PROMPT_SHAPES = "prompt must be a string, a list of strings, a list of byte ids (0..255), or a list of such lists"


def validation_message(exc: RequestValidationError, path: str) -> tuple[str, str | None]:
    """(message, param) for the first problem of a request body that failed validation.

    param names the field: its whole path ("stop.0") on the native routes, the top-level field on the
    OpenAI routes, as OpenAI does.
    """
    err = exc.errors()[0]
    kind = err.get("type")
    if kind == "json_invalid":
        return f"invalid JSON body: {err.get('msg')}", None
    loc = [str(p) for p in err.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path"):  # where it came from; a field may be called "query" too
        loc = loc[1:]
    if not loc:
        return "the request body must be a JSON object (Content-Type: application/json)", None
    openai = is_openai_path(path)
    param = loc[0] if openai else ".".join(loc)
    if openai and param == "prompt" and len(loc) > 1 and kind != "value_error":  # a union: say what it takes
        return _PROMPT_SHAPES, param
    msg = {"extra_forbidden": "unknown field", "missing": "field required"}.get(kind, err.get("msg", "invalid value"))
    return f"{'.'.join(loc)}: {msg}", param


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.headers, request.url.path, exc.code)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        e = overloaded(str(exc))
        return error_response(e.status, e.message, e.type, headers=e.headers, path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc, request.url.path)
        return error_response(400, message, "invalid_request_error", param, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        message = str(exc.detail)
        if message == "There was an error parsing the body":  # FastAPI's words for a body that is not UTF-8 JSON
            message = "invalid JSON body: it could not be parsed (is it UTF-8 JSON?)"
        return error_response(
            exc.status_code, message, kind, headers=getattr(exc, "headers", None), path=request.url.path
        )


class UnexpectedErrors:
    """The outermost middleware: an error no handler expected costs only its own request. It is logged with its
    traceback and answered with the 500 envelope, and the connection stays open for the client's next request.

    (Starlette's own last resort answers too, then raises the error again, and uvicorn closes a connection whose
    app raised: the next request on that keep-alive connection would fail with it.) An error after the response
    started (a stream cut mid-body) can only end the connection: it is raised on to uvicorn, which logs it.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_and_note(message):
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            response = error_response(500, "internal server error", "server_error", path=scope.get("path", ""))
            await response(scope, receive, send)
