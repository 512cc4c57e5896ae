"""Structured logging for the ``swim_as.*`` loggers.

Call sites log with %-style arguments and pass structured fields through
``extra`` (``event``, ``client_id``, ``spiffe_id``, ``auth_method``, ``jti``,
``kid``, ``reason``...). The JSON formatter writes those fields as members of
one object per line. Tokens, assertions, secrets and whole certificates are
never logged; a certificate is named by its thumbprint.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            # A server error's trace goes to the operator's log only.
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, extra fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = (
            f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S')} "
            f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        fields = [
            f"{k}={_text_value(v)}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        ]
        if fields:
            base += "  " + " ".join(fields)
        if record.exc_info and record.levelno >= logging.ERROR:
            base += "\n" + self.formatException(record.exc_info)
        return base


def _text_value(value: Any) -> str:
    """A field value that cannot pass for other fields of the line."""
    text = str(value)
    if isinstance(value, str) and (
        not text or not text.isprintable() or any(c in text for c in " =\"'")
    ):
        return json.dumps(text, ensure_ascii=True)
    return text


def _unraisable(unraisable: Any) -> None:
    # The ssl module reports an exception raised while it decodes a client's
    # server name as "unraisable"; put it in the log as one line.
    logging.getLogger("swim_as.server").warning(
        "ignored exception: %s",
        unraisable.err_msg or type(unraisable.exc_value).__name__,
        extra={
            "event": "server.unraisable",
            "reason": repr(unraisable.exc_value)[:300],
        },
    )


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Install one stderr handler on the root logger (CLI start-up only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("swim_as").setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(level)
    sys.unraisablehook = _unraisable
