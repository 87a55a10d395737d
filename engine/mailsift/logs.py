"""Logging for ``mailsift serve``: one handler on stderr, text or JSON.

In JSON mode every line on stderr is one JSON object, including warnings,
tracebacks and what libraries log, because log shippers parse each line;
a per-message record passed as ``extra={"mailsift": {...}}`` becomes the
object's fields.  aiosmtpd's own ``mail.log`` chatter (every command
echoed, "Available AUTH mechanisms" per connection, ...) is silenced below
errors: the filter logs one line per message and one per failure itself.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

TEXT_FORMAT = "%(asctime)s mailsift[%(process)d]: %(message)s"


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "mailsift", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def quiet_aiosmtpd() -> None:
    """aiosmtpd logs every command at INFO and protocol errors at WARNING,
    per line: far more than one line per message, and a client sending
    garbage could flood the log.  Its errors (a bug in a handler) stay."""
    logging.getLogger("mail.log").setLevel(logging.ERROR)


def configure(log_format: str = "text") -> None:
    """One stderr handler on the root logger, replacing any (the CLI's
    basicConfig); warnings and uncaught thread exceptions go through it, so
    JSON mode stays pure JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    quiet_aiosmtpd()

    def thread_exception(args) -> None:
        logging.getLogger("mailsift").error(
            "uncaught exception in thread %s",
            getattr(args.thread, "name", "?"),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    threading.excepthook = thread_exception
