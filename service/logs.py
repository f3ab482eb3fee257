"""Structured logs: one JSON object per line (per RPC, per job transition).

Records go to the ``metaprune.service`` logger with the fields in ``record.fields``;
:func:`configure_logging` installs a handler that prints them as JSON lines (the CLI does;
tests read the records through ``caplog``). Secrets never reach here: RPC lines carry the
token's *name*.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["LOGGER", "JsonFormatter", "configure_logging", "log_event"]

LOGGER = logging.getLogger("metaprune.service")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``{"event": event, **fields}`` as one line."""
    LOGGER.log(level, event, extra={"fields": {"event": event, **fields}})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {"event": "log", "message": record.getMessage()}
        out = {"ts": round(time.time(), 3), "level": record.levelname.lower(), **fields}
        return json.dumps(out, default=str, sort_keys=False)


def configure_logging(stream: TextIO = sys.stderr, level: int = logging.INFO) -> None:
    """Send the service's records to ``stream`` as JSON lines (idempotent)."""
    if any(getattr(h, "_metaprune_json", False) for h in LOGGER.handlers):
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler._metaprune_json = True  # type: ignore[attr-defined]
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False
