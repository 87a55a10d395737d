"""SPF, DKIM, DMARC and ARC, each result a hit with its own weight.

SPF checks the connecting client against the envelope sender's (or, for
bounces, the HELO name's) policy with pyspf; DKIM verifies every signature
(RSA and ed25519, RFC 8463) with dkimpy on the whole message as the MTA
handed it over, never a cut of it (a cut breaks the body hash); DMARC
(RFC 7489) looks up each From domain's policy (falling back to its
registered domain) and checks that a passing SPF or DKIM result is aligned
with it, relaxed or strict as the policy says.  All DNS goes through the one
resolver built from the ``[dns]`` settings as the blocklists' — the same
resolver and cache, reached from the thread pyspf and dkimpy (which are
synchronous) run in — under the message's DNS deadline.

DNS trouble is never a failure: a lookup that times out or SERVFAILs makes
that method ``temperror`` (zero points), and DMARC is ``temperror`` too when
the identifier that could have aligned could not be checked (RFC 7489 §6.6.2
and §6.6.3: no result may be concluded).  Several From addresses are each
checked and the strictest failing policy applies (RFC 7489 §6.6.1).  ``pct``
below 100 samples failing mail as the RFC says (§6.6.4), by a hash of the
Message-ID so a message always scores the same.

Mailing lists break DKIM signatures and so DMARC.  When DMARC fails and the
message carries an ARC chain (RFC 8617) that validates, whose every sealer is
in ``trusted_arc_sealers``, and whose oldest ARC-Authentication-Results says
``dmarc=pass``, the failure's points are cancelled and ``DMARC_FAIL_ARC``
(0 points) says so.  A chain from an untrusted sealer changes nothing:
anybody can seal their own mail with a made-up ``dmarc=pass``.

If the MTA in front already checked (OpenDKIM/OpenDMARC/policyd-spf on the
Postfix box), every ``Authentication-Results`` header whose authserv-id is
listed in ``trusted_authserv_ids`` is read and merged (SPF from one, DKIM and
DMARC from another), the DMARC policy it names (``dmarc=fail (p=reject)``)
honoured; a method none of them reports is checked here.  A header from
anywhere else is ignored, since anybody can write that header, and so is one
below the sender's own topmost Received header (it came with the message).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import re
import threading
from dataclasses import dataclass, field
from email.utils import getaddresses

import dkim
import dkim.util
import dns.exception
import spf

from ..parse import ParsedMessage, decode_header, domain_of
from ..score import RuleHit
from . import dkimlinear
from .resolver import NXDOMAIN, OK, TIMEOUT, Answer, Resolver
from .tld import registered_domain

dkimlinear.install()  # dkimpy per byte in linear time (see that module)

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
DMARC_POLICIES = ("none", "quarantine", "reject")

#: default points per result, in the spirit of SpamAssassin's SPF_*/DKIM_*/DMARC_*
DEFAULT_WEIGHTS = {
    "SPF_PASS": -0.2,
    "SPF_FAIL": 1.5,
    "SPF_SOFTFAIL": 0.7,
    "SPF_NEUTRAL": 0.2,
    "SPF_NONE": 0.0,
    "SPF_TEMPERROR": 0.0,
    "SPF_PERMERROR": 0.2,
    "DKIM_PASS": -0.2,
    "DKIM_FAIL": 0.5,
    "DKIM_NONE": 0.0,
    "DKIM_TEMPERROR": 0.0,
    # a malformed signature or no usable key for it (RFC 6376 §6.1.2 PERMFAIL): nothing
    # was verified either way, so no points; DKIM_FAIL is for signatures that do not verify
    "DKIM_PERMERROR": 0.0,
    "DKIM_FAIL_ARC": 0.0,
    "DMARC_PASS": -0.5,
    "DMARC_FAIL_REJECT": 4.0,
    "DMARC_FAIL_QUARANTINE": 2.5,
    "DMARC_FAIL_NONE": 0.5,
    "DMARC_FAIL_ARC": 0.0,
    "DMARC_NONE": 0.0,
    "DMARC_TEMPERROR": 0.0,
    "DMARC_PERMERROR": 0.0,
    "ARC_PASS": 0.0,
    "ARC_FAIL": 0.0,
    "ARC_TEMPERROR": 0.0,
}

#: at most this many DKIM signatures and From domains are checked per message
MAX_SIGNATURES = 5
MAX_FROM_DOMAINS = 5
#: an ARC chain longer than this is not verified (each set costs a key
#: lookup and a pass over the message; real chains have 1 to 3)
MAX_ARC_SETS = 10


@dataclass
class AuthConfig:
    """``[auth]`` in the config."""

    #: check SPF/DKIM/DMARC (needs working DNS; off for corpora and offline use)
    enabled: bool = False
    #: authserv-ids of Authentication-Results headers written by your own MTA
    trusted_authserv_ids: list = field(default_factory=list)
    #: ARC sealers (domains, d= of ARC-Seal) whose dmarc=pass you believe:
    #: mailing lists and forwarders you know; a subdomain matches too
    trusted_arc_sealers: list = field(default_factory=list)


@dataclass
class AuthResult:
    spf: str = "none"
    spf_domain: str = ""
    dkim: list[tuple[str, str]] = field(default_factory=list)  # (result, d=)
    dmarc: str = "none"
    policy: str = ""  # the policy applied to a failure (after pct)
    dmarc_domain: str = ""
    dmarc_note: str = ""  # pct sampling, several From domains
    arc: str = ""  # "", "pass", "fail", "temperror"
    arc_note: str = ""
    arc_override: bool = False
    #: methods reported by a trusted Authentication-Results header
    trusted: set[str] = field(default_factory=set)


class LoopDNS:
    """The shared async resolver, offered synchronously to pyspf and dkimpy
    running in a worker thread: each lookup is handed to the event loop that
    waits for that thread, so SPF, DKIM and DMARC use the same servers,
    timeout and cache as the blocklists."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop):
        self.resolver = resolver
        self.loop = loop
        self.timeout = resolver.timeout
        self.expired = False
        self._pending: set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()

    def expire(self) -> None:
        """The message's deadline passed (called on the loop's thread while
        it still runs): wake the lookups in flight and refuse new ones, so
        the thread finishes at once instead of each lookup waiting out its
        timeout against a loop that is gone."""
        with self._lock:
            self.expired = True
            pending, self._pending = self._pending, set()
        for future in pending:
            future.cancel()

    def _ask(self, name: str, rdtype: str) -> Answer:
        with self._lock:
            if self.expired:
                return Answer(TIMEOUT, detail="message deadline passed")
            coro = self.resolver.query(name, rdtype)
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            except RuntimeError:  # the loop is closed: the message's deadline passed
                coro.close()
                return Answer(TIMEOUT, detail="message deadline passed")
            self._pending.add(future)
        try:
            return future.result(self.timeout + 1.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            if not self.loop.is_closed():
                future.cancel()
            return Answer(TIMEOUT, detail="message deadline passed")
        finally:
            with self._lock:
                self._pending.discard(future)

    def txt(self, name: str) -> list[str] | None:
        """TXT strings of a name; None if it has none; raises
        dns.exception.Timeout when the servers do not answer."""
        answer = self._ask(name, "TXT")
        if answer.status == NXDOMAIN:
            return None
        if answer.status != OK:
            raise dns.exception.Timeout(answer.detail)
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rdata]

    def spf_lookup(self, name, qtype, tcpfallback=True, timeout=30):
        """pyspf's DNSLookup interface (the shapes its dnspython backend returns)."""
        answer = self._ask(name, qtype)
        if answer.status == NXDOMAIN:
            return []
        if answer.status != OK:
            raise spf.TempError(f"DNS {answer.detail or answer.status}")
        out = []
        for rdata in answer.rdata:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    def dkim_txt(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's dnsfunc interface."""
        records = self.txt(name.decode("ascii", "replace").rstrip("."))
        return records[0].encode() if records else None


def check_spf(dns_: LoopDNS, ip: str, mail_from: str, helo: str, res: AuthResult) -> None:
    """SPF result and the domain checked, into ``res``."""
    domain = domain_of(mail_from) or helo
    res.spf_domain = domain
    if not ip or not domain:
        res.spf = "none"
        return
    spf.DNSLookup = dns_.spf_lookup  # pyspf resolves through this module global
    sender = mail_from or f"postmaster@{helo}"
    try:
        result, _ = spf.check2(i=ip, s=sender, h=helo or domain, querytime=dns_.timeout * 3)
    except spf.TempError:
        result = "temperror"
    except Exception:
        result = "permerror"
    res.spf = result if result in RESULTS else "permerror"


def check_dkim(dns_: LoopDNS, raw: bytes, n_signatures: int) -> list[tuple[str, str]]:
    """(result, d=) for each DKIM-Signature, RSA or ed25519, on ``raw`` as
    it came (the whole message).  The message is parsed once for all
    signatures, by :mod:`.dkimlinear` (dkimpy's own split is 36 ms a MB)."""
    if not n_signatures:
        return []
    try:
        d = dkimlinear.verifier(dkim.DKIM, raw, minkey=1024)
    except dkim.DKIMException:  # a header section too large or malformed: nothing can be verified
        return [("permerror", "")] * min(n_signatures, MAX_SIGNATURES)
    sigs = [value for name, value in d.headers if name.lower() == b"dkim-signature"]
    out = []
    for idx in range(min(n_signatures, len(sigs), MAX_SIGNATURES)):
        keys: list[bytes | None] = []  # what the key lookup returned

        def lookup(name: bytes, timeout: float = 5, keys=keys) -> bytes | None:
            record = dns_.dkim_txt(name, timeout)
            keys.append(record)
            return record

        try:
            ok = d.verify(idx=idx, dnsfunc=lookup)
            if ok:
                result = "pass"
            elif keys and not _usable_key(keys[-1]):
                # dkimpy says False for "no key" as for a bad signature, but RFC 6376
                # §6.1.2 makes a missing, revoked (p=) or unparsable key PERMFAIL "no key
                # for signature": nothing was checked, so it is not evidence of forgery
                result = "permerror"
            else:  # the key is there and the signature does not verify with it
                result = "fail"
        except dns.exception.Timeout:  # the key could not be fetched: not the sender's fault
            result = "temperror"
        except dkim.ValidationError:  # body hash or signature does not match: the message changed
            result = "fail"
        except dkim.DKIMException:  # malformed signature or key
            result = "permerror"
        except Exception:  # dkimpy tripping over a hostile signature: not verifiable either
            result = "permerror"
        out.append((result, _signing_domain(sigs[idx])))
    return out


def _usable_key(record: bytes | None) -> bool:
    """Whether a DKIM key record holds a key dkimpy can verify with (none
    at all, ``p=`` empty (revoked), a bad version or algorithm: no)."""
    if not record:
        return False
    try:
        pk, _, _, _ = dkim.evaluate_pk(b"", record)
    except Exception:  # KeyFormatError, and whatever a junk record makes the parsers raise
        return False
    return pk is not None


def _signing_domain(signature: bytes) -> str:
    try:
        tags = dkim.util.parse_tag_value(signature)
    except Exception:  # a malformed signature: its result already says permerror
        return ""
    return tags.get(b"d", b"").decode("ascii", "replace").strip().lower()


_TAG_RE = re.compile(r"\s*([a-z]+)\s*=\s*([^;]*)")


def dmarc_policy(dns_: LoopDNS, from_domain: str) -> dict | None:
    """The DMARC record's tags, from the From domain or else its registered
    domain (whose ``sp`` then applies); None if neither publishes one.
    Raises dns.exception.Timeout when the servers do not answer."""
    for name in dict.fromkeys([from_domain, registered_domain(from_domain)]):
        records = [r for r in (dns_.txt(f"_dmarc.{name}") or []) if r.lower().startswith("v=dmarc1")]
        if len(records) == 1:  # several records: as if none (RFC 7489 §6.6.3)
            tags = {k: v.strip() for k, v in _TAG_RE.findall(records[0].lower())}
            if name != from_domain and "sp" in tags:
                tags["p"] = tags["sp"]
            return tags
    return None


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    if not domain or not from_domain:
        return False
    if mode == "s":
        return domain == from_domain
    return registered_domain(domain) == registered_domain(from_domain)


def from_domains(msg: ParsedMessage) -> list[str]:
    """Every domain of every From address (RFC 7489 §6.6.1 checks each)."""
    addrs = getaddresses(msg.header_all("from"))
    domains = [d for d in (domain_of(a) for _, a in addrs) if d]
    if not domains and msg.from_domain:
        domains = [msg.from_domain]
    return list(dict.fromkeys(domains))[:MAX_FROM_DOMAINS]


def _sampled(key: str, pct: int) -> bool:
    """Whether a failing message falls in the ``pct`` percent the policy is
    applied to: a hash, not a coin, so the same message scores the same."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "replace")).digest()[:4], "big") % 100 < pct


_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def dmarc_for(dns_: LoopDNS, domain: str, res: AuthResult, key: str) -> tuple[str, str, str]:
    """(result, policy applied, note) for one author domain."""
    try:
        tags = dmarc_policy(dns_, domain)
    except dns.exception.Timeout:
        return "temperror", "", "DMARC record lookup failed"
    if tags is None:
        return "none", "", ""
    policy = tags.get("p", "")
    if policy not in DMARC_POLICIES:  # RFC 7489 §6.6.3: a record without a valid p= is as none
        return "none", "", f"invalid p={policy!r}"
    aspf, adkim = tags.get("aspf", "r"), tags.get("adkim", "r")
    if res.spf == "pass" and aligned(res.spf_domain, domain, aspf):
        return "pass", policy, ""
    if any(r == "pass" and aligned(d, domain, adkim) for r, d in res.dkim):
        return "pass", policy, ""
    spf_temp = res.spf == "temperror" and aligned(res.spf_domain, domain, aspf)
    dkim_temp = any(r == "temperror" and aligned(d, domain, adkim) for r, d in res.dkim)
    if spf_temp or dkim_temp:  # an identifier that could have aligned was not checkable
        what = " and ".join(n for n, t in (("SPF", spf_temp), ("DKIM", dkim_temp)) if t)
        return "temperror", policy, f"{what} could not be checked (DNS)"
    note = ""
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    if pct < 100 and not _sampled(key, pct):
        weaker = _WEAKER[policy]
        note = f"pct={pct}: outside the sample, {weaker} instead of {policy}"
        policy = weaker
    return "fail", policy, note


_STRICTNESS = {"": 0, "none": 1, "quarantine": 2, "reject": 3}


def check_dmarc(dns_: LoopDNS, msg: ParsedMessage, res: AuthResult) -> None:
    """DMARC for every From domain: fail with the strictest policy among the
    failing ones, else temperror if any, else pass if any, else none."""
    domains = from_domains(msg)
    if not domains:
        return
    key = msg.header("message-id") or hashlib.sha256(msg.raw[:4096]).hexdigest()
    results = [(d, *dmarc_for(dns_, d, res, key)) for d in domains]
    fails = [r for r in results if r[1] == "fail"]
    pick = None
    if fails:
        pick = max(fails, key=lambda r: _STRICTNESS[r[2]])
    else:
        for wanted in ("temperror", "pass", "none"):
            pick = next((r for r in results if r[1] == wanted), None)
            if pick:
                break
    res.dmarc_domain, res.dmarc, res.policy, res.dmarc_note = pick
    if len(domains) > 1:
        res.dmarc_note = "; ".join(filter(None, [res.dmarc_note, f"{len(domains)} From domains checked"]))


_AAR_DMARC_RE = re.compile(rb"\bdmarc\s*=\s*pass\b", re.I)
_AAR_FROM_RE = re.compile(rb"\bheader\.from\s*=\s*\"?([^\s;\"]+)", re.I)


def _trusted_sealer(domain: str, sealers: list[str]) -> bool:
    domain = domain.lower().strip(".")
    return any(domain == s or domain.endswith("." + s) for s in (x.lower().strip(".") for x in sealers))


def check_arc(dns_: LoopDNS, raw: bytes, res: AuthResult, sealers: list[str], from_domain: str) -> None:
    """Verify the ARC chain; set ``res.arc_override`` when it may cancel a
    DMARC failure (see the module docstring)."""
    try:
        cv, results, reason = dkimlinear.verifier(dkim.ARC, raw, minkey=1024).verify(dnsfunc=dns_.dkim_txt)
    except dns.exception.Timeout:
        res.arc, res.arc_note = "temperror", "ARC key lookup failed"
        return
    except Exception as exc:  # malformed chain: dkimpy raises more than DKIMException here
        res.arc, res.arc_note = "fail", f"{type(exc).__name__}"
        return
    if cv == dkim.CV_None:
        return
    seal_domains = [r.get("as-domain", b"").decode("ascii", "replace").lower() for r in results]
    res.arc_note = f"sealed by {', '.join(reversed(seal_domains))}"
    if cv != dkim.CV_Pass:
        res.arc, res.arc_note = "fail", f"{res.arc_note}: {reason}"
        return
    res.arc = "pass"
    oldest = next((r for r in results if r.get("instance") == 1), None)
    if oldest is None or not all(_trusted_sealer(d, sealers) for d in seal_domains):
        res.arc_note += " (not all trusted sealers: no effect)"
        return
    aar = oldest.get("aar-value", b"")
    said_from = _AAR_FROM_RE.search(aar)
    if not _AAR_DMARC_RE.search(aar) or (
        said_from and said_from.group(1).decode("ascii", "replace").lower() != from_domain
    ):
        res.arc_note += " (oldest seal does not say dmarc=pass for the From domain: no effect)"
        return
    res.arc_override = True


def evaluate(
    dns_: LoopDNS,
    msg: ParsedMessage,
    raw: bytes,
    ip: str,
    mail_from: str,
    helo: str,
    config: AuthConfig | None = None,
    known: AuthResult | None = None,
) -> AuthResult:
    """SPF, DKIM, DMARC (and ARC when DMARC fails) for one message; the
    methods in ``known.trusted`` come from trusted headers and are not
    checked again."""
    config = config or AuthConfig()
    res = known or AuthResult()
    if "spf" not in res.trusted:
        check_spf(dns_, ip, mail_from, helo, res)
    if "dkim" not in res.trusted:
        res.dkim = check_dkim(dns_, raw, len(msg.header_all("dkim-signature")))
    if "dmarc" not in res.trusted:
        check_dmarc(dns_, msg, res)
    n_arc = len(msg.header_all("arc-seal"))
    if res.dmarc == "fail" and config.trusted_arc_sealers and n_arc > MAX_ARC_SETS:
        res.arc, res.arc_note = "fail", f"{n_arc} ARC sets: more than {MAX_ARC_SETS}, not verified"
    elif res.dmarc == "fail" and config.trusted_arc_sealers and n_arc:
        check_arc(dns_, raw, res, config.trusted_arc_sealers, res.dmarc_domain or msg.from_domain)
    return res


def _split_outside_comments(value: str) -> list[tuple[str, str]]:
    """An Authentication-Results value -> (text, comments) per ';'-separated
    part; a ';' inside a comment (OpenDKIM writes "(2048-bit key; ...)")
    does not split."""
    parts, text, comments, depth = [], [], [], 0
    current_comment: list[str] = []
    for ch in value:
        if ch == "(":
            depth += 1
            if depth == 1:
                current_comment = []
                continue
        elif ch == ")" and depth:
            depth -= 1
            if depth == 0:
                comments.append("".join(current_comment))
                text.append(" ")
                continue
        if depth:
            current_comment.append(ch)
        elif ch == ";":
            parts.append(("".join(text), " ".join(comments)))
            text, comments = [], []
        else:
            text.append(ch)
    parts.append(("".join(text), " ".join(comments)))
    return parts


_RESULT_RE = re.compile(r"^\s*([a-z0-9_-]+)\s*=\s*([a-z]+)", re.I)
_PROP_RE = re.compile(r"([a-z0-9_-]+\.[a-z0-9_-]+)\s*=\s*(\"[^\"]*\"|[^\s\"]+)", re.I)
_POLICY_RE = re.compile(r"\bp\s*=\s*(none|quarantine|reject)\b", re.I)
_NORMAL = {
    "spf": {"hardfail": "fail", "policy": "permerror"},
    "dkim": {"neutral": "permerror", "policy": "permerror", "softfail": "fail"},
    "dmarc": {"bestguesspass": "none", "policy": "none"},
}
_ALLOWED = {
    "spf": set(RESULTS),
    "dkim": {"pass", "fail", "none", "temperror", "permerror"},
    "dmarc": {"pass", "fail", "none", "temperror", "permerror"},
}


def _our_headers_end(msg: ParsedMessage, last_external: str) -> int:
    """Index in ``msg.raw_headers`` where the headers the sender could have
    written begin: the Received header after the one our MTA wrote for the
    last external host (or the first Received if that one is not found).
    An Authentication-Results header below it came with the message, and
    is not ours whatever authserv-id it names."""
    received = [i for i, (name, _) in enumerate(msg.raw_headers) if name == "received"]
    if not received:
        return len(msg.raw_headers)
    hops = msg.received
    ours = next((k for k, hop in enumerate(hops) if last_external and hop.from_ip == last_external), None)
    if ours is None:
        return received[0]
    return received[ours + 1] if ours + 1 < len(received) else len(msg.raw_headers)


def from_trusted_headers(
    msg: ParsedMessage, trusted: list[str], last_external: str = ""
) -> AuthResult | None:
    """Results from every Authentication-Results header written by one of
    our own servers (authserv-id in ``trusted``, above the headers the
    sender wrote), merged top to bottom: the first SPF and DMARC result
    found win, every DKIM result is kept.  None if no trusted header
    reports anything."""
    if not trusted:
        return None
    ids = {t.lower() for t in trusted}
    res = AuthResult()
    end = _our_headers_end(msg, last_external)
    values = [decode_header(v) for name, v in msg.raw_headers[:end] if name == "authentication-results"]
    for value in values:
        parts = _split_outside_comments(value)
        head = parts[0][0].split()
        if not head or head[0].lower() not in ids:
            continue
        for text, comment in parts[1:]:
            m = _RESULT_RE.match(text)
            if not m:
                continue
            method, result = m.group(1).lower(), m.group(2).lower()
            if method not in _ALLOWED:
                continue
            result = _NORMAL[method].get(result, result)
            if result not in _ALLOWED[method]:
                result = "permerror"
            props = {k.lower(): v.strip('"').lower() for k, v in _PROP_RE.findall(text[m.end() :])}
            if method == "spf" and "spf" not in res.trusted:
                res.spf = result
                res.spf_domain = domain_of(props.get("smtp.mailfrom", "")) or props.get(
                    "smtp.mailfrom", props.get("smtp.helo", "")
                )
            elif method == "dkim":
                if result != "none":
                    d = props.get("header.d") or domain_of(props.get("header.i", ""))
                    res.dkim.append((result, d))
            elif method == "dmarc" and "dmarc" not in res.trusted:
                res.dmarc = result
                policy = props.get("policy.dmarc") or props.get("policy.published-domain-policy")
                if not policy:
                    p = _POLICY_RE.search(comment)
                    policy = p.group(1).lower() if p else ""
                res.policy = policy if policy in DMARC_POLICIES else ("none" if result == "fail" else "")
                res.dmarc_domain = props.get("header.from", "")
            res.trusted.add(method)
    return res if res.trusted else None


def hits(res: AuthResult, weights: dict[str, float], source: str) -> list[RuleHit]:
    def where(method: str, own: str = "") -> str:
        return "trusted Authentication-Results" if method in res.trusted else (own or source)

    out = [_hit(f"SPF_{res.spf.upper()}", weights, f"SPF {res.spf}", where("spf", res.spf_domain))]
    if res.dkim:
        for result, domain in res.dkim:
            name = f"DKIM_{result.upper()}"
            desc = f"DKIM signature {result}"
            if result == "permerror":
                desc = "DKIM permerror: malformed signature, or no usable key for it in DNS"
            if result == "fail" and res.arc_override:
                name = "DKIM_FAIL_ARC"
                desc = "DKIM signature broken in transit, vouched for by a trusted ARC chain"
            out.append(_hit(name, weights, desc, domain or where("dkim")))
    else:
        out.append(_hit("DKIM_NONE", weights, "no DKIM signature", where("dkim")))
    note = f" ({res.dmarc_note})" if res.dmarc_note else ""
    detail = res.dmarc_domain or where("dmarc")
    if res.dmarc == "fail" and res.arc_override:
        desc = f"DMARC fail, policy {res.policy or 'none'}, cancelled: a trusted ARC chain says dmarc=pass"
        out.append(_hit("DMARC_FAIL_ARC", weights, desc + note, detail))
    elif res.dmarc == "fail":
        name = f"DMARC_FAIL_{res.policy.upper() or 'NONE'}"
        out.append(_hit(name, weights, f"DMARC fail, policy {res.policy or 'none'}{note}", detail))
    else:
        out.append(_hit(f"DMARC_{res.dmarc.upper()}", weights, f"DMARC {res.dmarc}{note}", detail))
    if res.arc:
        out.append(_hit(f"ARC_{res.arc.upper()}", weights, f"ARC chain {res.arc}", res.arc_note))
    return out


def _hit(name: str, weights: dict[str, float], description: str, detail: str) -> RuleHit:
    return RuleHit(name, float(weights.get(name, 0.0)), description, detail)
