"""Entry point: python3 -m sunday_api (serves on 0.0.0.0:$PORT)."""
from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Optional

from .logs import log
from .server import make_server
from .store import store_from_env


def _stop(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    version = os.environ.get("APP_VERSION") or "dev"
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        log("warning", "DATABASE_URL not set, using the in-memory store")
    server = make_server(store_from_env(database_url), version, "0.0.0.0", port)
    signal.signal(signal.SIGTERM, _stop)
    log("info", "listening", version=version, address=f"0.0.0.0:{port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
