"""DNS blocklists: IP lists (RBL) for the connecting client and the
untrusted relays before it, domain lists (URIBL/DBL) for the registered
domains of URL hosts and of the sender.

A listing is an A record in 127.0.0.0/8 whose value says what list matched:
``codes`` maps whole values to points and meanings, ``bitmask`` maps bits of
the last octet to them (SURBL and URIBL "multi" zones, where one answer
carries several sublists).  Some answers are not listings but the
operator's way of saying the query failed — Spamhaus's 127.255.255.252/254/
255 (typo in the zone name, public resolver, too many queries), DBL's
127.0.1.255 (an IP sent to a domain list), URIBL's and SURBL's 127.0.0.1
(query refused): those are ``errors``, never counted, logged (at most once
a minute per list and answer, so a refusing list cannot flood the log) and
shown as a zero-point ``*_REFUSED`` hit.  A zone that does not answer in
time gives a zero-point ``*_TIMEOUT`` hit so ``--explain`` says what was not
checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field

from ..score import RuleHit
from .resolver import NXDOMAIN, OK, Resolver
from .tld import registered_domain

log = logging.getLogger("mailsift.rules")

KINDS = ("ip", "domain")
#: which addresses an IP list is asked about (see rules.relay_chain)
SCOPES = ("last-external", "all-untrusted")

#: error answers of every list: RFC 5782 §5 forbids 127.0.0.1 as a listing
#: (URIBL and SURBL answer it to refused queries), and 127.255.255.0/24 is
#: where Spamhaus (and lists that copied it) put their error codes
GENERIC_ERRORS = ("127.0.0.1", "127.255.255.0/24")
#: extra error answers of well-known lists, by zone suffix
KNOWN_ERRORS = {
    "dbl.spamhaus.org": ("127.0.1.255",),  # "IP queries prohibited"
    "dbl.dq.spamhaus.net": ("127.0.1.255",),
}


@dataclass
class Zone:
    """One blocklist, as configured in ``[[dnsbl]]``."""

    name: str  # rule name, e.g. "RCVD_IN_ZEN"
    zone: str  # e.g. "zen.spamhaus.org"
    kind: str = "ip"  # "ip" (client address) or "domain" (URL hosts, sender domain)
    score: float = 2.0  # points for a listing whose code is not in ``codes``
    #: listing value -> (points, meaning); e.g. {"127.0.0.2": [3.0, "SBL"]}
    codes: dict[str, list] = field(default_factory=dict)
    #: bit of the answer's last octet -> (points, meaning), for "multi" zones;
    #: e.g. {8: [4.0, "PH"], 16: [4.0, "MW"]}; an answer with none of these
    #: bits is not a listing for this rule
    bitmask: dict[int, list] = field(default_factory=dict)
    #: answers (addresses or CIDR ranges) that mean "query refused"; empty =
    #: the defaults (GENERIC_ERRORS plus KNOWN_ERRORS for the zone)
    errors: list = field(default_factory=list)
    #: ip lists: "last-external" (only the host that handed the message to
    #: our network: right for PBL-like lists of dial-up ranges) or
    #: "all-untrusted" (that host and the untrusted relays before it)
    scope: str = "last-external"

    def error_networks(self) -> list:
        """The error answers as networks (parsed once, then cached)."""
        cached = self.__dict__.get("_error_nets")
        if cached is None:
            specs = list(self.errors) or [*GENERIC_ERRORS, *_known_errors(self.zone)]
            cached = [ipaddress.ip_network(s, strict=False) for s in specs]
            self.__dict__["_error_nets"] = cached
        return cached


def _known_errors(zone: str) -> tuple[str, ...]:
    zone = zone.lower().strip(".")
    out: tuple[str, ...] = ()
    for suffix, values in KNOWN_ERRORS.items():
        if zone == suffix or zone.endswith("." + suffix):
            out += values
    return out


def reverse_ip(ip: str) -> str:
    """1.2.3.4 -> 4.3.2.1; IPv6 as reversed nibbles (RFC 5782)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ".".join(reversed(str(addr).split(".")))
    return ".".join(reversed(addr.exploded.replace(":", "")))


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def query_domains(names: list[str]) -> list[str]:
    """The names a domain list is asked about: each host's registered domain
    (Public Suffix List), as URIBL, SURBL and Spamhaus DBL ask; IP literals
    are dropped (DBL answers them 127.0.1.255, the others mis-list them),
    and so are bare public suffixes."""
    out: dict[str, None] = {}
    for name in names:
        name = name.strip().strip(".").lower()
        if not name or "." not in name or is_ip_literal(name):
            continue
        reg = registered_domain(name)
        if reg and "." in reg:
            out[reg] = None
    return list(out)


async def check_ip(resolver: Resolver, ip: str, zones: list[Zone]) -> list[RuleHit]:
    """Ask every IP list in ``zones`` about ``ip`` (the caller chose the
    zones by scope)."""
    try:
        rev = reverse_ip(ip)
    except ValueError:
        return []
    checks = [_lookup(resolver, z, f"{rev}.{z.zone}", ip) for z in zones if z.kind == "ip"]
    return [h for hits in await asyncio.gather(*checks) for h in hits]


async def check_domains(resolver: Resolver, domains: list[str], zones: list[Zone]) -> list[RuleHit]:
    """Ask every domain list about ``domains`` (already registered domains,
    see :func:`query_domains`)."""
    checks = [
        _lookup(resolver, z, f"{d}.{z.zone}", d)
        for z in zones
        if z.kind == "domain"
        for d in dict.fromkeys(domains)
    ]
    hits = [h for found in await asyncio.gather(*checks) for h in found]
    seen: set[tuple[str, str]] = set()  # one hit per rule and matched domain
    return [h for h in hits if (h.name, h.detail) not in seen and not seen.add((h.name, h.detail))]


_last_logged: dict[tuple[str, str], float] = {}


def _log_refused(zone: Zone, subject: str, value: str) -> None:
    now = time.monotonic()
    key = (zone.zone, value)
    if now - _last_logged.get(key, -1e9) >= 60.0:
        _last_logged[key] = now
        log.warning(
            "%s refused the query for %s (answer %s): not counted as a listing; "
            "check the list's terms (public resolvers and high volumes are refused)",
            zone.zone,
            subject,
            value,
        )


async def _lookup(resolver: Resolver, zone: Zone, qname: str, subject: str) -> list[RuleHit]:
    answer = await resolver.query(qname, "A")
    if answer.status == NXDOMAIN:
        return []
    if answer.status != OK:
        return [RuleHit(f"{zone.name}_TIMEOUT", 0.0, f"{zone.zone} did not answer", answer.detail)]
    return listing_hits(zone, subject, answer.records)


def listing_hits(zone: Zone, subject: str, values: tuple[str, ...] | list[str]) -> list[RuleHit]:
    """Hits for the A records a list answered about ``subject``."""
    hits = []
    for value in values:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            continue
        if any(addr in net for net in zone.error_networks()):
            _log_refused(zone, subject, value)
            hits.append(
                RuleHit(f"{zone.name}_REFUSED", 0.0, f"{zone.zone} refused the query (not a listing)", value)
            )
            continue
        if addr.version != 4 or not value.startswith("127."):
            log.warning("%s answered %s for %s: not a listing code, ignored", zone.zone, value, subject)
            continue
        if zone.bitmask:
            last = int(value.rsplit(".", 1)[1])
            matched = [(bit, spec) for bit, spec in sorted(zone.bitmask.items()) if last & bit]
            if not matched:
                continue  # only sublists this rule does not use
            points = max(float(spec[0]) for _, spec in matched)
            meaning = "+".join(str(spec[1]) for _, spec in matched)
        else:
            points, meaning = zone.codes.get(value, (zone.score, "listed"))
        hits.append(
            RuleHit(zone.name, float(points), f"{subject} in {zone.zone}: {meaning}", f"{subject} -> {value}")
        )
    return hits
