"""SPF, DKIM and DMARC, each result a hit with its own weight.

SPF checks the connecting client against the envelope sender's (or, for
bounces, the HELO name's) policy with pyspf; DKIM verifies every signature
with dkimpy; DMARC looks up the From domain's policy (falling back to its
registered domain) and checks that a passing SPF or DKIM result is aligned
with the From domain, relaxed or strict as the policy says.  All DNS goes
through the one resolver built from the ``[dns]``
settings as the blocklists' — the same resolver and cache, reached from
the thread pyspf and dkimpy (which are synchronous) run in — under the
message's DNS deadline.

If the MTA in front already checked (OpenDKIM/OpenDMARC on the Postfix box),
an ``Authentication-Results`` header whose authserv-id is listed in
``trusted_authserv_ids`` is read instead; one from anywhere else is ignored,
since anybody can write that header.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from dataclasses import dataclass, field

import dkim
import dns.exception
import spf

from ..parse import ParsedMessage, domain_of
from ..score import RuleHit
from .resolver import NXDOMAIN, OK, TIMEOUT, Answer, Resolver
from .tld import registered_domain

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

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
    "DKIM_PERMERROR": 0.2,
    "DMARC_PASS": -0.5,
    "DMARC_FAIL_REJECT": 4.0,
    "DMARC_FAIL_QUARANTINE": 2.5,
    "DMARC_FAIL_NONE": 0.5,
    "DMARC_NONE": 0.0,
    "DMARC_TEMPERROR": 0.0,
}


@dataclass
class AuthConfig:
    """``[auth]`` in the config."""

    #: check SPF/DKIM/DMARC (needs working DNS; off for corpora and offline use)
    enabled: bool = False
    #: authserv-ids of Authentication-Results headers written by your own MTA
    trusted_authserv_ids: list = field(default_factory=list)


@dataclass
class AuthResult:
    spf: str = "none"
    spf_domain: str = ""
    dkim: list[tuple[str, str]] = field(default_factory=list)  # (result, d=)
    dmarc: str = "none"
    policy: str = ""


class LoopDNS:
    """The shared async resolver, offered synchronously to pyspf and dkimpy
    running in a worker thread: each lookup is handed to the event loop that
    waits for that thread, so SPF, DKIM and DMARC use the same servers,
    timeout and cache as the blocklists."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop):
        self.resolver = resolver
        self.loop = loop
        self.timeout = resolver.timeout

    def _ask(self, name: str, rdtype: str) -> Answer:
        coro = self.resolver.query(name, rdtype)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the message's deadline passed
            coro.close()
            return Answer(TIMEOUT, detail="message deadline passed")
        try:
            return future.result(self.timeout + 1.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()
            try:
                coro.close()  # the loop closed before it ran: not a leak, just never started
            except RuntimeError:
                pass
            return Answer(TIMEOUT, detail="message deadline passed")

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


def check_spf(dns_: LoopDNS, ip: str, mail_from: str, helo: str) -> tuple[str, str]:
    """(result, domain checked)."""
    domain = domain_of(mail_from) or helo
    if not ip or not domain:
        return "none", domain
    spf.DNSLookup = dns_.spf_lookup  # pyspf resolves through this module global
    sender = mail_from or f"postmaster@{helo}"
    result, _ = spf.check2(i=ip, s=sender, h=helo or domain, querytime=dns_.timeout * 3)
    return (result if result in RESULTS else "permerror"), domain


def check_dkim(dns_: LoopDNS, raw: bytes, n_signatures: int) -> list[tuple[str, str]]:
    out = []
    for idx in range(min(n_signatures, 5)):
        d = dkim.DKIM(raw, minkey=1024)
        try:
            ok = d.verify(idx=idx, dnsfunc=dns_.dkim_txt)
            result = "pass" if ok else "fail"
        except dns.exception.Timeout:
            result = "temperror"
        except dkim.ValidationError:  # body hash or signature does not match: the message changed
            result = "fail"
        except dkim.DKIMException:  # malformed signature or key
            result = "permerror"
        domain = (d.domain or b"").decode("ascii", "replace").lower()
        out.append((result, domain))
    return out


_TAG_RE = re.compile(r"\s*([a-z]+)\s*=\s*([^;]*)")


def dmarc_policy(dns_: LoopDNS, from_domain: str) -> dict | None:
    """The DMARC record's tags, from the From domain or else its registered
    domain; None if neither publishes one."""
    for name in dict.fromkeys([from_domain, registered_domain(from_domain)]):
        records = [r for r in (dns_.txt(f"_dmarc.{name}") or []) if r.lower().startswith("v=dmarc1")]
        if records:
            tags = dict(_TAG_RE.findall(records[0].lower()))
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


def evaluate(dns_: LoopDNS, msg: ParsedMessage, ip: str, mail_from: str, helo: str) -> AuthResult:
    res = AuthResult()
    try:
        res.spf, res.spf_domain = check_spf(dns_, ip, mail_from, helo)
    except spf.TempError:
        res.spf = "temperror"
    except Exception:
        res.spf = "permerror"
    res.dkim = check_dkim(dns_, msg.raw[msg.raw_start :], len(msg.header_all("dkim-signature")))
    from_domain = msg.from_domain
    try:
        policy = dmarc_policy(dns_, from_domain) if from_domain else None
    except dns.exception.Timeout:
        res.dmarc = "temperror"
        return res
    if policy is None:
        return res
    res.policy = policy.get("p", "none").strip()
    spf_ok = res.spf == "pass" and aligned(res.spf_domain, from_domain, policy.get("aspf", "r").strip())
    dkim_ok = any(
        r == "pass" and aligned(d, from_domain, policy.get("adkim", "r").strip()) for r, d in res.dkim
    )
    res.dmarc = "pass" if spf_ok or dkim_ok else "fail"
    return res


_AR_RE = re.compile(r"\b(spf|dkim|dmarc)\s*=\s*([a-z]+)", re.I)


def from_trusted_header(msg: ParsedMessage, trusted: list[str]) -> AuthResult | None:
    """Results from the topmost Authentication-Results header written by one
    of our own servers (authserv-id in ``trusted``), or None."""
    if not trusted:
        return None
    ids = {t.lower() for t in trusted}
    for value in msg.header_all("authentication-results"):
        authserv = value.split(";", 1)[0].strip().split()[0].lower() if value.strip() else ""
        if authserv not in ids:
            continue
        res = AuthResult()
        for method, result in _AR_RE.findall(value):
            method, result = method.lower(), result.lower()
            if method == "spf":
                res.spf = result
            elif method == "dkim":
                res.dkim.append((result, ""))
            elif method == "dmarc":
                res.dmarc = result
                res.policy = "none"
        return res
    return None


def hits(res: AuthResult, weights: dict[str, float], source: str) -> list[RuleHit]:
    out = [_hit(f"SPF_{res.spf.upper()}", weights, f"SPF {res.spf}", res.spf_domain or source)]
    if res.dkim:
        for result, domain in res.dkim:
            out.append(_hit(f"DKIM_{result.upper()}", weights, f"DKIM signature {result}", domain or source))
    else:
        out.append(_hit("DKIM_NONE", weights, "no DKIM signature", source))
    if res.dmarc == "fail":
        name = f"DMARC_FAIL_{res.policy.upper() or 'NONE'}"
        out.append(_hit(name, weights, f"DMARC fail, policy {res.policy or 'none'}", source))
    else:
        out.append(_hit(f"DMARC_{res.dmarc.upper()}", weights, f"DMARC {res.dmarc}", source))
    return out


def _hit(name: str, weights: dict[str, float], description: str, detail: str) -> RuleHit:
    return RuleHit(name, float(weights.get(name, 0.0)), description, detail)
