"""SPF, DKIM, DMARC and ARC against a real DNS server on 127.0.0.1 (dnslib),
with messages DKIM-signed (RSA and ed25519) and ARC-sealed here with freshly
generated keys; some names are never answered, as a broken DNS does."""

from __future__ import annotations

import base64
import email
import smtplib
import socket
import subprocess
import time
from dataclasses import replace

import dkim
import nacl.encoding
import nacl.signing
import pytest
from conftest import ProxyThread, free_port
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.dns import DNSError
from dnslib.server import BaseResolver, DNSServer
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsift import Filter
from mailsift.config import Config
from mailsift.filter import DEFAULT_MODEL
from mailsift.parse import MAX_PARSE_BYTES
from mailsift.rules import Context, dkimlinear
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
def other_rsa_key(tmp_path_factory):
    """A second RSA public key (base64 DER): published where dkim_key signs, a
    key that is there but does not verify the signature (a rotated key)."""
    d = tmp_path_factory.mktemp("dkim-other")
    subprocess.run(["openssl", "genrsa", "-out", d / "o.pem", "1024"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", d / "o.pem", "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def ed25519_key():
    """(private seed, public key), both base64, as dkimpy and the DNS record want them."""
    key = nacl.signing.SigningKey.generate()
    seed = key.encode(encoder=nacl.encoding.Base64Encoder)
    return seed, key.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()


#: names the test DNS server never answers (a dead or filtered server for them)
SILENT = {"slow.example.", "sel._domainkey.slow.example."}


@pytest.fixture(scope="module")
def auth_dns(dkim_key, ed25519_key, other_rsa_key):
    records = {
        "_dmarc.nokey.example.": "v=DMARC1; p=reject",  # and no key record at all
        "_dmarc.revoked.example.": "v=DMARC1; p=reject",
        "sel._domainkey.revoked.example.": "v=DKIM1; k=rsa; p=",  # RFC 6376 §3.6.1: revoked
        "_dmarc.rotated.example.": "v=DMARC1; p=reject",
        "sel._domainkey.rotated.example.": f"v=DKIM1; k=rsa; p={other_rsa_key}",
        "slow.example.": "v=spf1 -all",  # never served: SILENT
        "_dmarc.slow.example.": "v=DMARC1; p=reject",
        "_dmarc.sample.example.": "v=DMARC1; p=reject; pct=0",
        "_dmarc.ed.example.": "v=DMARC1; p=reject",
        "sel._domainkey.ed.example.": f"v=DKIM1; k=ed25519; p={ed25519_key[1]}",
        "lists.example.net.": "v=spf1 ip4:81.2.69.200 -all",
        "arc._domainkey.lists.example.net.": f"v=DKIM1; k=rsa; p={dkim_key[1]}",
        "arc._domainkey.evil.example.": f"v=DKIM1; k=rsa; p={dkim_key[1]}",
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
            if name in SILENT:
                raise DNSError("no answer, on purpose")  # dnslib then sends nothing
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


def _config(server: str, deadline: float = 3.0, trusted=(), sealers=(), timeout: float = 1.0) -> Config:
    config = Config()
    config.dns = replace(config.dns, servers=[server], timeout=timeout, deadline=deadline)
    config.auth = replace(
        config.auth, enabled=True, trusted_authserv_ids=list(trusted), trusted_arc_sealers=list(sealers)
    )
    return config


def _filter(server: str, deadline: float = 3.0, trusted=(), sealers=(), timeout: float = 1.0) -> Filter:
    return Filter(_config(server, deadline, trusted, sealers, timeout), str(DEFAULT_MODEL))


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


def test_each_of_several_signatures_is_verified_and_named_by_its_domain(auth_dns, dkim_key):
    first = _sign(_msg(), dkim_key[0])
    both = _sign(first, dkim_key[0], b"nokey.example")  # no key published for nokey.example
    v = _filter(auth_dns).score(both, context=Context(BAD_IP, "x", "bounce@other.example"))
    found = {(h.name, h.detail) for h in v.hits if h.name.startswith("DKIM")}
    assert ("DKIM_PASS", "example.org") in found and ("DKIM_PERMERROR", "nokey.example") in found
    assert "DMARC_PASS" in _hits(v)


def test_a_signature_without_a_usable_key_is_a_permerror_without_points(auth_dns, dkim_key):
    """RFC 6376 §6.1.2: no key record, or a revoked one (p=), is PERMFAIL "no
    key for signature": nothing was verified, so it is not scored as a
    broken signature.  DMARC still fails under the domain's p=reject (no
    aligned identifier passed), as it must for mail forged that way; a key
    that is there but does not verify the signature is a real DKIM_FAIL."""
    flt = _filter(auth_dns)
    ctx = Context(BAD_IP, "x", "bounce@other.example")
    for domain in ("nokey.example", "revoked.example"):
        v = flt.score(_sign(_msg(f"a@{domain}"), dkim_key[0], domain.encode()), context=ctx)
        dkim_hits = [(h.name, h.score, h.detail) for h in v.hits if h.name.startswith("DKIM")]
        assert dkim_hits == [("DKIM_PERMERROR", 0.0, domain)], dkim_hits
        assert "no usable key" in [h for h in v.hits if h.name == "DKIM_PERMERROR"][0].description
        assert _hits(v)["DMARC_FAIL_REJECT"] == 4.0
    v = flt.score(_sign(_msg("a@rotated.example"), dkim_key[0], b"rotated.example"), context=ctx)
    hits = _hits(v)
    assert hits["DKIM_FAIL"] == 0.5 and "DKIM_PERMERROR" not in hits and hits["DMARC_FAIL_REJECT"] == 4.0


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


def _big(from_: str = "alice@example.org", size: int = 700_000) -> bytes:
    line = b"The quarterly figures are attached below, as discussed on Monday.\r\n"
    return _msg(from_).replace(b"\r\nHello Bob.\r\n", b"\r\n" + line * (size // len(line)))


def test_700kb_message_signed_by_its_reject_domain_passes_dkim_and_dmarc(auth_dns, dkim_key):
    signed = _sign(_big(), dkim_key[0])
    assert len(signed) > MAX_PARSE_BYTES + 100_000  # the parser reads a cut; DKIM must not
    hits = _hits(_filter(auth_dns).score(signed, context=Context(BAD_IP, "x", "bounce@other.example")))
    assert "DKIM_PASS" in hits and "DMARC_PASS" in hits
    assert not any(n.startswith(("DKIM_FAIL", "DMARC_FAIL")) for n in hits)


def _status_through_serve(config: Config, sink, raw: bytes, ip: str, mail_from: str) -> str:
    """As ``mailsift serve`` scores: in a scoring worker process (the
    message and its XFORWARD context cross the pool's pipe), not a thread."""
    config.proxy = replace(config.proxy, listen="127.0.0.1:0", relay=f"127.0.0.1:{sink.port}")
    proxy = ProxyThread(config, workers=1)
    try:
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as c:
            c.ehlo()
            assert c.docmd(f"XFORWARD ADDR={ip} HELO=mx.sender.example")[0] == 250
            c.sendmail(mail_from, ["bob@example.net"], raw)
    finally:
        proxy.stop()
    return email.message_from_bytes(sink.received[0][2])["X-Spam-Status"]


def test_serve_passes_dkim_and_dmarc_of_a_700kb_signed_message(auth_dns, dkim_key, sink):
    signed = _sign(_big(), dkim_key[0])
    status = _status_through_serve(_config(auth_dns), sink, signed, BAD_IP, "bounce@other.example")
    tests = status.split("tests=")[1]
    assert "DKIM_PASS" in tests and "DMARC_PASS" in tests, status
    assert "DMARC_FAIL" not in tests and "DKIM_FAIL" not in tests, status


def test_spf_and_dkim_key_timeouts_make_dmarc_temperror_not_fail(auth_dns, dkim_key):
    signed = _sign(_msg("alice@slow.example"), dkim_key[0], b"slow.example")
    flt = _filter(auth_dns, deadline=4.0, timeout=0.5)
    v = flt.score(signed, context=Context(GOOD_IP, "mx.slow.example", "alice@slow.example"))
    hits = _hits(v)
    assert {"SPF_TEMPERROR", "DKIM_TEMPERROR", "DMARC_TEMPERROR"} <= set(hits), hits
    assert not any(n.startswith("DMARC_FAIL") for n in hits)
    assert sum(hits.values()) == 0.0


def test_serve_gives_no_dmarc_failure_points_when_spf_and_dkim_keys_time_out(auth_dns, dkim_key, sink):
    signed = _sign(_msg("alice@slow.example"), dkim_key[0], b"slow.example")
    config = _config(auth_dns, deadline=4.0, timeout=0.5)
    status = _status_through_serve(config, sink, signed, GOOD_IP, "alice@slow.example")
    tests = status.split("tests=")[1]
    assert "DMARC_TEMPERROR" in tests and "DMARC_FAIL" not in tests, status


def test_opendmarc_policy_is_honoured_and_every_trusted_header_merged(auth_dns):
    headers = (
        b"Authentication-Results: mx.ours.example; dmarc=fail (p=reject dis=none) header.from=example.org\r\n"
        b"Authentication-Results: mx.ours.example;\r\n"
        b"\tdkim=fail (2048-bit key; unprotected) header.d=example.org header.i=@example.org\r\n"
        b"Authentication-Results: mx.ours.example; spf=pass (sender SPF authorized)"
        b" smtp.mailfrom=a@example.org\r\n"
        b"Authentication-Results: forged.example; dmarc=pass\r\n"
    )
    v = _filter(auth_dns, trusted=["mx.ours.example"]).score(
        headers + _msg(), context=Context(BAD_IP, "x", "a@example.org")
    )
    hits = _hits(v)
    assert hits["DMARC_FAIL_REJECT"] == 4.0  # OpenDMARC said p=reject: not forced to "none"
    assert "SPF_PASS" in hits and "DKIM_FAIL" in hits  # the policyd-spf header is not lost
    spf_hit = [h for h in v.hits if h.name == "SPF_PASS"][0]
    assert spf_hit.detail == "trusted Authentication-Results"  # read, not checked live (BAD_IP fails)


def test_a_trusted_id_below_the_senders_received_header_is_not_believed(auth_dns):
    ours = f"Received: from mx.sender.example (mx.sender.example [{BAD_IP}]) by mx.ours.example\r\n".encode()
    theirs = b"Received: from pc.sender.example (pc [10.9.8.7]) by mx.sender.example\r\n"
    forged = (
        b"Authentication-Results: mx.ours.example; spf=pass; dkim=pass header.d=example.org; dmarc=pass\r\n"
    )
    flt = _filter(auth_dns, trusted=["mx.ours.example"])
    ctx = Context(BAD_IP, "x", "a@example.org")
    hits = _hits(flt.score(ours + theirs + forged + _msg(), context=ctx))  # came with the message
    assert "SPF_FAIL" in hits and "DMARC_FAIL_REJECT" in hits and "DMARC_PASS" not in hits
    for mine in (forged + ours + theirs, ours + forged + theirs):  # above or just below our Received
        assert "DMARC_PASS" in _hits(flt.score(mine + _msg(), context=ctx))


def test_methods_no_trusted_header_reports_are_checked_live(auth_dns, dkim_key):
    spf_only = b"Authentication-Results: mx.ours.example; spf=pass smtp.mailfrom=example.org\r\n"
    signed = _sign(spf_only + _msg(), dkim_key[0])
    hits = _hits(
        _filter(auth_dns, trusted=["mx.ours.example"]).score(
            signed, context=Context(BAD_IP, "x", "a@example.org")
        )
    )
    assert {"SPF_PASS", "DKIM_PASS", "DMARC_PASS"} <= set(hits)


def test_dmarc_pct_outside_the_sample_applies_the_next_weaker_policy(auth_dns):
    v = _filter(auth_dns).score(_msg("a@sample.example"), context=Context(BAD_IP, "x", "a@other.example"))
    hits = _hits(v)
    assert "DMARC_FAIL_REJECT" not in hits and hits["DMARC_FAIL_QUARANTINE"] == 2.5
    assert "pct=0" in [h for h in v.hits if h.name == "DMARC_FAIL_QUARANTINE"][0].description


def test_several_from_domains_each_checked_and_the_strictest_failure_applies(auth_dns, dkim_key):
    flt = _filter(auth_dns)
    two = _msg("a@strict.example>, Bob <b@example.org")  # quarantine and reject, neither authenticated
    hits = _hits(flt.score(two, context=Context(BAD_IP, "x", "x@other.example")))
    assert "DMARC_FAIL_REJECT" in hits and "DMARC_FAIL_QUARANTINE" not in hits
    # example.org signed and aligned, strict.example not: strict.example's failure still counts
    signed = _sign(two, dkim_key[0])
    hits = _hits(flt.score(signed, context=Context(BAD_IP, "x", "x@other.example")))
    assert "DKIM_PASS" in hits and "DMARC_FAIL_QUARANTINE" in hits


def test_ed25519_signature_verifies_and_passes_dmarc(auth_dns, ed25519_key):
    raw = _msg("alice@ed.example")
    sig = dkim.sign(
        raw, b"sel", b"ed.example", ed25519_key[0], include_headers=[b"from", b"to", b"subject"],
        signature_algorithm=b"ed25519-sha256",
    )  # fmt: skip
    assert b"a=ed25519-sha256" in sig
    flt = _filter(auth_dns)
    hits = _hits(flt.score(sig + raw, context=Context(BAD_IP, "x", "bounce@other.example")))
    assert "DKIM_PASS" in hits and "DMARC_PASS" in hits
    tampered = (sig + raw).replace(b"Hello Bob.", b"Hello Bob, wire the money.")
    assert "DKIM_FAIL" in _hits(flt.score(tampered, context=Context(BAD_IP, "x", "bounce@other.example")))


def _through_list(raw: bytes, key: bytes, sealer: bytes = b"lists.example.net") -> bytes:
    """What a mailing list does: check the message (its A-R), add a footer
    (breaking the author's DKIM body hash), ARC-seal the result."""
    ar = (
        b"Authentication-Results: " + sealer + b"; dkim=pass header.d=example.org;"
        b" spf=pass smtp.mailfrom=example.org; dmarc=pass header.from=example.org\r\n"
    )
    modified = ar + raw + b"-- \r\nlist footer: unsubscribe at https://lists.example.net/\r\n"
    seal = dkim.arc_sign(modified, b"arc", sealer, key, sealer, include_headers=[b"from", b"to", b"subject"])
    return b"".join(seal) + modified


def test_trusted_arc_chain_cancels_a_mailing_list_dmarc_failure(auth_dns, dkim_key):
    listed = _through_list(_sign(_msg(), dkim_key[0]), dkim_key[0])
    ctx = Context("81.2.69.200", "lists.example.net", "list-bounces@lists.example.net")
    plain = _hits(_filter(auth_dns).score(listed, context=ctx))
    assert plain["DMARC_FAIL_REJECT"] == 4.0 and "DKIM_FAIL" in plain  # the footer broke DKIM
    v = _filter(auth_dns, sealers=["example.net"]).score(listed, context=ctx)
    hits = _hits(v)
    assert "ARC_PASS" in hits and hits["DMARC_FAIL_ARC"] == 0.0 and "DMARC_FAIL_REJECT" not in hits
    assert hits["DKIM_FAIL_ARC"] == 0.0 and "DKIM_FAIL" not in hits


def test_trusted_dmarc_failure_is_still_cancelled_by_a_trusted_arc_chain(auth_dns, dkim_key):
    listed = _through_list(_sign(_msg(), dkim_key[0]), dkim_key[0])
    ours = b"Authentication-Results: mx.ours.example; spf=fail smtp.mailfrom=lists.example.net;"
    ours += b" dkim=fail header.d=example.org; dmarc=fail (p=reject dis=none) header.from=example.org\r\n"
    flt = _filter(auth_dns, trusted=["mx.ours.example"], sealers=["lists.example.net"])
    hits = _hits(
        flt.score(ours + listed, context=Context("81.2.69.200", "x", "list-bounces@lists.example.net"))
    )
    assert hits["DMARC_FAIL_ARC"] == 0.0 and "DMARC_FAIL_REJECT" not in hits and "ARC_PASS" in hits


def test_arc_chain_from_an_untrusted_sealer_changes_nothing(auth_dns, dkim_key):
    forged = _through_list(_msg(), dkim_key[0], sealer=b"evil.example")  # "dmarc=pass", says the spammer
    v = _filter(auth_dns, sealers=["lists.example.net"]).score(forged, context=Context(BAD_IP, "x", ""))
    hits = _hits(v)
    assert hits["DMARC_FAIL_REJECT"] == 4.0 and "DMARC_FAIL_ARC" not in hits
    assert "ARC_PASS" in hits and "no effect" in [h for h in v.hits if h.name == "ARC_PASS"][0].detail
    tampered = _through_list(_sign(_msg(), dkim_key[0]), dkim_key[0]).replace(b"list footer", b"buy now")
    hits = _hits(
        _filter(auth_dns, sealers=["lists.example.net"]).score(tampered, context=Context(BAD_IP, "x", ""))
    )
    assert "ARC_FAIL" in hits and hits["DMARC_FAIL_REJECT"] == 4.0


def test_an_overlong_arc_chain_is_not_verified(auth_dns, dkim_key):
    listed = _through_list(_sign(_msg(), dkim_key[0]), dkim_key[0])
    seal = [ln for ln in listed.split(b"\r\n") if ln.startswith(b"ARC-Seal:")][0] + b"\r\n"
    flooded = seal * 11 + listed
    v = _filter(auth_dns, sealers=["lists.example.net"]).score(flooded, context=Context(BAD_IP, "x", ""))
    hits = _hits(v)
    assert "ARC_FAIL" in hits and hits["DMARC_FAIL_REJECT"] == 4.0
    assert "not verified" in [h for h in v.hits if h.name == "ARC_FAIL"][0].detail


def test_outbound_and_internal_mail_skips_the_inbound_checks(auth_dns):
    flt = _filter(auth_dns)
    for ctx in (
        Context(BAD_IP, "x", "a@example.org", source="LOCAL"),
        Context(BAD_IP, "x", "a@example.org", authenticated=True),
    ):
        hits = _hits(flt.score(_msg(), context=ctx))
        assert hits == {"OUTBOUND_MAIL": 0.0}, hits
    hits = _hits(flt.score(_msg(), context=Context("10.1.2.3", "x", "a@example.org")))
    assert hits == {"INTERNAL_CLIENT": 0.0}, hits


# -- dkimpy's per-byte work in linear time (rules/dkimlinear.py) ------------------------
_PIECES = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b":", b"From "]
_DKIM_BYTES = st.lists(st.sampled_from(_PIECES), max_size=80)


@settings(max_examples=400, deadline=None)
@given(_DKIM_BYTES)
def test_linear_canonicalization_gives_dkimpys_results(pieces):
    body = b"".join(pieces)
    assert dkimlinear.strip_trailing_lines(body) == dkimlinear.DKIMPY["strip_trailing_lines"](body)
    crlf = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as the split hands bodies over
    for b in (body, crlf):
        assert dkimlinear.relaxed_body(b) == dkimlinear.DKIMPY["relaxed_body"](b)


@settings(max_examples=300, deadline=None)
@given(_DKIM_BYTES, _DKIM_BYTES)
def test_linear_split_gives_dkimpys_headers_and_body(head, body):
    raw = b"X-A: b\r\n" + b"".join(head) + b"\r\n" + b"".join(body)
    try:
        expected = dkim.rfc822_parse(raw)
    except dkim.MessageFormatError:
        with pytest.raises(dkim.MessageFormatError):
            dkimlinear.split(raw)
        return
    assert dkimlinear.split(raw) == expected


def test_a_run_of_blanks_in_a_relaxed_signed_body_verifies_at_once(auth_dns, dkim_key):
    """dkimpy's relaxed canonicalization is quadratic in a run of blanks not
    followed by CRLF (6 s for 40,000, hours for a megabyte, holding the
    GIL): with a key published, a message signed that way now verifies."""
    raw = _msg().replace(b"Hello Bob.", b"Hello" + b" " * 200_000 + b"Bob.")
    sig = dkim.sign(raw, b"sel", b"example.org", dkim_key[0], canonicalize=(b"relaxed", b"relaxed"))
    hits = _hits(_filter(auth_dns, deadline=1.0).score(sig + raw, context=Context(BAD_IP, "x", "")))
    assert "DKIM_PASS" in hits and "DNS_DEADLINE" not in hits


def test_a_header_line_dkimpy_cannot_parse_is_a_permerror_not_a_rules_error(auth_dns, dkim_key):
    """A header line without a colon made dkimpy raise out of the DKIM check,
    and every network result of the message was lost (NETWORK_RULES_ERROR)."""
    raw = _sign(_msg(), dkim_key[0]).replace(b"To: bob", b"not a header line\r\nTo: bob")
    hits = _hits(_filter(auth_dns).score(raw, context=Context(GOOD_IP, "x", "a@example.org")))
    assert "NETWORK_RULES_ERROR" not in hits and hits["DKIM_PERMERROR"] == 0.0 and "SPF_PASS" in hits
