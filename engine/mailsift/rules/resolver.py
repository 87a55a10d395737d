"""The one DNS resolver every network rule shares.

dnspython's asyncio resolver with a per-query timeout, a small LRU cache
that honours TTLs (blocklist answers repeat a lot: the same relay IPs and
URL domains), and a fixed set of servers when configured (tests point it at
a server on 127.0.0.1).  Failures are returned as a status, never raised:
a DNS problem may cost a rule its answer, never the message its delivery.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

OK, NXDOMAIN, TIMEOUT, ERROR = "ok", "nxdomain", "timeout", "error"


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

    async def query(self, name: str, rdtype: str = "A") -> Answer:
        key = (name.lower(), rdtype)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit and hit[0] > now:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit[1]
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
            return Answer(TIMEOUT, detail=f"no answer for {name} in {self._r.lifetime:g} s")
        except dns.exception.DNSException as exc:
            return Answer(ERROR, detail=f"{name}: {type(exc).__name__}")  # SERVFAIL etc.: not cached
        self._cache[key] = (now + max(min(ttl, 3600.0), 1.0), answer)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return answer


def _has_port(server: str) -> bool:
    head, sep, port = server.rpartition(":")
    return bool(sep) and port.isdigit() and (head.count(":") == 0 or head.endswith("]"))
