"""`tinyllm-serve` / `python -m server`: load the checkpoint (failing fast), then serve it with uvicorn."""
from __future__ import annotations

import logging
import signal
import sys

import uvicorn
from pydantic import ValidationError

from model.api import TinyLLM
from model.checkpoint import CheckpointError
from server.app import create_app
from server.config import Settings


def main(argv: list[str] | None = None) -> None:
    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:
        sys.exit(f"tinyllm-serve: error: {e}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        llm = TinyLLM.load(settings.checkpoint, settings.device, settings.dtype)
    except CheckpointError as e:
        sys.exit(f"tinyllm-serve: error: {e}")
    # On SIGTERM uvicorn stops accepting, gives in-flight requests settings.shutdown_grace seconds, runs the
    # lifespan's shutdown, then raises the signal again: ignoring that second one lets main() return, exit status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(create_app(settings, llm), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=settings.shutdown_grace)


if __name__ == "__main__":
    main()
