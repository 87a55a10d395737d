"""SPF, DKIM and DMARC against a real DNS server on 127.0.0.1 (dnslib),
with messages DKIM-signed here with a freshly generated key."""

from __future__ import annotations

import base64
import socket
import subprocess
import time
from dataclasses import replace

import dkim
import pytest
from conftest import free_port
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSServer

from mailsift import Filter
from mailsift.config import Config
from mailsift.filter import DEFAULT_MODEL
from mailsift.rules import Context
from mailsift.rules.auth import aligned

GOOD_IP = "81.2.69.160"
BAD_IP = "81.2.69.99"


def _txt(value: str) -> TXT:
    return TXT([value[i : i + 250] for i in range(0, len(value), 250)])


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim")
    subprocess.run(["openssl", "genrsa", "-out", d / "k.pem", "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", d / "k.pem", "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return (d / "k.pem").read_bytes(), base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def auth_dns(dkim_key):
    records = {
        "example.org.": f"v=spf1 ip4:{GOOD_IP} -all",
        "soft.example.": "v=spf1 ~all",
        "neutral.example.": "v=spf1 ?all",
        "perm.example.": "v=spf1 ip4:not-an-address -all",
        "_dmarc.example.org.": "v=DMARC1; p=reject; adkim=r; aspf=r",
        "_dmarc.strict.example.": "v=DMARC1; p=quarantine; adkim=s",
        "sel._domainkey.example.org.": f"v=DKIM1; k=rsa; p={dkim_key[1]}",
        "sel._domainkey.mail.strict.example.": f"v=DKIM1; k=rsa; p={dkim_key[1]}",
    }

    class Zones(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            name = str(request.q.qname).lower()
            if name.endswith("servfail.example."):
                reply.header.rcode = RCODE.SERVFAIL
            elif request.q.qtype == QTYPE.TXT and name in records:
                reply.add_answer(RR(name, QTYPE.TXT, rdata=_txt(records[name]), ttl=60))
            elif name not in records:
                reply.header.rcode = RCODE.NXDOMAIN
            return reply

    class Quiet:
        def __getattr__(self, n):
            return lambda *a, **k: None

    port = free_port()
    server = DNSServer(Zones(), address="127.0.0.1", port=port, logger=Quiet())
    server.start_thread()
    yield f"127.0.0.1:{port}"
    server.stop()


def _filter(server: str, deadline: float = 3.0, trusted=()) -> Filter:
    config = Config()
    config.dns = replace(config.dns, servers=[server], timeout=1.0, deadline=deadline)
    config.auth = replace(config.auth, enabled=True, trusted_authserv_ids=list(trusted))
    return Filter(config, str(DEFAULT_MODEL))


def _msg(from_: str = "alice@example.org", extra: bytes = b"") -> bytes:
    return (
        (
            f"From: Alice <{from_}>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
            "Date: Mon, 01 Jul 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n"
        ).encode()
        + extra
        + b"\r\nHello Bob.\r\n"
    )


def _sign(raw: bytes, key: bytes, domain: bytes = b"example.org") -> bytes:
    return dkim.sign(raw, b"sel", domain, key, include_headers=[b"from", b"to", b"subject"]) + raw


def _hits(verdict) -> dict[str, float]:
    return {h.name: h.score for h in verdict.hits}


def test_spf_pass_fail_softfail_and_none(auth_dns):
    flt = _filter(auth_dns)
    assert "SPF_PASS" in _hits(flt.score(_msg(), context=Context(GOOD_IP, "mx.example.org", "a@example.org")))
    assert "SPF_FAIL" in _hits(flt.score(_msg(), context=Context(BAD_IP, "mx.example.org", "a@example.org")))
    assert "SPF_SOFTFAIL" in _hits(flt.score(_msg(), context=Context(BAD_IP, "x", "a@soft.example")))
    assert "SPF_NONE" in _hits(flt.score(_msg(), context=Context(BAD_IP, "x", "a@nospf.example")))
    assert "SPF_NEUTRAL" in _hits(flt.score(_msg(), context=Context(BAD_IP, "x", "a@neutral.example")))
    assert "SPF_PERMERROR" in _hits(flt.score(_msg(), context=Context(BAD_IP, "x", "a@perm.example")))
    temp = flt.score(_msg(), context=Context(BAD_IP, "x", "a@servfail.example"))
    assert _hits(temp)["SPF_TEMPERROR"] == 0.0


def test_dkim_signature_verifies_and_tampering_fails(auth_dns, dkim_key):
    flt = _filter(auth_dns)
    signed = _sign(_msg(), dkim_key[0])
    assert "DKIM_PASS" in _hits(flt.score(signed, context=Context(BAD_IP, "x", "a@example.org")))
    tampered = signed.replace(b"Hello Bob.", b"Hello Bob, send money.")
    assert "DKIM_FAIL" in _hits(flt.score(tampered, context=Context(BAD_IP, "x", "a@example.org")))
    assert "DKIM_NONE" in _hits(flt.score(_msg(), context=Context(GOOD_IP, "x", "a@example.org")))


def test_dmarc_passes_on_aligned_dkim_and_fails_by_the_policy(auth_dns, dkim_key):
    flt = _filter(auth_dns)
    # SPF fails (bad IP) but DKIM passes for example.org: aligned, DMARC pass
    signed = _sign(_msg(), dkim_key[0])
    assert "DMARC_PASS" in _hits(flt.score(signed, context=Context(BAD_IP, "x", "bounce@other.example")))
    # From example.org, SPF fails, no DKIM: DMARC fail under p=reject
    forged = flt.score(_msg(), context=Context(BAD_IP, "x", "a@example.org"))
    assert _hits(forged)["DMARC_FAIL_REJECT"] == 4.0
    # SPF passes for the envelope, aligned with From: pass
    ok = flt.score(_msg(), context=Context(GOOD_IP, "x", "a@example.org"))
    assert "DMARC_PASS" in _hits(ok)
    assert _hits(forged) != _hits(ok) and forged.score > ok.score


def test_strict_alignment_needs_the_exact_domain(auth_dns, dkim_key):
    flt = _filter(auth_dns)
    signed = _sign(_msg("a@strict.example"), dkim_key[0], b"mail.strict.example")
    hits = _hits(flt.score(signed, context=Context(BAD_IP, "x", "")))
    assert "DKIM_PASS" in hits and "DMARC_FAIL_QUARANTINE" in hits
    assert aligned("mail.example.org", "example.org", "r") and not aligned(
        "mail.example.org", "example.org", "s"
    )


def test_trusted_authentication_results_replace_the_checks_and_forged_ones_do_not(auth_dns):
    header = (
        b"Authentication-Results: mx.ours.example; spf=pass smtp.mailfrom=a@example.org;"
        b" dkim=pass; dmarc=pass\r\n"
    )
    raw = header + _msg()
    trusted = _filter(auth_dns, trusted=["mx.ours.example"]).score(
        raw, context=Context(BAD_IP, "x", "a@example.org")
    )
    assert {"SPF_PASS", "DKIM_PASS", "DMARC_PASS"} <= set(_hits(trusted))
    # the same header, but nobody said to trust mx.ours.example: checked live, and it fails
    live = _filter(auth_dns).score(raw, context=Context(BAD_IP, "x", "a@example.org"))
    assert "SPF_FAIL" in _hits(live) and "DMARC_FAIL_REJECT" in _hits(live)


def test_unanswered_dns_costs_the_deadline_and_no_points(tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        flt = _filter(f"127.0.0.1:{s.getsockname()[1]}", deadline=0.5)
        start = time.monotonic()
        v = flt.score(_msg(), context=Context(GOOD_IP, "x", "a@example.org"))
        assert time.monotonic() - start < 0.5 + 0.4
    finally:
        s.close()
    assert sum(h.score for h in v.hits) == 0.0
    assert "DNS_DEADLINE" in _hits(v)


def test_rule_weights_from_the_config_override_the_defaults(auth_dns):
    flt = _filter(auth_dns)
    flt.config.rule_weights = {"SPF_FAIL": 7.0}
    v = flt.score(_msg(), context=Context(BAD_IP, "x", "a@example.org"))
    assert _hits(v)["SPF_FAIL"] == 7.0
