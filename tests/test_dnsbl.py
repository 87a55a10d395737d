"""DNS blocklists against a real DNS server on 127.0.0.1 (dnslib), and one
that never answers."""

from __future__ import annotations

import logging
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from conftest import HAM, ProxyThread, free_port
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer

from mailsift import Filter
from mailsift.config import Config
from mailsift.filter import DEFAULT_MODEL
from mailsift.rules import Context
from mailsift.rules.dnsbl import Zone, reverse_ip

LISTED_V4 = "81.2.69.160"  # any address: every query goes to the test server
REFUSED_V4 = "81.2.69.161"
LISTED_V6 = "2a01:4f8::1"  # global (2001:db8::/32 is documentation: never queried)
TRUNCATED_V4 = "81.2.69.170"

TRUNCATED_PREFIX = reverse_ip(TRUNCATED_V4) + ".zen.test"
RECORDS = {
    f"{reverse_ip(LISTED_V4)}.zen.test.": "127.0.0.2",
    f"{reverse_ip(REFUSED_V4)}.zen.test.": "127.255.255.254",
    f"{reverse_ip(LISTED_V6)}.zen.test.": "127.0.0.3",
    "spammy.example.dbl.test.": "127.0.1.2",
}


class ZoneResolver(BaseResolver):
    def __init__(self):
        self.queries: list[str] = []

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname)
        self.queries.append(f"{handler.protocol}:{qname}")
        if qname.startswith(TRUNCATED_PREFIX) and handler.protocol == "udp":
            reply.header.tc = 1  # "too big for UDP": the resolver must ask again over TCP
            return reply
        if qname.startswith(TRUNCATED_PREFIX):
            reply.add_answer(RR(qname, QTYPE.A, rdata=A("127.0.0.2"), ttl=300))
        elif qname.endswith("broken.test."):
            reply.header.rcode = RCODE.SERVFAIL
        elif qname in RECORDS and request.q.qtype == QTYPE.A:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(RECORDS[qname]), ttl=300))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture(scope="module")
def dns_server():
    resolver = ZoneResolver()
    port = free_port()
    udp = DNSServer(resolver, address="127.0.0.1", port=port, logger=_Quiet())
    tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=_Quiet())
    udp.start_thread()
    tcp.start_thread()
    yield f"127.0.0.1:{port}", resolver
    udp.stop()
    tcp.stop()


class _Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.fixture
def blackhole():
    """A UDP port that receives queries and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


ZONES = [
    Zone("RCVD_IN_ZEN", "zen.test", "ip", 2.0, {"127.0.0.2": [3.5, "SBL"], "127.0.0.3": [3.0, "CSS"]}),
    Zone("URIBL_DBL", "dbl.test", "domain", 2.5),
    Zone("RCVD_IN_BROKEN", "broken.test", "ip", 4.0),
]


def _filter(server: str, timeout: float = 1.0, deadline: float = 2.0, zones=ZONES) -> Filter:
    config = Config()
    config.dns = replace(config.dns, servers=[server], timeout=timeout, deadline=deadline)
    config.dnsbl = zones
    return Filter(config, str(DEFAULT_MODEL))


def _names(verdict) -> dict[str, float]:
    return {h.name: h.score for h in verdict.hits}


def test_listed_client_ip_adds_the_points_of_its_code(dns_server):
    flt = _filter(dns_server[0])
    plain = flt.score(HAM, context=Context())
    listed = flt.score(HAM, context=Context(client_ip=LISTED_V4))
    assert _names(listed)["RCVD_IN_ZEN"] == 3.5
    assert abs(listed.score - plain.score - 3.5) < 1e-6
    hit = [h for h in listed.hits if h.name == "RCVD_IN_ZEN"][0]
    assert "SBL" in hit.description and LISTED_V4 in hit.detail


def test_unlisted_ip_and_ipv6_listing(dns_server):
    flt = _filter(dns_server[0])
    assert "RCVD_IN_ZEN" not in _names(flt.score(HAM, context=Context(client_ip="81.2.69.99")))
    assert _names(flt.score(HAM, context=Context(client_ip=LISTED_V6)))["RCVD_IN_ZEN"] == 3.0
    assert reverse_ip(LISTED_V6).startswith("1.0.0.0.") and reverse_ip(LISTED_V6).endswith(".8.f.4.0.1.0.a.2")


def test_refused_query_code_is_logged_not_counted(dns_server, caplog):
    caplog.set_level(logging.WARNING, logger="mailsift.rules")
    v = _filter(dns_server[0]).score(HAM, context=Context(client_ip=REFUSED_V4))
    assert "RCVD_IN_ZEN" not in _names(v)
    assert any("refused the query" in r.getMessage() for r in caplog.records)


def test_servfail_is_a_zero_point_timeout_hit_never_spam(dns_server):
    v = _filter(dns_server[0]).score(HAM, context=Context(client_ip="81.2.69.99"))
    assert _names(v)["RCVD_IN_BROKEN_TIMEOUT"] == 0.0
    assert not v.is_spam


def test_domain_list_matches_url_hosts_and_the_sender_domain(dns_server):
    flt = _filter(dns_server[0])
    body = HAM.replace(b"See you at noon.", b"Cheap: http://www.spammy.example/buy now")
    assert _names(flt.score(body, context=Context()))["URIBL_DBL"] == 2.5
    assert _names(flt.score(HAM, context=Context(mail_from="x@spammy.example")))["URIBL_DBL"] == 2.5


def test_received_chain_is_the_fallback_for_the_client_address(dns_server):
    raw = (
        f"Received: from mx.sender.example (mx.sender.example [{LISTED_V4}]) by mx.test.example; "
        "Mon, 1 Jul 2024 10:00:00 +0000\r\n"
    ).encode() + HAM
    v = _filter(dns_server[0]).score(raw)
    assert _names(v)["RCVD_IN_ZEN"] == 3.5
    assert _names(v)["CLIENT_FROM_RECEIVED"] == 0.0


def test_answers_are_cached(dns_server):
    server, resolver = dns_server
    flt = _filter(server, zones=ZONES[:2])  # SERVFAIL answers are deliberately not cached
    flt.score(HAM, context=Context(client_ip="81.2.69.50"))
    before = flt.network.resolver.queries
    flt.score(HAM, context=Context(client_ip="81.2.69.50"))
    assert flt.network.resolver.queries == before


def test_blackholed_resolver_costs_at_most_the_deadline(blackhole):
    flt = _filter(blackhole, timeout=5.0, deadline=0.5)
    start = time.monotonic()
    v = flt.score(HAM, context=Context(client_ip=LISTED_V4))
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 0.4, elapsed
    assert _names(v)["DNS_DEADLINE"] == 0.0 and not v.is_spam


def test_no_zones_means_no_queries(dns_server):
    server, resolver = dns_server
    before = len(resolver.queries)
    _filter(server, zones=[]).score(HAM, context=Context(client_ip=LISTED_V4))
    assert len(resolver.queries) == before


def test_cli_score_with_ip_and_dns_explains_the_hit(dns_server, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[dnsbl]]\nname = "RCVD_IN_ZEN"\nzone = "zen.test"\nkind = "ip"\n'
        'codes = { "127.0.0.2" = [3.5, "SBL"] }\n'
    )
    msg = tmp_path / "m.eml"
    msg.write_bytes(HAM)
    r = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "--config", cfg, "score", "--explain", "--ip", LISTED_V4,
         "--dns", dns_server[0], msg],
        capture_output=True,
    )  # fmt: skip
    out = r.stdout.decode()
    assert "rule    RCVD_IN_ZEN" in out and "+3.50" in out and LISTED_V4 in out


def test_bad_dnsbl_config_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[dnsbl]]\nname = "X"\nzone = "z.test"\nkind = "sideways"\n')
    r = subprocess.run([sys.executable, "-m", "mailsift.cli", "--config", cfg, "score", "-"], input=HAM,
                       capture_output=True)  # fmt: skip
    assert r.returncode == 78 and b"kind must be ip or domain" in r.stderr


def test_proxy_checks_the_client_postfix_names_in_xforward(dns_server, sink):
    config = Config()
    config.proxy = replace(config.proxy, listen="127.0.0.1:0", relay=f"127.0.0.1:{sink.port}")
    config.dns = replace(config.dns, servers=[dns_server[0]])
    config.dnsbl = ZONES[:1]
    proxy = ProxyThread(config)
    try:
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as c:
            c.ehlo()
            assert c.docmd(f"XFORWARD ADDR={LISTED_V4} HELO=mx.sender.example")[0] == 250
            c.sendmail("s@example.org", ["a@example.net"], HAM)
    finally:
        proxy.stop()
    out = sink.received[0][2]
    status = [ln for ln in out.split(b"\r\n") if ln.startswith(b"X-Spam-Status:")][0]
    assert b"RCVD_IN_ZEN" in status.split(b"tests=")[1]


def test_truncated_udp_answer_is_fetched_again_over_tcp(dns_server):
    server, resolver = dns_server
    v = _filter(server, zones=ZONES[:1]).score(HAM, context=Context(client_ip=TRUNCATED_V4))
    assert _names(v)["RCVD_IN_ZEN"] == 3.5
    asked = [q for q in resolver.queries if q.split(":", 1)[1].startswith(TRUNCATED_PREFIX)]
    assert asked[:2] == [f"udp:{TRUNCATED_PREFIX}.", f"tcp:{TRUNCATED_PREFIX}."]


def test_all_untrusted_scope_checks_earlier_relays_and_a_rule_counts_once(dns_server):
    raw = (
        b"Received: from mx.ours.example (mx.ours.example [10.0.0.2]) by inbound.example; Mon, 1 Jul 2024\r\n"
        b"Received: from relay.example (relay.example [81.2.69.99]) by mx.ours.example; Mon, 1 Jul 2024\r\n"
        + f"Received: from origin.example (origin.example [{LISTED_V4}]) by relay.example\r\n".encode()
        + HAM
    )
    flt = _filter(dns_server[0], zones=[replace(ZONES[0], scope="all-untrusted")])
    v = flt.score(raw, context=Context(client_ip="81.2.69.99"))
    assert [h for h in v.hits if h.name == "RCVD_IN_ZEN"][0].detail.startswith(LISTED_V4)
    both = flt.score(raw, context=Context(client_ip=LISTED_V6))  # client and relay both listed
    assert [h.name for h in both.hits].count("RCVD_IN_ZEN") == 1
    assert _names(both)["RCVD_IN_ZEN"] == 3.5  # the strongest of the two


def test_a_bug_in_the_rules_never_raises_out_of_score(dns_server, monkeypatch):
    from mailsift import rules

    async def broken(*a, **k):
        raise KeyError("bug")

    monkeypatch.setattr(rules, "check_ip", broken)
    v = _filter(dns_server[0]).score(HAM, context=Context(client_ip=LISTED_V4))
    assert _names(v)["NETWORK_RULES_ERROR"] == 0.0
