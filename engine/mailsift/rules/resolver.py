"""The one DNS resolver every network rule shares.

dnspython's asyncio resolver with a per-query timeout, a small LRU cache
that honours TTLs (blocklist answers repeat a lot: the same relay IPs and
URL domains), and a fixed set of servers when configured (tests point it at
a server on 127.0.0.1).  Failures are returned as a status, never raised:
a DNS problem may cost a rule its answer, never the message its delivery.

A circuit breaker keeps a dead DNS server from costing every message the
whole DNS deadline (a burst then waits in the scoring queue and, before,
passed unscanned): after :data:`TRIP_AFTER` lookups in a row got no answer
in time, lookups are skipped (answered ``TIMEOUT`` at once, so the rules
give their zero-point ``*_TIMEOUT``/``*_TEMPERROR`` hits and the filter adds
``DNS_UNAVAILABLE``) for a back-off that doubles from :data:`BACKOFF_FIRST`
to :data:`BACKOFF_MAX` seconds while single probe lookups keep failing.
Any answer (NXDOMAIN and SERVFAIL included) closes it.  Logged once when it
opens and once when DNS answers again.  One breaker per resolver, so per
scoring process.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

OK, NXDOMAIN, TIMEOUT, ERROR = "ok", "nxdomain", "timeout", "error"
#: lookups in a row without an answer that open the breaker
TRIP_AFTER = 3
BACKOFF_FIRST = 10.0
BACKOFF_MAX = 300.0

log = logging.getLogger("mailsift.rules")


@dataclass(frozen=True)
class Answer:
    status: str  # OK, NXDOMAIN (includes "no answer"), TIMEOUT or ERROR
    records: tuple[str, ...] = ()
    detail: str = ""
    rdata: tuple = ()  # dnspython's records, for callers that want their fields


class Resolver:
    def __init__(self, servers: list[str] | None = None, timeout: float = 1.0, cache_size: int = 10_000):
        if servers:
            self._r = dns.asyncresolver.Resolver(configure=False)
            self._r.nameservers = [s.rpartition(":")[0].strip("[]") if _has_port(s) else s for s in servers]
            ports = {int(s.rpartition(":")[2]) for s in servers if _has_port(s)}
            if len(ports) > 1:
                raise ValueError("dns.servers: all servers must use the same port")
            self._r.port = ports.pop() if ports else 53
        else:
            self._r = dns.asyncresolver.Resolver()  # the system's /etc/resolv.conf
        self._r.timeout = timeout
        self._r.lifetime = timeout
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._cache_size = cache_size
        #: lookups answered from the cache / sent to a server (the hit rate
        #: in ``mailsift serve``'s metrics is hits / (hits + queries))
        self.hits = 0
        self.queries = 0
        self.servers = ", ".join(servers or self._r.nameservers) or "system resolver"
        self.breaker = Breaker(self.servers)

    @property
    def skipped(self) -> int:
        """Lookups not sent because the breaker was open (since start)."""
        return self.breaker.skipped

    async def query(self, name: str, rdtype: str = "A") -> Answer:
        key = (name.lower(), rdtype)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit and hit[0] > now:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit[1]
        if not self.breaker.allow():
            return Answer(TIMEOUT, detail=f"DNS unavailable ({self.servers} not answering): {name} not asked")
        self.queries += 1
        ttl = 60.0
        try:
            result = await self._r.resolve(name, rdtype, raise_on_no_answer=False)
            rdata = tuple(result.rrset) if result.rrset else ()
            records = tuple(r.to_text().strip('"') for r in rdata)
            answer = Answer(OK if records else NXDOMAIN, records, rdata=rdata)
            if result.rrset is not None:
                ttl = float(result.rrset.ttl)
        except dns.resolver.NXDOMAIN:
            answer = Answer(NXDOMAIN)
        except dns.exception.Timeout:
            self.breaker.timed_out()
            return Answer(TIMEOUT, detail=f"no answer for {name} in {self._r.lifetime:g} s")
        except dns.exception.DNSException as exc:
            self.breaker.answered()
            return Answer(ERROR, detail=f"{name}: {type(exc).__name__}")  # SERVFAIL etc.: not cached
        except BaseException:  # cancelled (the message's deadline): neither an answer nor a timeout
            self.breaker.abandoned()
            raise
        self.breaker.answered()
        self._cache[key] = (now + max(min(ttl, 3600.0), 1.0), answer)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return answer


class Breaker:
    """The resolver's circuit breaker (see the module docstring)."""

    def __init__(self, servers: str):
        self.servers = servers
        self.failures = 0  # lookups in a row without an answer
        self.open_until = 0.0  # while open: skip lookups until then
        self.opened_at = 0.0
        self.backoff = BACKOFF_FIRST
        self.probing = False  # one lookup is let through after the back-off
        self.skipped = 0

    @property
    def is_open(self) -> bool:
        return self.opened_at > 0

    def allow(self) -> bool:
        if not self.is_open:
            return True
        if self.probing or time.monotonic() < self.open_until:
            self.skipped += 1
            return False
        self.probing = True
        return True

    def answered(self) -> None:
        if self.is_open:
            log.warning(
                "DNS servers %s answer again after %.0f s: network checks resumed",
                self.servers,
                time.monotonic() - self.opened_at,
            )
        self.failures, self.opened_at, self.probing, self.backoff = 0, 0.0, False, BACKOFF_FIRST

    def timed_out(self) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.is_open:
            if self.probing:  # the probe failed: wait longer
                self.probing = False
                self.backoff = min(self.backoff * 2, BACKOFF_MAX)
                self.open_until = now + self.backoff
        elif self.failures >= TRIP_AFTER:
            self.opened_at, self.open_until = now, now + self.backoff
            log.warning(
                "DNS servers %s did not answer %d lookups in a row: DNS checks skipped (DNS_UNAVAILABLE) "
                "and tried again every %g-%g s",
                self.servers,
                self.failures,
                BACKOFF_FIRST,
                BACKOFF_MAX,
            )

    def abandoned(self) -> None:
        if self.probing:
            self.probing = False  # the probe was cancelled: the next lookup probes


def _has_port(server: str) -> bool:
    head, sep, port = server.rpartition(":")
    return bool(sep) and port.isdigit() and (head.count(":") == 0 or head.endswith("]"))
