"""Hand-written rules: each family in its own module returns ``RuleHit``s,
whose points are added to the model's in ``Filter.verdict``.

Built so far: TLD and domain lists (``tld.py``), DNS blocklists
(``dnsbl.py``) on one shared resolver (``resolver.py``), SPF/DKIM/DMARC
(``auth.py``).  Network rules only run when zones are configured, and
only where they have their inputs: the connecting client's address comes
from the SMTP session (Postfix's XFORWARD) or ``--ip``; without it, the
first public address in the Received chain is used, and the hit says so.
All network checks of one message share one deadline; what is unfinished by
then becomes a zero-point ``DNS_DEADLINE`` hit, so DNS trouble can delay a
verdict by at most the deadline and never makes mail spam on its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
from dataclasses import dataclass

from ..parse import ParsedMessage, org_domain
from ..score import RuleHit
from . import auth
from .auth import AuthConfig
from .dnsbl import Zone, check_domains, check_ip
from .resolver import Resolver

__all__ = ["Context", "NetworkRules", "Zone"]

log = logging.getLogger("mailsift.rules")


@dataclass
class Context:
    """What the SMTP session knows about the sender (empty from the CLI
    unless given with --ip/--helo/--mail-from)."""

    client_ip: str = ""
    helo: str = ""
    mail_from: str = ""
    source: str = ""
    authenticated: bool = False


def public_hops(msg: ParsedMessage) -> list[str]:
    """Public addresses of the Received chain, newest first.  Private and
    loopback hops are our own relays (trusted); the first public one is the
    client that handed the message to our side, the rest are the relays
    before it, which a spammer can also have used or forged."""
    out = []
    for hop in msg.received:
        try:
            addr = ipaddress.ip_address(hop.from_ip)
        except ValueError:
            continue
        if addr.is_global and hop.from_ip not in out:
            out.append(hop.from_ip)
    return out


def first_public_hop(msg: ParsedMessage) -> str:
    hops = public_hops(msg)
    return hops[0] if hops else ""


#: IP lists are asked about the client and this many earlier untrusted hops
MAX_RELAY_HOPS = 2


#: threads for the synchronous SPF/DKIM/DMARC libraries.  Not the event
#: loop's default executor: asyncio.run() waits for that one at exit, which
#: would let a dead DNS server hold a message past its deadline.  A check cut
#: off by the deadline finishes in the background, bounded by dns.timeout.
_AUTH_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="mailsift-auth")


class NetworkRules:
    """DNS-based checks with their resolvers (and cache), made once per
    Filter, so the cache lives as long as the filter does."""

    def __init__(
        self,
        zones: list[Zone],
        servers: list[str],
        timeout: float,
        deadline: float,
        auth_config: AuthConfig | None = None,
    ):
        self.zones = zones
        self.deadline = deadline
        self.resolver = Resolver(servers, timeout)
        self.auth = auth_config or AuthConfig()

    def check(self, msg: ParsedMessage, ctx: Context | None) -> list[RuleHit]:
        if not self.zones and not self.auth.enabled:
            return []
        try:
            return asyncio.run(self._check(msg, ctx or Context()))
        except Exception as exc:  # never let a rule bug decide, or lose, a message
            log.exception("network rules failed")
            return [
                RuleHit("NETWORK_RULES_ERROR", 0.0, "network rules failed; see the log", type(exc).__name__)
            ]

    async def _check(self, msg: ParsedMessage, ctx: Context) -> list[RuleHit]:
        hits: list[RuleHit] = []
        ip = ctx.client_ip
        if not ip:
            ip = first_public_hop(msg)
            if ip:
                hits.append(
                    RuleHit("CLIENT_FROM_RECEIVED", 0.0, "no SMTP client given: using the Received chain", ip)
                )
        names = [*msg.url_hosts[:20], msg.from_domain, _domain(ctx.mail_from)]
        domains = [d for n in names if n for d in (n, org_domain(n))]
        tasks = []
        if ip and self.zones:
            relays = (
                [h for h in public_hops(msg) if h != ip][:MAX_RELAY_HOPS] if _has_ip_zones(self.zones) else []
            )
            for addr in [ip, *relays]:
                tasks.append(asyncio.ensure_future(check_ip(self.resolver, addr, self.zones)))
        if domains and self.zones:
            tasks.append(asyncio.ensure_future(check_domains(self.resolver, domains, self.zones)))
        if self.auth.enabled:
            trusted = auth.from_trusted_header(msg, self.auth.trusted_authserv_ids)
            if trusted is not None:
                hits += auth.hits(trusted, auth.DEFAULT_WEIGHTS, "trusted Authentication-Results")
            else:  # pyspf and dkimpy are synchronous: a thread each message
                tasks.append(asyncio.ensure_future(self._auth(msg, ip, ctx)))
        if not tasks:
            return hits
        done, pending = await asyncio.wait(tasks, timeout=self.deadline)
        for task in pending:
            task.cancel()
        for task in done:
            hits += task.result()
        if pending:
            hits.append(RuleHit("DNS_DEADLINE", 0.0, f"DNS checks unfinished after {self.deadline:g} s", ""))
        return _one_per_rule(hits)

    async def _auth(self, msg: ParsedMessage, ip: str, ctx: Context) -> list[RuleHit]:
        loop = asyncio.get_running_loop()
        dns_ = auth.LoopDNS(self.resolver, loop)
        result = await loop.run_in_executor(
            _AUTH_THREADS, auth.evaluate, dns_, msg, ip, ctx.mail_from, ctx.helo
        )
        return auth.hits(result, auth.DEFAULT_WEIGHTS, ip)


def _has_ip_zones(zones: list[Zone]) -> bool:
    return any(z.kind == "ip" for z in zones)


def _one_per_rule(hits: list[RuleHit]) -> list[RuleHit]:
    """A rule counts once per message (its strongest hit), however many hops
    or domains it matched, as SpamAssassin's RCVD_IN_* rules do."""
    best: dict[str, RuleHit] = {}
    for h in hits:
        if h.name not in best or h.score > best[h.name].score:
            best[h.name] = h
    return list(best.values())


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2].strip("<>").lower() if "@" in addr else ""
