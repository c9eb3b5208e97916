"""`tinyllm-serve` / `python -m server`: load the checkpoints (failing fast), then serve them with uvicorn."""

from __future__ import annotations

import logging
import os
import signal
import sys

# numpy's OpenBLAS starts a thread per core that spins between calls; the server makes no BLAS call through numpy,
# and those threads would take CPU from the engine and the event loop. Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import uvicorn
from pydantic import ValidationError

from model.checkpoint import CheckpointError
from server.app import create_app
from server.config import Settings
from server.models import load_checkpoints


def main(argv: list[str] | None = None) -> None:
    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:
        sys.exit(f"tinyllm-serve: error: {e}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        llms = load_checkpoints(settings)
    except CheckpointError as e:
        sys.exit(f"tinyllm-serve: error: {e}")
    server = GracefulServer(create_app(settings, llms), settings)
    # uvicorn raises the signal again once it has shut down: ignoring that second one lets main() return, status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()


class GracefulServer(uvicorn.Server):
    """uvicorn serving the app as the settings say. On SIGTERM/SIGINT (handle_exit) uvicorn stops accepting and
    gives in-flight requests the grace period, then cuts them; drain() ends the streams still open cleanly just
    before that."""

    def __init__(self, app, settings: Settings):
        grace = settings.shutdown_grace
        super().__init__(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                timeout_graceful_shutdown=grace,
            )
        )
        self.drain = lambda: app.state.streams.drain(after=max(grace - 1.0, grace / 2))

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            self.drain()
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    main()
