"""Every rule name mailsift can emit, and which of them are informational.

One registry, gathered from the rule modules themselves (``tld.RULE_NAMES``,
``headers.HEADER_RULES``, ``auth.DEFAULT_WEIGHTS``, ``lists.RULE_NAMES``) plus the configured
``[[dnsbl]]`` lists, so that ``[rule_weights]`` can refuse a misspelt name
instead of silently ignoring it, and ``tune`` prices only real rules.

*Informational* hits say what was **not** checked (a list that did not
answer, the DNS deadline, a DNS temperror, where the client address came
from, an allow-listed sender whose domain rules were skipped).  They score
zero by design: DNS trouble or a missing XFORWARD must never make mail spam
or ham, so no configuration and no tuning may give them points.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import auth, headers, lists, tld

#: emitted by ``rules/__init__.py`` (``NetworkRules``) itself
NETWORK_RULE_NAMES = (
    "CLIENT_FROM_RECEIVED",
    "DNS_DEADLINE",
    "DNS_UNAVAILABLE",
    "NETWORK_RULES_ERROR",
    "OUTBOUND_MAIL",
    "INTERNAL_CLIENT",
)
#: emitted by ``Filter`` itself: a user's or the site's state in the store could not be read
FILTER_RULE_NAMES = ("USER_STATE_ERROR", "SITE_STATE_ERROR")

#: informational by name ...
INFORMATIONAL_NAMES = frozenset(
    {
        "CLIENT_FROM_RECEIVED",
        "DNS_DEADLINE",
        "DNS_UNAVAILABLE",  # the resolver's circuit breaker is open
        "NETWORK_RULES_ERROR",
        "SENDER_ALLOWED",
        # an allow-list entry matched an unauthenticated sender: not honoured
        "ALLOW_LISTED_UNVERIFIED",
        # a user's state could not be read: the site model alone scored
        "USER_STATE_ERROR",
        # the site's learns in the store could not be read: the model file alone scored
        "SITE_STATE_ERROR",
        # outbound or internal mail: the inbound checks were skipped
        "OUTBOUND_MAIL",
        "INTERNAL_CLIENT",
        # a DKIM/DMARC failure cancelled by a trusted ARC chain (ARC_PASS says so)
        "DKIM_FAIL_ARC",
        "DMARC_FAIL_ARC",
    }
)
#: ... and by suffix: ``<list>_TIMEOUT`` (a blocklist that did not answer),
#: ``SPF_TEMPERROR``/``DKIM_TEMPERROR``/``DMARC_TEMPERROR`` (DNS trouble),
#: ``<list>_REFUSED`` (a blocklist's error answer: the query was refused)
INFORMATIONAL_SUFFIXES = ("_TIMEOUT", "_TEMPERROR", "_REFUSED")

#: the hit names a blocklist gives when it does not answer or refuses the
#: query (rules/dnsbl.py)
DNSBL_INFO_SUFFIXES = ("_TIMEOUT", "_REFUSED")


def is_informational(name: str) -> bool:
    """True for a zero-point hit that says what was not checked."""
    return name in INFORMATIONAL_NAMES or name.endswith(INFORMATIONAL_SUFFIXES)


def builtin_rule_names() -> frozenset[str]:
    """Names of the rules that exist whatever the configuration."""
    return frozenset(
        [
            *tld.RULE_NAMES,
            *headers.HEADER_RULES,
            *auth.DEFAULT_WEIGHTS,
            *lists.RULE_NAMES,
            *NETWORK_RULE_NAMES,
            *FILTER_RULE_NAMES,
        ]
    )


def known_rule_names(dnsbl_names: Iterable[str] = ()) -> frozenset[str]:
    """Every rule name, given the names of the configured ``[[dnsbl]]`` lists."""
    lists = list(dnsbl_names)
    return builtin_rule_names() | frozenset(lists) | {n + s for n in lists for s in DNSBL_INFO_SUFFIXES}


def priceable_rule_names(dnsbl_names: Iterable[str] = ()) -> frozenset[str]:
    """The rules that may carry points: known and not informational."""
    return frozenset(n for n in known_rule_names(dnsbl_names) if not is_informational(n))
