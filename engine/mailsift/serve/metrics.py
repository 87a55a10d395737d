"""Prometheus metrics of one running service (prometheus-client).

Each :class:`Metrics` has its own registry, not the library's global one, so
two services in one process (tests, an embedding application) never count
into each other, and ``GET /metrics`` shows exactly this service.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..score import Verdict

#: scoring takes milliseconds; a DNS deadline or an overloaded pool, seconds
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The counters every door updates through the service."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "mailsift_messages", "Messages scored, by door and verdict action", ["door", "action"], registry=r
        )
        self.scoring_seconds = Histogram(
            "mailsift_scoring_seconds", "Time to score one message, queueing included", buckets=_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.learn = Counter(
            "mailsift_learn",
            "Learn and unlearn requests, by class and outcome",
            ["class", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "mailsift_errors",
            "Failures by kind: scoring_failed, scoring_timeout, dns_deadline, next_hop_down, "
            "bad_request, learn_failed, internal",
            ["kind"],
            registry=r,
        )
        self.model_info = Gauge(
            "mailsift_model_info", "The model in use (value 1)", ["path", "trained", "messages"], registry=r
        )

    def scored(self, door: str, verdict: Verdict | None, seconds: float) -> None:
        """One message through a door; ``None``: scoring failed."""
        self.messages.labels(door=door or "library", action=verdict.action if verdict else "error").inc()
        self.scoring_seconds.observe(seconds)
        if verdict is not None and any(h.name == "DNS_DEADLINE" for h in verdict.hits):
            self.error("dns_deadline")

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def learned(self, spam: bool | None, outcome: str) -> None:
        cls = "any" if spam is None else ("spam" if spam else "ham")
        self.learn.labels(**{"class": cls, "outcome": outcome}).inc()

    def set_model(self, path: str, trained: str, messages: int) -> None:
        """One series only: the model in use now."""
        self.model_info.clear()
        self.model_info.labels(path=path, trained=trained, messages=str(messages)).set(1)

    def render(self) -> bytes:
        """The text exposition format, for ``GET /metrics``."""
        return generate_latest(self.registry)
