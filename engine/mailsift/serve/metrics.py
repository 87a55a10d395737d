"""Prometheus metrics of one running service (prometheus-client).

Each :class:`Metrics` has its own registry, not the library's global one, so
two services in one process (tests, an embedding application) never count
into each other, and ``GET /metrics`` shows exactly this service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..pool import PoolStats
from ..score import Verdict
from ..store import StoreStatus

#: every ``mailsift_errors_total`` kind a part of the service counts; each is
#: exported at 0 from start, so rate()/increase() see the first failure
ERROR_KINDS = (
    "scoring_failed", "scoring_timeout", "dns_deadline", "next_hop_down", "bad_request", "learn_failed",
    "internal",
)  # fmt: skip

#: scoring takes milliseconds; a DNS deadline or an overloaded pool, seconds
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _PoolCollector:
    """What the scoring pool counts itself (:class:`~mailsift.pool.PoolStats`),
    read when /metrics is asked: the DNS cache lives in the scoring
    processes, and each verdict comes back with the lookups it made."""

    def __init__(self, stats: PoolStats) -> None:
        self.stats = stats

    def describe(self) -> list:
        return []  # not known ahead: collected at each scrape

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        lookups = CounterMetricFamily(
            "mailsift_dns_cache_lookups",
            "DNS lookups of the network rules, by result: hit (answered from the cache) or miss",
            labels=["result"],
        )
        lookups.add_metric(["hit"], st.dns_hits)
        lookups.add_metric(["miss"], st.dns_misses)
        yield lookups
        total = st.dns_hits + st.dns_misses
        yield GaugeMetricFamily(
            "mailsift_dns_cache_hit_ratio",
            "Share of DNS lookups answered from the cache since start (0 before any lookup); "
            "for a window, use rate() of mailsift_dns_cache_lookups_total",
            value=st.dns_hits / total if total else 0.0,
        )
        workers = CounterMetricFamily(
            "mailsift_scoring_workers",
            "Scoring processes: started (replacements included), died, killed at the deadline",
            labels=["event"],
        )
        for event in ("started", "died", "timed_out"):
            workers.add_metric([event], getattr(st, event))
        yield workers


class _StoreCollector:
    """The user store's own counts (:class:`~mailsift.store.StoreStatus` of
    the service process: its learns, replays and the outage it saw), read
    at each scrape; nothing when no user store is open."""

    def __init__(self, status: Callable[[], StoreStatus | None]) -> None:
        self.status = status

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        if st is None:
            return
        yield GaugeMetricFamily(
            "mailsift_store_outage",
            "1 while the shared user store (Redis) is not answering: scores use last known values, "
            "learns are queued",
            value=float(st.outage),
        )
        for name, value, text in (
            ("outages", st.outages, "Times the shared user store stopped answering"),
            ("errors", st.errors, "User store commands that failed or timed out"),
            ("replayed", st.replayed, "Queued learns replayed once the store answered again"),
            ("refused", st.refused, "Learns refused because the outage queue was full"),
            (
                "rejected",
                st.rejected,
                "Queued learns moved to <queue>.rejected (unreadable, or refused by the store)",
            ),
            ("stale_reads", st.stale_reads, "Reads answered with last known values during an outage"),
        ):
            yield CounterMetricFamily(f"mailsift_store_{name}", text, value=value)
        yield GaugeMetricFamily(
            "mailsift_store_queued", "Learns waiting in the local queue for the store", value=st.queued
        )


class Metrics:
    """The counters every door updates through the service."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool_stats: PoolStats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if pool_stats is not None:
            r.register(_PoolCollector(pool_stats))
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
            "Failures by kind: " + ", ".join(ERROR_KINDS),
            ["kind"],
            registry=r,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
        self.model_info = Gauge(
            "mailsift_model_info", "The model in use (value 1)", ["path", "trained", "messages"], registry=r
        )

    def watch_store(self, status: Callable[[], StoreStatus | None]) -> None:
        """Export the user store's status (``status()`` at each scrape)."""
        self.registry.register(_StoreCollector(status))

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

    def messages_by_door(self) -> dict[str, int]:
        """Messages scored so far per door (for the stop line)."""
        out: dict[str, int] = {}
        for metric in self.messages.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    door = sample.labels["door"]
                    out[door] = out.get(door, 0) + int(sample.value)
        return out

    def render(self) -> bytes:
        """The text exposition format, for ``GET /metrics``."""
        return generate_latest(self.registry)
