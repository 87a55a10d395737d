"""Address lists: SpamAssassin's ``whitelist_auth`` and ``blacklist_from``,
per site (``[lists]`` in the config) and per user (kept with the user's
state in the store, see ``mailsift.store``).

Entries are glob patterns on addresses (``*@example.com``,
``news@*.example.org``, ``alice@example.net``), matched without regard to
case.  A *block* entry matches the From address or the envelope sender and
always counts: anybody may forge a sender, but a forged sender that lands
mail on a block list costs only the forger.  An *allow* entry matches only
the From address (what the reader sees) and counts only when that address
is authenticated: SPF passed for an envelope domain aligned with the From
domain, a DKIM signature aligned with it verified, or DMARC passed for it
(relaxed alignment: same registered domain).  Otherwise an allow entry
would let anybody who writes ``From: boss@example.com`` past the filter;
an unauthenticated match shows as the zero-point ``ALLOW_LISTED_UNVERIFIED``
saying why, so ``--explain`` tells the operator what happened.

The authentication results are the ones the network rules already computed
for the message (``rules.auth.AuthResult``, trusted Authentication-Results
headers included); with ``[auth] enabled = false`` there are none, and allow
entries are never honoured.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache

from ..parse import ParsedMessage, domain_of
from ..score import RuleHit
from .auth import AuthResult, aligned

#: points of a match; like SpamAssassin's USER_IN_WHITELIST / USER_IN_BLACKLIST
#: (-100/+100) they outweigh everything else, but stay finite so two lists
#: disagreeing (site blocks, user allows) add up to something readable
DEFAULT_WEIGHTS = {
    "ALLOW_LISTED": -20.0,
    "BLOCK_LISTED": 20.0,
    "USER_ALLOW_LISTED": -20.0,
    "USER_BLOCK_LISTED": 20.0,
    "ALLOW_LISTED_UNVERIFIED": 0.0,
}
RULE_NAMES = tuple(DEFAULT_WEIGHTS)
#: zero-point by design: says why an allow entry was not honoured
INFORMATIONAL = frozenset({"ALLOW_LISTED_UNVERIFIED"})

#: at most this many entries per list (a user's list lives in every message's read)
MAX_ENTRIES = 1000
MAX_PATTERN = 320  # an address is at most 254 characters; a glob a little more

_PATTERN_RE = re.compile(r"[^\s@]+@[^\s@]+")


@dataclass
class ListsConfig:
    """``[lists]`` in the config: the site's lists, for every user."""

    #: From addresses whose authenticated mail is let through (glob patterns)
    allow: list = field(default_factory=list)
    #: From or envelope-sender addresses whose mail is marked (glob patterns)
    block: list = field(default_factory=list)


@dataclass(frozen=True)
class AddressLists:
    """One owner's allow and block patterns, normalised."""

    allow: tuple[str, ...] = ()
    block: tuple[str, ...] = ()

    @classmethod
    def of(cls, allow, block) -> AddressLists:
        return cls(tuple(normalise(p) for p in allow), tuple(normalise(p) for p in block))

    def __bool__(self) -> bool:
        return bool(self.allow or self.block)


def pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` is not a usable list entry, or None."""
    if not isinstance(pattern, str):
        return f"entries must be strings, got {pattern!r}"
    p = pattern.strip()
    if not p or len(p) > MAX_PATTERN:
        return f"entry {pattern!r} must be 1 to {MAX_PATTERN} characters"
    if not _PATTERN_RE.fullmatch(p):
        return f"entry {pattern!r} must be an address pattern like *@example.com or alice@example.org"
    return None


def normalise(pattern: str) -> str:
    return pattern.strip().lower()


@lru_cache(maxsize=4096)
def _regex(patterns: tuple[str, ...]) -> re.Pattern | None:
    """All patterns of one list as one compiled alternation (fnmatch's
    translation: ``*``, ``?`` and ``[...]`` as in the shell)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _first_match(patterns: tuple[str, ...], addrs: list[str]) -> str | None:
    rx = _regex(patterns)
    if rx is None:
        return None
    for addr in addrs:
        if addr and rx.match(addr):
            return next((p for p in patterns if fnmatch.fnmatchcase(addr, p)), addr)
    return None


def authenticated(addr: str, auth: AuthResult | None) -> str:
    """How ``addr``'s domain is authenticated ("SPF", "DKIM", "DMARC"), or ""."""
    domain = domain_of(addr)
    if auth is None or not domain:
        return ""
    if auth.spf == "pass" and aligned(auth.spf_domain, domain, "r"):
        return "SPF"
    if any(r == "pass" and aligned(d, domain, "r") for r, d in auth.dkim):
        return "DKIM"
    if auth.dmarc == "pass" and aligned(auth.dmarc_domain, domain, "r"):
        return "DMARC"
    return ""


def check(
    msg: ParsedMessage,
    mail_from: str,
    auth: AuthResult | None,
    site: AddressLists,
    user: AddressLists | None = None,
    user_name: str = "",
    unchecked: str = "",
) -> list[RuleHit]:
    """The list hits for one message.  ``auth``: the network rules' result
    (None when nothing was checked; ``unchecked`` then says why, for the
    explanation)."""
    from_addr = msg.from_addr.lower()
    senders = list(dict.fromkeys(a for a in (from_addr, mail_from.strip("<>").lower()) if a))
    hits: list[RuleHit] = []
    owners = [("", "site", site)]
    if user:
        owners.append(("USER_", f"user {user_name}", user))
    for prefix, whose, lists in owners:
        blocked = _first_match(lists.block, senders)
        if blocked:
            name = f"{prefix}BLOCK_LISTED"
            hits.append(RuleHit(name, DEFAULT_WEIGHTS[name], f"sender on the {whose} block list", blocked))
        allowed = _first_match(lists.allow, [from_addr])
        if not allowed:
            continue
        how = authenticated(from_addr, auth)
        if how:
            name = f"{prefix}ALLOW_LISTED"
            detail = f"{allowed}, {how} pass"
            hits.append(RuleHit(name, DEFAULT_WEIGHTS[name], f"From on the {whose} allow list", detail))
        else:
            why = unchecked or "no SPF, DKIM or DMARC pass aligned with the From domain"
            if any(h.name == "ALLOW_LISTED_UNVERIFIED" for h in hits):
                continue  # a rule counts once per message
            hits.append(
                RuleHit(
                    "ALLOW_LISTED_UNVERIFIED",
                    0.0,
                    f"From matches the {whose} allow list but is not authenticated: not honoured",
                    f"{allowed}; {why}",
                )
            )
    return hits
