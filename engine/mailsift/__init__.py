"""mailsift: a spam filter that learns your own mail.

Public API (everything else is internal and may change):

* :class:`Filter` — load config and model once; ``Filter().score(raw_bytes)``
  returns a :class:`Verdict`; ``score(raw, user="alice")`` adds that user's
  model and lists, ``learn_user(raw, spam, "alice")`` teaches that user only.
* :class:`Users` — per-user state over the ``[store]`` (local files or
  Redis): ``status()`` gives the store's counters (outage, queued learns).
* :class:`Verdict` — ``probability``, ``score`` (SpamAssassin-style points),
  ``action`` (``accept``, ``add_header``, ``reject``), ``evidence`` (the
  model's strongest features each way) and ``hits`` (:class:`RuleHit`).
* :class:`LinearModel` — the trainable classifier
  (``fit / partial_fit / predict_proba``, ``save`` / ``load``, no pickle).
* :func:`parse` — raw bytes to a :class:`ParsedMessage`; never raises.
* :func:`load_config` — the TOML configuration with defaults in code; a bad
  value raises :class:`ConfigError` naming the key and the file.
* :func:`filter_message` — what ``mailsift filter`` does: the message back
  with the verdict headers, or unchanged and marked Unknown on any failure.
* :func:`strip_verdict_headers` — raw bytes without the headers spam filters
  write (``Filter.score`` and training apply it; call it on mail you extract
  features from yourself).
* :class:`Service` (``mailsift.serve``) — what ``mailsift serve``'s doors
  share: ``await service.score(raw, context, door)`` and ``await
  service.learn(raw, spam, forget=False)`` over one scoring pool and one
  learner.  Imported on first use (it brings the daemon's dependencies).

Every entry point (CLI, library, proxy, training, evaluation) goes the same
way: raw bytes -> parse -> features -> model -> score -> Verdict.
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, load_config
from .filter import Filter
from .model import LinearModel, ModelError
from .parse import ParsedMessage, parse
from .pipe import filter_message
from .report import strip_verdict_headers
from .score import Evidence, RuleHit, Verdict
from .users import Users


def __getattr__(name: str):
    if name == "Service":  # not at import: aiosmtpd and prometheus-client are the daemon's
        from .serve import Service

        return Service
    raise AttributeError(f"module 'mailsift' has no attribute {name!r}")


__all__ = [
    "Config",
    "ConfigError",
    "Evidence",
    "Filter",
    "LinearModel",
    "ModelError",
    "ParsedMessage",
    "RuleHit",
    "Service",
    "Users",
    "Verdict",
    "filter_message",
    "load_config",
    "parse",
    "strip_verdict_headers",
]
