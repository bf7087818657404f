"""Logging: one structured line per request, JSON or text, at the level the policy or the environment sets.

Level: `escalade serve --log-level`, else the policy's `telemetry.log_level`, else ESCALADE_LOG_LEVEL,
else info. Format: the policy's `telemetry.log_format` (json, the default, or text). Both follow a
hot reload. Request lines (logger `escalade.request`, level info) carry ids, route, deployment,
status, timings, tokens and cost: never a prompt, a completion, a key or a header value.
"""

import logging
import os
import sys
import time
from typing import Any

import msgspec

from policies.schema import TelemetryConf

REQUEST_LOGGER = "escalade.request"
request_log = logging.getLogger(REQUEST_LOGGER)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's `fields`, and exc (a traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encode(line).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with a request's fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return text


def _iso(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class _Config:
    handler: logging.Handler | None = None
    cli_level: str | None = None


def configure(conf: TelemetryConf | None = None, *, cli_level: str | None = None) -> None:
    """Install (or update) the root handler: the level and format the precedence rules give.

    Called by `escalade serve` at start and after each policy reload; a library user who never calls
    it keeps their own logging setup.
    """
    if cli_level is not None:
        _Config.cli_level = cli_level
    conf = conf or TelemetryConf()
    name = _Config.cli_level or conf.log_level or os.environ.get("ESCALADE_LOG_LEVEL") or "info"
    level = _LEVELS.get(name.strip().lower(), logging.INFO)
    root = logging.getLogger()
    if _Config.handler is None:
        _Config.handler = logging.StreamHandler(sys.stderr)
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(_Config.handler)
    _Config.handler.setFormatter(JsonFormatter() if conf.log_format == "json" else TextFormatter())
    root.setLevel(level)
    # The logging HOWTO's optimisations for a server: no caller lookup, thread or process names per record.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))  # one INFO line per upstream call otherwise


def reconfigure(conf: TelemetryConf) -> None:
    """After a policy reload: apply its level and format, if `configure` set logging up."""
    if _Config.handler is not None:
        configure(conf)


def log_request(fields: dict[str, Any]) -> None:
    """The request's line (the caller checks `request_log.isEnabledFor(logging.INFO)` first)."""
    request_log.info("request", extra={"fields": fields})
