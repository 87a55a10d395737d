"""Top-level-domain and domain blocklists, with allow-lists that win.

Matched against the places a sender controls: the envelope sender, From,
Reply-To and Return-Path domains, the host names in the Received chain, and
the hosts of URLs in the body.  Registered domains come from the Public
Suffix List (the copy packaged with ``publicsuffixlist``; nothing is
downloaded at run time), so ``a.b.example.co.uk`` is ``example.co.uk``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from ..parse import ParsedMessage, domain_of
from ..score import RuleHit

#: TLDs that the abuse statistics of the last years put at the top: Spamhaus'
#: "most abused top level domains" reports (2023-2025) and Interisle's
#: Phishing Landscape studies (2023-2024).  Every one also has legitimate
#: users, which is why a hit is worth a few points, not a verdict.
DEFAULT_BLOCKED_TLDS = (
    "bond", "buzz", "cfd", "click", "cyou", "icu", "lol", "monster", "quest", "rest",
    "sbs", "top", "xyz", "zip", "mov", "gq", "ml", "cf", "ga", "tk",
)  # fmt: skip


@dataclass
class DomainRules:
    """``[domains]`` in the config."""

    #: TLDs whose use in the places above earns points (default list above)
    blocked_tlds: list = field(default_factory=lambda: list(DEFAULT_BLOCKED_TLDS))
    #: registered domains (or exact host names) that earn points
    blocked_domains: list = field(default_factory=list)
    #: sender addresses and domains whose mail is never scored by these rules
    allowed_senders: list = field(default_factory=list)
    allowed_domains: list = field(default_factory=list)
    #: points for a match in the sender's own domains (envelope, From, Reply-To, Return-Path)
    sender_score: float = 1.5
    #: points for a match among URL hosts in the body
    url_score: float = 1.0
    #: points for a match in the Received chain's host names
    received_score: float = 0.5


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@lru_cache(maxsize=50_000)
def registered_domain(host: str) -> str:
    """example.co.uk for a.b.example.co.uk; the host itself if the PSL does
    not know it (single labels, IP literals)."""
    host = host.strip(".").lower()
    return _psl().privatesuffix(host) or host


#: "from helo.name (rdns.name [1.2.3.4])": the names in the from-clause.  A
#: regex, not the full Received parser: that costs ~0.2 ms a message.  The
#: first letter is spelled out and the word boundary is a lookbehind after it
#: so the scan skips to each "f" (a leading ``\b`` under re.I tests every
#: position); the rest is case-insensitive as before.
_RCVD_FROM = re.compile(r"[Ff](?<!\w[Ff])(?i:rom\s+([\w.-]+\.[a-z]{2,})(?:\s+\(([\w.-]+\.[a-z]{2,})\b)?)")
#: a Received header longer than this is read only this far (hostile mail)
MAX_RECEIVED_CHARS = 2000


def received_hosts(msg: ParsedMessage, hops: int = 6) -> list[str]:
    hosts: list[str] = []
    values = [v for k, v in msg.raw_headers if k == "received"][:hops]  # ASCII: no decoding needed
    for value in values:
        m = _RCVD_FROM.search(value, 0, MAX_RECEIVED_CHARS)
        if m:
            a, b = m.groups()
            hosts.append(a.lower())
            if b:
                hosts.append(b.lower())
    return list(dict.fromkeys(hosts))


#: every rule name ``check`` can return (for config validation and ``tune``)
RULE_NAMES = ("SENDER_ALLOWED",) + tuple(
    f"{place}_{what}_BLOCKED" for place in ("SENDER", "URL", "RCVD") for what in ("TLD", "DOMAIN")
)


@lru_cache(maxsize=64)
def _lists(
    tlds: tuple[str, ...], blocked: tuple[str, ...], allowed: tuple[str, ...], senders: tuple[str, ...]
) -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """The configured lists, normalised once per distinct configuration
    rather than on every message."""
    return (
        frozenset(t.lower().lstrip(".") for t in tlds),
        frozenset(d.lower() for d in blocked),
        frozenset(d.lower() for d in allowed),
        frozenset(a.lower() for a in senders),
    )


def check(msg: ParsedMessage, envelope_sender: str, rules: DomainRules) -> list[RuleHit]:
    sender_domains = {
        d
        for d in (
            domain_of(envelope_sender),
            msg.from_domain,
            msg.reply_to_domain,
            domain_of(msg.return_path),
        )
        if d
    }
    tlds, blocked, allowed, allowed_senders = _lists(
        tuple(rules.blocked_tlds),
        tuple(rules.blocked_domains),
        tuple(rules.allowed_domains),
        tuple(rules.allowed_senders),
    )
    senders = {a.lower() for a in (envelope_sender, msg.from_addr) if a}
    if senders & allowed_senders or (
        allowed and any(d in allowed or registered_domain(d) in allowed for d in sender_domains)
    ):
        return [RuleHit("SENDER_ALLOWED", 0.0, "sender is on the allow-list; domain rules skipped", "")]
    # the URL hosts are read only if one may be in a blocked TLD (or domains
    # are blocked): most mail's HTML is then never turned into text
    url_hosts = msg.url_hosts[:50] if blocked or msg.urls_may_end_in(tlds) else []
    places = (
        ("SENDER", sorted(sender_domains), rules.sender_score),
        ("URL", url_hosts, rules.url_score),
        ("RCVD", received_hosts(msg), rules.received_score),
    )
    hits = []
    for place, hosts, points in places:
        if not hosts:
            continue
        tld_match = next((h for h in hosts if h.rpartition(".")[2] in tlds), None)
        if tld_match:
            tld = tld_match.rpartition(".")[2]
            hits.append(
                RuleHit(f"{place}_TLD_BLOCKED", points, f".{tld} is on the blocked TLD list", tld_match)
            )
        dom_match = blocked and next(
            (h for h in hosts if h in blocked or registered_domain(h) in blocked), None
        )
        if dom_match:
            hits.append(
                RuleHit(f"{place}_DOMAIN_BLOCKED", points * 2, "domain is on the blocklist", dom_match)
            )
    return hits
