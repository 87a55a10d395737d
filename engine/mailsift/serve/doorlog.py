"""One log line per request at the milter, spamd and HTTP doors.

The SMTP door logs one line per message (:meth:`mailsift.proxy.Handler._log`)
with the fields a log shipper parses in ``--log-format json`` mode (event,
score, action, outcome, ms, ...).  The other doors log the same way through
:func:`request`: the record goes to the JSON formatter as the object's
fields (``extra={"mailsift": record}``) and to the text formatter as
``door event key=value ...``, so both modes carry the same facts.
"""

from __future__ import annotations

import logging
from typing import Any

from ..score import Verdict


def verdict_fields(verdict: Verdict | None) -> dict[str, Any]:
    """score, action and hits as the SMTP door's line has them."""
    return {
        "score": round(verdict.score, 2) if verdict else None,
        "action": verdict.action if verdict else "unknown",
        "hits": [h.name for h in verdict.hits] if verdict else [],
    }


def request(logger: logging.Logger, level: int, door: str, event: str, **fields: Any) -> dict:
    """Log one request: ``event`` is ``message`` (scored), ``learn``,
    ``refused`` (the client may not, or sent something that is not a request)
    or ``error`` (we failed).  Returns the record (for tests)."""
    record: dict[str, Any] = {"event": event, "door": door, **fields}
    text = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if k != "hits" and v not in ("", None, []))
    logger.log(level, "%s %s %s", door, event, text, extra={"mailsift": record})
    return record


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    text = str(value)
    # quoted (escaped) when it has a blank or anything unprintable: a spamd User
    # header may hold control characters, which must not reach a terminal raw
    return repr(text) if (" " in text or not text or not text.isprintable()) else text
