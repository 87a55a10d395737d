"""Hand-written rules: each family in its own module returns ``RuleHit``s,
whose points are added to the model's in ``Filter.verdict``.

Built so far: TLD and domain lists (``tld.py``), DNS blocklists
(``dnsbl.py``) on one shared resolver (``resolver.py``), SPF/DKIM/DMARC/ARC
(``auth.py``).  Network rules only run when zones are configured or
``[auth]`` is on, and only where they have their inputs.

Who sent the message: the relay chain is the SMTP client (Postfix's XFORWARD,
or ``--ip``) followed by the Received chain, newest first.  Private, loopback
and ``[network] internal_networks`` hosts are ours; the first host that is
not is the *last external* one — the host that handed the message to our
network, the only address nobody outside can forge: IP lists with
``scope = "last-external"`` and SPF ask about it.  Hosts outside
``trusted_networks`` are *untrusted*; lists with ``scope = "all-untrusted"``
ask about each of them (bounded).  Private and loopback addresses are never
sent to a list.  Mail submitted by our own users (XFORWARD ``SOURCE=LOCAL``,
an authenticated client) is outbound: the checks that only mean something
for inbound mail (IP lists, SPF/DKIM/DMARC) are skipped, with a zero-point
``OUTBOUND_MAIL`` hit saying why; URL domain lists still run.

All network checks of one message share one deadline; what is unfinished by
then becomes a zero-point ``DNS_DEADLINE`` hit, so DNS trouble can delay a
verdict by at most the deadline and never makes mail spam on its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
from dataclasses import dataclass, field

from ..parse import ParsedMessage
from ..score import RuleHit
from . import auth
from .auth import AuthConfig
from .dnsbl import Zone, check_domains, check_ip, query_domains
from .resolver import Resolver

__all__ = ["Context", "NetworkConfig", "NetworkOutcome", "NetworkRules", "Zone"]

log = logging.getLogger("mailsift.rules")


@dataclass
class Context:
    """What the SMTP session knows about the sender (empty from the CLI
    unless given with --ip/--helo/--mail-from)."""

    client_ip: str = ""
    helo: str = ""
    mail_from: str = ""
    #: Postfix's XFORWARD SOURCE: "LOCAL" (submitted on this system),
    #: "REMOTE", or "" (not said)
    source: str = ""
    #: the client authenticated (SMTP AUTH on submission)
    authenticated: bool = False


@dataclass
class NetworkConfig:
    """``[network]`` in the config: which relays are ours."""

    #: relays whose Received headers you believe (your MX hosts, backup MX,
    #: the provider that forwards to you), as CIDR ranges; private and
    #: loopback ranges are always trusted
    trusted_networks: list = field(default_factory=list)
    #: the hosts of your own network (a subset of the trusted ones): the
    #: first relay outside them is the "last external" one; empty = the
    #: same as trusted_networks
    internal_networks: list = field(default_factory=list)


def parse_networks(specs: list[str]) -> list:
    """CIDR strings -> networks; raises ValueError naming the bad one."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec, strict=False))
        except ValueError:
            raise ValueError(f"{spec!r} is not an address or CIDR range") from None
    return out


@dataclass
class Relays:
    """The relay chain as the network rules see it."""

    #: the host that handed the message to our network ("" if none is known)
    last_external: str = ""
    #: its HELO name, when known
    helo: str = ""
    #: every untrusted host, newest first, at most MAX_UNTRUSTED
    untrusted: list[str] = field(default_factory=list)
    #: at least one address was seen (so an empty last_external means
    #: "all of them are ours")
    seen: bool = False
    #: the client came from the Received chain, not the SMTP session
    from_received: bool = False


@dataclass
class NetworkOutcome:
    """What the network rules found: their hits, and the SPF/DKIM/DMARC
    result behind the auth hits (the address lists need it to honour an
    allow entry); ``auth`` is None when authentication was not checked, and
    ``unchecked`` then says why."""

    hits: list[RuleHit] = field(default_factory=list)
    auth: auth.AuthResult | None = None
    unchecked: str = ""


#: "all-untrusted" lists are asked about at most this many hosts
MAX_UNTRUSTED = 5


class _Networks:
    def __init__(self, config: NetworkConfig):
        self.trusted = parse_networks(config.trusted_networks)
        self.internal = parse_networks(config.internal_networks) if config.internal_networks else self.trusted

    @staticmethod
    def _ours(addr, nets) -> bool:
        return not addr.is_global or any(addr in n for n in nets)

    def internal_addr(self, addr) -> bool:
        return self._ours(addr, self.internal)

    def trusted_addr(self, addr) -> bool:
        return self._ours(addr, self.trusted) or self._ours(addr, self.internal)


def relay_chain(msg: ParsedMessage, ctx: Context, nets: _Networks) -> Relays:
    out = Relays(from_received=not ctx.client_ip)
    chain: list[tuple[str, str]] = []
    if ctx.client_ip:
        chain.append((ctx.client_ip, ctx.helo))
    for hop in msg.received:
        chain.append((hop.from_ip, hop.from_host))
    seen: set[str] = set()
    for text, helo in chain:
        try:
            addr = ipaddress.ip_address(text.strip("[]").removeprefix("IPv6:").removeprefix("ipv6:"))
        except ValueError:
            continue
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        key = str(addr)
        if key in seen:
            continue
        seen.add(key)
        out.seen = True
        if not out.last_external and not nets.internal_addr(addr):
            out.last_external, out.helo = key, helo
            if ctx.client_ip and key != str(ctx.client_ip):
                out.from_received = True  # the session's client was one of ours
        if out.last_external and not nets.trusted_addr(addr) and len(out.untrusted) < MAX_UNTRUSTED:
            out.untrusted.append(key)
    return out


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
        network: NetworkConfig | None = None,
    ):
        self.zones = zones
        self.deadline = deadline
        self.resolver = Resolver(servers, timeout)
        self.auth = auth_config or AuthConfig()
        self.networks = _Networks(network or NetworkConfig())

    def check(self, msg: ParsedMessage, ctx: Context | None, raw: bytes | None = None) -> list[RuleHit]:
        """``raw`` is the whole message as the MTA handed it over (DKIM and
        ARC sign all of it); default ``msg.raw``."""
        return self.run(msg, ctx, raw).hits

    def run(self, msg: ParsedMessage, ctx: Context | None, raw: bytes | None = None) -> NetworkOutcome:
        """:meth:`check`, with the authentication result kept."""
        if not self.zones and not self.auth.enabled:
            return NetworkOutcome(unchecked="[auth] is not enabled")
        out = NetworkOutcome(unchecked="authentication not finished")
        try:
            out.hits = asyncio.run(self._check(msg, ctx or Context(), msg.raw if raw is None else raw, out))
        except Exception as exc:  # never let a rule bug decide, or lose, a message
            log.exception("network rules failed")
            name = "NETWORK_RULES_ERROR"
            return NetworkOutcome(
                [RuleHit(name, 0.0, "network rules failed; see the log", type(exc).__name__)],
                unchecked="network rules failed",
            )
        if out.auth is not None:
            out.unchecked = ""
        return out

    async def _check(
        self, msg: ParsedMessage, ctx: Context, raw: bytes, out: NetworkOutcome
    ) -> list[RuleHit]:
        hits: list[RuleHit] = []
        if not self.auth.enabled:
            out.unchecked = "[auth] is not enabled"
        outbound = ctx.source.upper() == "LOCAL" or ctx.authenticated
        inbound_checks = not outbound
        if outbound:
            why = "XFORWARD SOURCE=LOCAL" if ctx.source.upper() == "LOCAL" else "authenticated client"
            hits.append(
                RuleHit("OUTBOUND_MAIL", 0.0, "outbound mail: IP lists and SPF/DKIM/DMARC skipped", why)
            )
            relays = Relays()
            out.unchecked = f"outbound mail ({why}): not authenticated"
        else:
            relays = relay_chain(msg, ctx, self.networks)
            if relays.last_external and relays.from_received:
                hits.append(
                    RuleHit(
                        "CLIENT_FROM_RECEIVED",
                        0.0,
                        "client taken from the Received chain (no external SMTP client given)",
                        relays.last_external,
                    )
                )
            elif relays.seen and not relays.last_external:
                inbound_checks = False
                out.unchecked = "every relay is internal: not authenticated"
                hits.append(
                    RuleHit(
                        "INTERNAL_CLIENT",
                        0.0,
                        "every relay is in our own networks: IP lists and SPF/DKIM/DMARC skipped",
                        ctx.client_ip or "Received chain",
                    )
                )
        names = list(msg.url_hosts[:20])
        if inbound_checks:
            names += [msg.from_domain, _domain(ctx.mail_from)]
        domains = query_domains(names)
        tasks = []
        if inbound_checks and self.zones:
            last = [z for z in self.zones if z.kind == "ip" and z.scope == "last-external"]
            every = [z for z in self.zones if z.kind == "ip" and z.scope == "all-untrusted"]
            asked: dict[str, list[Zone]] = {}
            if relays.last_external and last:
                asked.setdefault(relays.last_external, []).extend(last)
            for addr in relays.untrusted if every else []:
                asked.setdefault(addr, []).extend(every)
            for addr, zones in asked.items():
                tasks.append(asyncio.ensure_future(check_ip(self.resolver, addr, zones)))
        if domains and self.zones:
            tasks.append(asyncio.ensure_future(check_domains(self.resolver, domains, self.zones)))
        if self.auth.enabled and inbound_checks:
            trusted = auth.from_trusted_headers(msg, self.auth.trusted_authserv_ids, relays.last_external)
            arc_may_help = self.auth.trusted_arc_sealers and msg.header("arc-seal")
            complete = trusted is not None and trusted.trusted >= {"spf", "dkim", "dmarc"}
            if complete and not (trusted.dmarc == "fail" and arc_may_help):
                hits += auth.hits(trusted, auth.DEFAULT_WEIGHTS, "trusted Authentication-Results")
                out.auth = trusted
            else:  # pyspf and dkimpy are synchronous: a thread each message
                tasks.append(asyncio.ensure_future(self._auth(msg, raw, relays, ctx.mail_from, trusted, out)))
        if not tasks:
            return hits
        skipped = self.resolver.skipped
        done, pending = await asyncio.wait(tasks, timeout=self.deadline)
        for task in pending:
            task.cancel()
        for task in done:
            hits += task.result()
        if pending:
            hits.append(RuleHit("DNS_DEADLINE", 0.0, f"DNS checks unfinished after {self.deadline:g} s", ""))
            if out.auth is None and self.auth.enabled and inbound_checks:
                out.unchecked = f"authentication unfinished after the {self.deadline:g} s DNS deadline"
        if self.resolver.skipped > skipped:  # the resolver's breaker is open (rules/resolver.py)
            n = self.resolver.skipped - skipped
            hits.append(
                RuleHit("DNS_UNAVAILABLE", 0.0, "DNS servers not answering: lookups skipped", f"{n} skipped")
            )
        return _one_per_rule(hits)

    async def _auth(
        self,
        msg: ParsedMessage,
        raw: bytes,
        relays: Relays,
        mail_from: str,
        known: auth.AuthResult | None,
        out: NetworkOutcome,
    ) -> list[RuleHit]:
        loop = asyncio.get_running_loop()
        dns_ = auth.LoopDNS(self.resolver, loop)
        ip = relays.last_external
        try:
            result = await loop.run_in_executor(
                _AUTH_THREADS, auth.evaluate, dns_, msg, raw, ip, mail_from, relays.helo, self.auth, known
            )
        except asyncio.CancelledError:  # the deadline: let the thread stop asking
            dns_.expire()
            raise
        out.auth = result
        return auth.hits(result, auth.DEFAULT_WEIGHTS, ip)


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
