"""DNS blocklists: IP lists (RBL) for the connecting client, domain lists
(URIBL/DBL) for URL hosts and the sender's domain.

A listing is an A record in 127.0.0.0/8 whose value says what list matched
(``codes`` maps values to meanings).  Values in 127.255.255.0/24 are the
list operators' way of saying "query refused" (rate limits, public
resolvers): never a hit, only a log line.  A zone that does not answer in
time gives a zero-score ``*_TIMEOUT`` hit so ``--explain`` says what was not
checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass, field

from ..score import RuleHit
from .resolver import NXDOMAIN, OK, Resolver

log = logging.getLogger("mailsift.rules")


@dataclass
class Zone:
    """One blocklist, as configured in ``[[dnsbl]]``."""

    name: str  # rule name, e.g. "RCVD_IN_ZEN"
    zone: str  # e.g. "zen.spamhaus.org"
    kind: str = "ip"  # "ip" (client address) or "domain" (URL hosts, sender domain)
    score: float = 2.0  # points for a listing whose code is not in ``codes``
    #: listing value -> (points, meaning); e.g. {"127.0.0.2": [3.0, "SBL"]}
    codes: dict[str, list] = field(default_factory=dict)


def reverse_ip(ip: str) -> str:
    """1.2.3.4 -> 4.3.2.1; IPv6 as reversed nibbles (RFC 5782)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ".".join(reversed(str(addr).split(".")))
    return ".".join(reversed(addr.exploded.replace(":", "")))


async def check_ip(resolver: Resolver, ip: str, zones: list[Zone]) -> list[RuleHit]:
    try:
        rev = reverse_ip(ip)
    except ValueError:
        return []
    checks = [_lookup(resolver, z, f"{rev}.{z.zone}", ip) for z in zones if z.kind == "ip"]
    return [h for hits in await asyncio.gather(*checks) for h in hits]


async def check_domains(resolver: Resolver, domains: list[str], zones: list[Zone]) -> list[RuleHit]:
    checks = [
        _lookup(resolver, z, f"{d}.{z.zone}", d)
        for z in zones
        if z.kind == "domain"
        for d in dict.fromkeys(domains)
    ]
    hits = [h for found in await asyncio.gather(*checks) for h in found]
    seen: set[tuple[str, str]] = set()  # one hit per rule and matched domain
    return [h for h in hits if (h.name, h.detail) not in seen and not seen.add((h.name, h.detail))]


async def _lookup(resolver: Resolver, zone: Zone, qname: str, subject: str) -> list[RuleHit]:
    answer = await resolver.query(qname, "A")
    if answer.status == NXDOMAIN:
        return []
    if answer.status != OK:
        return [RuleHit(f"{zone.name}_TIMEOUT", 0.0, f"{zone.zone} did not answer", answer.detail)]
    hits = []
    for value in answer.records:
        if value.startswith("127.255.255."):
            log.warning(
                "%s refused the query for %s (%s): not counted as a listing", zone.zone, subject, value
            )
            continue
        if not value.startswith("127."):
            log.warning("%s answered %s for %s: not a listing code, ignored", zone.zone, value, subject)
            continue
        points, meaning = zone.codes.get(value, (zone.score, "listed"))
        hits.append(
            RuleHit(zone.name, float(points), f"{subject} in {zone.zone}: {meaning}", f"{subject} -> {value}")
        )
    return hits
