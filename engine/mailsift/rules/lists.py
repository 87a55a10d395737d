"""Address lists: SpamAssassin's ``whitelist_auth`` and ``blacklist_from``,
per site (``[lists]`` in the config) and per user (kept with the user's
state in the store, see ``mailsift.store``).

Entries are glob patterns on addresses (``*@example.com``,
``news@*.example.org``, ``alice@example.net``): the part before the ``@``
is matched against the local part (unquoted: ``"x"@example.com`` is
``x@example.com``), the part after it against the domain.  Only ASCII
letters fold to lower case; nothing else does (``str.lower`` would read the
Kelvin sign U+212A as ``k``).

Which addresses a message shows as its sender (:func:`shown_addresses`):
every address in every ``From`` header line (a message may carry two lines,
or one line listing two authors), parsed with quoted local parts, comments
and angle brackets understood, plus any address written in a display name
or a comment (``"ok@good.example" <bad@blocked.example>``): a reader may
take any of them for the sender.

A *block* entry counts when it matches ANY shown address or the envelope
sender (a domain written in Unicode or as ``xn--`` labels matches either
spelling, and domains also compare in their IDNA form with IDNA's case
mapping, so ``*@bücher.example`` blocks ``x@BÜCHER.example``): anybody
may forge a sender, but a forged sender that lands mail on a block list
costs only the forger; allow entries match their own ASCII-folded spelling
only, so none covers a domain it does not spell out.  An *allow* entry counts only when
it matches a shown address AND every shown address is authenticated: SPF
passed for an envelope domain aligned with its domain, a DKIM signature
aligned with it verified, or DMARC passed for it (relaxed alignment: same
registered domain).  Otherwise an allow entry would let anybody who writes
``From: boss@example.com`` past the filter, or launder a second,
unauthenticated address next to an authenticated one (``From:
friend@example.com, bad@evil.example`` with SPF passing for example.com).
An allow entry not honoured shows as the zero-point
``ALLOW_LISTED_UNVERIFIED`` saying why, so ``--explain`` tells the operator
what happened.

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

import idna

from ..parse import MAX_ADDRESS_CHARS, ParsedMessage, decode_header
from ..score import RuleHit
from ..usernames import fold
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
    """An entry as it is kept and matched: trimmed, ASCII letters folded."""
    return fold(pattern.strip())


# -- the addresses a message shows ---------------------------------------------


@dataclass(frozen=True)
class Shown:
    """One address a message shows as its sender."""

    #: the local part, unquoted, ASCII-folded
    local: str
    #: the domain, ASCII-folded, without brackets or a trailing dot
    domain: str
    #: where: "From", "From (display name or comment)", "envelope"
    where: str = "From"

    @property
    def text(self) -> str:
        return f"{self.local}@{self.domain}"


#: at most this many From lines are read (a message has one or two): the first
#: and the last half of them, so decoy lines above or below cannot hide the one
#: a mail reader shows
MAX_FROM_LINES = 10
MAX_SHOWN = 50
_ATOM_END = frozenset('()<>[]:;@\\,."') | frozenset(" \t\r\n")
_SPECIALS = frozenset("<>@,:;.")
#: an address written as text (in a display name or a comment); parse.py's
#: pattern, the lookbehind keeping it linear on a long run of word characters
_TEXT_ADDR_RE = re.compile(r"(?<![\w.+=-])[\w.+=-]+@[\w-]+(?:\.[\w-]+)+")


def _tokens(text: str) -> list[tuple[str, str]]:
    """RFC 5322 tokens of an address header, in one pass (the stdlib's parser
    is quadratic on a run of quotes and recurses on nested comments): words
    ("w", text: atoms and unquoted quoted-strings), domain literals ("[", text)
    and the specials ``< > @ , : ; .``.  Comments and blanks become "s", which
    separates words; an unterminated quote or comment runs to the end."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            buf = []
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            out.append(("w", "".join(buf)))
            i += 1
        elif c == "(":
            depth, i = 1, i + 1
            while i < n and depth:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                i += 1
            out.append(("s", ""))
        elif c == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(("[", text[i + 1 : j]))
            i = j + 1
        elif c in _SPECIALS:
            out.append((c, c))
            i += 1
        elif c in " \t\r\n" or c in ")]\\":
            out.append(("s", ""))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _ATOM_END:
                j += 1
            out.append(("w", text[i:j]))
            i = j
    return out


def _addr_specs(text: str) -> list[tuple[str, str]]:
    """Every ``local@domain`` of an address header, structurally: the words
    joined by dots just before each ``@`` (blanks and comments allowed
    around the dots, as RFC 5322's obsolete syntax has them) and the labels
    after it.  A display name is words not followed by ``@``, so
    ``ok@good.example <bad@blocked.example>`` gives both addresses and
    ``"ok@good.example" <bad@blocked.example>`` only the second."""
    toks = _tokens(text)
    found: list[tuple[str, str]] = []
    for at, (kind, _) in enumerate(toks):
        if kind != "@":
            continue
        local: list[str] = []
        i = at - 1
        want_word = True
        while i >= 0:
            k, v = toks[i]
            if k == "s":
                i -= 1
                continue
            if want_word and k == "w":
                local.append(v)
            elif not want_word and k == ".":
                pass
            else:
                break
            want_word = not want_word
            i -= 1
        domain: list[str] = []
        i = at + 1
        want_word = True
        while i < len(toks):
            k, v = toks[i]
            if k == "s":
                i += 1
                continue
            if want_word and k in ("w", "["):
                domain.append(v)
            elif not want_word and k == ".":
                pass
            else:
                break
            want_word = not want_word
            i += 1
        if local and domain:
            found.append((".".join(reversed(local)), ".".join(domain)))
    return found


def _shown(local: str, domain: str, where: str) -> Shown | None:
    local, domain = fold(local.strip()), fold(domain.strip().strip("[]. "))
    return Shown(local, domain, where) if local and domain else None


def shown_addresses(msg: ParsedMessage) -> list[Shown]:
    """Every address the message's From header lines show (see the module
    text), each once, at most MAX_SHOWN."""
    values = [v for k, v in msg.raw_headers if k == "from"]
    if len(values) > MAX_FROM_LINES:
        half = MAX_FROM_LINES // 2
        values = values[:half] + values[-half:]
    seen: dict[tuple[str, str], Shown] = {}

    def add(local: str, domain: str, where: str) -> None:
        a = _shown(local, domain, where)
        if a is not None and (a.local, a.domain) not in seen and len(seen) < MAX_SHOWN:
            seen[(a.local, a.domain)] = a

    for value in values:
        value = str(value)[:MAX_ADDRESS_CHARS]
        decoded = decode_header(value)
        # the structure before RFC 2047 decoding (an encoded word may decode to
        # quotes or brackets), 8-bit text read as UTF-8 as decode_header reads it
        raw = (
            value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        )
        for text in dict.fromkeys((raw, decoded)):
            for local, domain in _addr_specs(text):
                add(local, domain, "From")
        for text in dict.fromkeys((raw, decoded)):
            for found in _TEXT_ADDR_RE.findall(text):
                local, _, domain = found.rpartition("@")
                add(local, domain, "From (display name or comment)")
    return list(seen.values())


def envelope_address(mail_from: str) -> Shown | None:
    """The envelope sender (MAIL FROM), as a list entry matches it."""
    text = mail_from.strip().strip("<>")
    if not text:
        return None
    specs = _addr_specs(text)
    if specs:
        return _shown(*specs[-1], "envelope")
    local, _, domain = text.rpartition("@")
    return _shown(local, domain, "envelope")


# -- matching ----------------------------------------------------------------


@lru_cache(maxsize=4096)
def _compiled(patterns: tuple[str, ...]) -> tuple[tuple[str, re.Pattern, re.Pattern], ...]:
    """Each pattern as (pattern, local glob, domain glob), compiled (fnmatch's
    translation: ``*``, ``?`` and ``[...]`` as in the shell)."""
    out = []
    for p in patterns:
        local, _, domain = p.rpartition("@")
        out.append((p, re.compile(fnmatch.translate(local)), re.compile(fnmatch.translate(domain))))
    return tuple(out)


def _domain_forms(domain: str) -> tuple[str, ...]:
    """``domain``, its other IDNA spelling (``xn--`` labels or Unicode) and
    its IDNA name (:func:`_idna_name`), the distinct ones: a block entry for
    any spelling matches all of them (``BÜCHER.example`` too)."""
    forms = [domain]
    try:
        if domain.isascii():
            if "xn--" in domain:
                forms.append(fold(idna.decode(domain)))
        else:
            forms.append(fold(_to_ascii(domain)))
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    forms.append(_idna_name(domain))
    return tuple(dict.fromkeys(forms))


_GLOB = frozenset("*?[]")


def _to_ascii(name: str) -> str:
    """IDNA2008 with UTS #46 mapping, non-transitional: case folded as IDNA
    does (``BÜCHER`` is ``bücher``) but ``ß`` kept (``straße.de`` is
    ``xn--strae-oqa.de``, not ``strasse.de``, a different domain), as
    browsers and registries read it today; the stdlib's ``idna`` codec is
    IDNA2003, which maps ``ß`` to ``ss``."""
    return idna.encode(name, uts46=True, transitional=False).decode("ascii")


def _idna_name(domain: str) -> str:
    """``domain`` label by label in its IDNA (``xn--``) form, with IDNA's
    case mapping (:func:`_to_ascii`), for block matching.  An ASCII label, a
    label with glob characters (a pattern's) and a label IDNA refuses stay
    as they are, ASCII-folded: never an error."""
    labels = []
    for label in domain.split("."):
        if not label.isascii() and not _GLOB & set(label):
            try:
                labels.append(_to_ascii(label))
                continue
            except (idna.IDNAError, UnicodeError, ValueError):
                pass
        labels.append(fold(label))
    return ".".join(labels)


def _match(patterns: tuple[str, ...], addr: Shown, idna_forms: bool = False) -> str | None:
    """The first of ``patterns`` matching ``addr``, or None.  ``idna_forms`` (block
    entries only): both sides' domains also compare in their IDNA form;
    allow entries match the ASCII-folded text only, so an allow entry never
    covers a domain it does not spell out."""
    if not idna_forms:
        for p, local_rx, domain_rx in _compiled(patterns):
            if local_rx.match(addr.local) and domain_rx.match(addr.domain):
                return p
        return None
    domains = _domain_forms(addr.domain)
    for p, local_rx, domain_rxs in _compiled_idna(patterns):
        if local_rx.match(addr.local) and any(rx.match(d) for rx in domain_rxs for d in domains):
            return p
    return None


@lru_cache(maxsize=4096)
def _compiled_idna(patterns: tuple[str, ...]) -> tuple[tuple[str, re.Pattern, tuple[re.Pattern, ...]], ...]:
    """As :func:`_compiled`, each domain glob also in its IDNA form."""
    out = []
    for p, local_rx, domain_rx in _compiled(patterns):
        domain = p.rpartition("@")[2]
        idna = _idna_name(domain)
        rxs = (domain_rx,) if idna == domain else (domain_rx, re.compile(fnmatch.translate(idna)))
        out.append((p, local_rx, rxs))
    return tuple(out)


def authenticated(addr: str, auth: AuthResult | None) -> str:
    """How ``addr``'s domain is authenticated ("SPF", "DKIM", "DMARC"), or ""."""
    return _authenticated(fold(addr.rpartition("@")[2].strip().strip("<>[]. ")), auth)


def _authenticated(domain: str, auth: AuthResult | None) -> str:
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
    owners = [("", "site", site)]
    if user:
        owners.append(("USER_", f"user {user_name}", user))
    if not any(lists for _, _, lists in owners):
        return []
    shown = shown_addresses(msg)
    envelope = envelope_address(mail_from)
    senders = shown + ([envelope] if envelope is not None else [])
    hits: list[RuleHit] = []
    for prefix, whose, lists in owners:
        blocked = next(((p, a) for a in senders if (p := _match(lists.block, a, idna_forms=True))), None)
        if blocked:
            name = f"{prefix}BLOCK_LISTED"
            p, a = blocked
            detail = f"{p} matches {a.text} ({a.where})"
            hits.append(RuleHit(name, DEFAULT_WEIGHTS[name], f"sender on the {whose} block list", detail))
        hit = _allow(prefix, whose, lists, shown, auth, unchecked)
        if hit is not None and not (
            hit.name == "ALLOW_LISTED_UNVERIFIED" and any(h.name == hit.name for h in hits)
        ):
            hits.append(hit)  # the zero-point rule counts once per message
    return hits


def _allow(
    prefix: str, whose: str, lists: AddressLists, shown: list[Shown], auth: AuthResult | None, unchecked: str
) -> RuleHit | None:
    """The allow decision of one owner's list: honoured only when an address
    From shows matches and every address From shows is authenticated."""
    matched = next(((p, a) for a in shown if (p := _match(lists.allow, a))), None)
    if matched is None:
        return None
    p, addr = matched
    how = {a.text: _authenticated(a.domain, auth) for a in shown}
    others = [a.text for a in shown if a.text != addr.text]
    if how[addr.text] and all(how.values()):
        name = f"{prefix}ALLOW_LISTED"
        detail = f"{p} matches {addr.text}, {how[addr.text]} pass"
        if others:
            detail += f"; the other From addresses are authenticated too ({', '.join(others)})"
        return RuleHit(name, DEFAULT_WEIGHTS[name], f"From on the {whose} allow list", detail)
    if not how[addr.text]:
        why = unchecked or "no SPF, DKIM or DMARC pass aligned with its domain"
        detail = f"{p} matches {addr.text}; {why}"
        if others:
            detail += f"; From shows {len(shown)} addresses"
        description = f"From matches the {whose} allow list but is not authenticated: not honoured"
    else:
        bare = [a for a, h in how.items() if not h]
        detail = (
            f"{p} matches {addr.text} ({how[addr.text]} pass), but From also shows {', '.join(bare)}, "
            "not authenticated: an allow entry never vouches for another address"
        )
        description = f"From matches the {whose} allow list but shows unauthenticated addresses: not honoured"
    return RuleHit("ALLOW_LISTED_UNVERIFIED", 0.0, description, detail)
