"""How `tinyllm` talks to the server: one httpx client per command, and the server's errors as one line."""

from __future__ import annotations

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_SERVER_ERROR, EXIT_UNREACHABLE = 1, 3  # 2 is a usage error, argparse's own


class CLIError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def client(args) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(
        base_url=args.url.rstrip("/"), headers=headers, timeout=httpx.Timeout(args.timeout, connect=5.0)
    )


def check(response: httpx.Response) -> httpx.Response:
    """Raise CLIError with the server's one-line message for a 4xx/5xx."""
    if response.status_code < 400:
        return response
    response.read()
    try:
        error = response.json()["error"]
        message = f"{error['message']} ({error['type']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}: {response.text.strip()[:200] or response.reason_phrase}"
    if response.status_code == 401:
        message += "; pass --api-key or set TINYLLM_API_KEY"
    raise CLIError(message, EXIT_SERVER_ERROR)


def request(args, method: str, path: str, **kwargs) -> httpx.Response:
    with client(args) as c:
        return check(c.request(method, path, **kwargs))
