"""Structured logs: one JSON object a line on stderr (UTC time, level, msg, and the fields of the event)."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any


def log(level: str, msg: str, **fields: Any) -> None:
    line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": level, "msg": msg}
    line.update(fields)
    sys.stderr.write(json.dumps(line, default=str) + "\n")
    sys.stderr.flush()
