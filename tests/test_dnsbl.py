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
from mailsift.config import Config, ConfigError, load_config
from mailsift.filter import DEFAULT_MODEL
from mailsift.rules import Context, NetworkConfig
from mailsift.rules.dnsbl import Zone, reverse_ip

LISTED_V4 = "81.2.69.160"  # any address: every query goes to the test server
REFUSED_V4 = "81.2.69.161"
LISTED_V6 = "2a01:4f8::1"  # global (2001:db8::/32 is documentation: never queried)
TRUNCATED_V4 = "81.2.69.170"

SPAMHAUS_TYPO_V4 = "81.2.69.171"
SPAMHAUS_LIMIT_V4 = "81.2.69.172"
#: "our" backup MX range in the trusted-networks tests (global, so not trusted by default)
OUR_NET, OUR_MX = "81.2.69.96/28", "81.2.69.99"

TRUNCATED_PREFIX = reverse_ip(TRUNCATED_V4) + ".zen.test"
RECORDS = {
    f"{reverse_ip(LISTED_V4)}.zen.test.": "127.0.0.2",
    f"{reverse_ip(REFUSED_V4)}.zen.test.": "127.255.255.254",
    f"{reverse_ip(LISTED_V6)}.zen.test.": "127.0.0.3",
    "spammy.example.dbl.test.": "127.0.1.2",
    "spammy.co.uk.dbl.test.": "127.0.1.2",
    f"{reverse_ip(SPAMHAUS_TYPO_V4)}.zen.spamhaus.org.": "127.255.255.252",
    f"{reverse_ip(SPAMHAUS_LIMIT_V4)}.zen.spamhaus.org.": "127.255.255.255",
    "iplit.example.dbl.spamhaus.org.": "127.0.1.255",
    "refused.example.multi.uribl.com.": "127.0.0.1",
    "phish.example.multi.surbl.org.": "127.0.0.24",
    "abuse.example.multi.surbl.org.": "127.0.0.64",
    "nine.example.custom.test.": "127.0.0.9",
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


def _filter(server: str, timeout: float = 1.0, deadline: float = 2.0, zones=ZONES, network=None) -> Filter:
    config = Config()
    config.dns = replace(config.dns, servers=[server], timeout=timeout, deadline=deadline)
    config.dnsbl = zones
    if network is not None:
        config.network = network
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


def _asked(resolver, since: int) -> list[str]:
    return [q.split(":", 1)[1] for q in resolver.queries[since:]]


def test_spamhaus_error_answers_are_refusals_never_listings(dns_server, caplog):
    caplog.set_level(logging.WARNING, logger="mailsift.rules")
    zen = Zone("RCVD_IN_ZEN", "zen.spamhaus.org", "ip", 3.0)
    dbl = Zone("URIBL_DBL", "dbl.spamhaus.org", "domain", 2.5)
    flt = _filter(dns_server[0], zones=[zen, dbl])
    for ip in (SPAMHAUS_TYPO_V4, SPAMHAUS_LIMIT_V4):
        hits = _names(flt.score(HAM, context=Context(client_ip=ip)))
        assert "RCVD_IN_ZEN" not in hits and hits["RCVD_IN_ZEN_REFUSED"] == 0.0
    body = HAM.replace(b"See you at noon.", b"http://iplit.example/")
    hits = _names(flt.score(body, context=Context()))
    assert "URIBL_DBL" not in hits and hits["URIBL_DBL_REFUSED"] == 0.0  # DBL's 127.0.1.255
    assert any("dbl.spamhaus.org refused the query" in r.getMessage() for r in caplog.records)


def test_uribl_query_refused_answer_does_not_count(dns_server):
    uribl = Zone("URIBL_BLACK", "multi.uribl.com", "domain", bitmask={2: [3.0, "black"]})
    body = HAM.replace(b"See you at noon.", b"http://www.refused.example/")
    hits = _names(_filter(dns_server[0], zones=[uribl]).score(body, context=Context()))
    assert "URIBL_BLACK" not in hits and "URIBL_BLACK_REFUSED" in hits


def test_configured_error_answers_replace_the_defaults(dns_server):
    body = HAM.replace(b"See you at noon.", b"http://nine.example/")
    plain = Zone("CUSTOM", "custom.test", "domain", 2.0)
    assert _names(_filter(dns_server[0], zones=[plain]).score(body))["CUSTOM"] == 2.0
    strict = Zone("CUSTOM", "custom.test", "domain", 2.0, errors=["127.0.0.8/30"])
    assert "CUSTOM" not in _names(_filter(dns_server[0], zones=[strict]).score(body))


def test_bitmask_list_scores_the_strongest_matching_sublist_once(dns_server):
    surbl = Zone("URIBL_SURBL", "multi.surbl.org", "domain", bitmask={8: [4.0, "PH"], 16: [3.0, "MW"]})
    flt = _filter(dns_server[0], zones=[surbl])
    v = flt.score(HAM.replace(b"See you at noon.", b"http://phish.example/login"))
    hit = [h for h in v.hits if h.name == "URIBL_SURBL"]
    assert len(hit) == 1 and hit[0].score == 4.0 and "PH+MW" in hit[0].description  # 127.0.0.24 = 8|16
    # 127.0.0.64 (ABUSE) is a sublist this rule does not use
    assert "URIBL_SURBL" not in _names(flt.score(HAM.replace(b"See you at noon.", b"http://abuse.example/")))


def test_ip_literal_url_hosts_never_go_to_domain_lists(dns_server):
    server, resolver = dns_server
    before = len(resolver.queries)
    body = HAM.replace(b"See you at noon.", f"http://{LISTED_V4}/x http://[2a01:4f8::1]/y".encode())
    _filter(server, zones=[ZONES[1]]).score(body, context=Context())
    asked = _asked(resolver, before)
    assert not any(LISTED_V4 in q or "2a01" in q for q in asked), asked


def test_domain_lists_get_the_registered_domain_from_the_public_suffix_list(dns_server):
    server, resolver = dns_server
    before = len(resolver.queries)
    body = HAM.replace(b"See you at noon.", b"http://a.b.www.spammy.co.uk/offer")
    v = _filter(server, zones=[ZONES[1]]).score(body, context=Context())
    assert _names(v)["URIBL_DBL"] == 2.5
    asked = [q for q in _asked(resolver, before) if "spammy" in q]
    assert asked == ["spammy.co.uk.dbl.test."], asked  # not co.uk, not the full host name


def test_last_external_scope_never_asks_about_earlier_relays(dns_server):
    raw = (
        b"Received: from relay.example (relay.example [81.2.69.99]) by mx.ours.example; Mon, 1 Jul 2024\r\n"
        + f"Received: from home.example (home.example [{LISTED_V4}]) by relay.example\r\n".encode()
        + HAM
    )
    pbl = Zone("RCVD_IN_PBL", "zen.test", "ip", 3.0)  # scope defaults to last-external
    assert "RCVD_IN_PBL" not in _names(
        _filter(dns_server[0], zones=[pbl]).score(raw, context=Context("81.2.69.99"))
    )


def test_private_and_loopback_clients_are_never_queried(dns_server):
    server, resolver = dns_server
    flt = _filter(server, zones=ZONES[:1])
    for ip in ("10.0.0.5", "127.0.0.1", "192.168.1.20", "fe80::1", "::1"):
        before = len(resolver.queries)
        v = flt.score(HAM, context=Context(client_ip=ip))
        assert _asked(resolver, before) == [], ip
        assert "INTERNAL_CLIENT" in _names(v)


def test_trusted_networks_move_the_check_to_the_host_before_our_relay(dns_server):
    raw = (
        f"Received: from mx2.ours.example (mx2.ours.example [{OUR_MX}]) by mx.ours.example\r\n"
        f"Received: from origin.example (origin.example [{LISTED_V4}]) by mx2.ours.example\r\n"
    ).encode() + HAM
    server, resolver = dns_server
    ours = NetworkConfig(trusted_networks=[OUR_NET])
    before = len(resolver.queries)
    v = _filter(server, zones=ZONES[:1], network=ours).score(raw, context=Context(client_ip=OUR_MX))
    assert _names(v)["RCVD_IN_ZEN"] == 3.5
    assert not any(q.startswith(reverse_ip(OUR_MX) + ".") for q in _asked(resolver, before))
    # without the setting our own backup MX is the last external host
    assert "RCVD_IN_ZEN" not in _names(
        _filter(server, zones=ZONES[:1]).score(raw, context=Context(client_ip=OUR_MX))
    )


def test_outbound_mail_skips_ip_lists_but_still_checks_url_domains(dns_server):
    body = HAM.replace(b"See you at noon.", b"http://www.spammy.example/")
    flt = _filter(dns_server[0], zones=ZONES[:2])
    for ctx in (
        Context(client_ip=LISTED_V4, source="LOCAL"),
        Context(client_ip=LISTED_V4, authenticated=True),
    ):
        hits = _names(flt.score(body, context=ctx))
        assert "RCVD_IN_ZEN" not in hits and hits["OUTBOUND_MAIL"] == 0.0
        assert hits["URIBL_DBL"] == 2.5
    assert "RCVD_IN_ZEN" in _names(flt.score(body, context=Context(client_ip=LISTED_V4, source="REMOTE")))


def test_dnsbl_and_network_settings_are_read_from_toml_and_checked(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[network]\ntrusted_networks = ["81.2.69.96/28"]\n'
        '[[dnsbl]]\nname = "URIBL_SURBL"\nzone = "multi.surbl.org"\nkind = "domain"\n'
        'bitmask = { 8 = [4.0, "PH"], 16 = [3.0, "MW"] }\n'
        '[[dnsbl]]\nname = "RCVD_IN_ZEN"\nzone = "zen.spamhaus.org"\nscope = "all-untrusted"\n'
        'errors = ["127.255.255.0/24"]\n'
    )
    config = load_config(str(cfg))
    assert config.network.trusted_networks == ["81.2.69.96/28"]
    assert config.dnsbl[0].bitmask == {8: [4.0, "PH"], 16: [3.0, "MW"]}
    assert config.dnsbl[1].scope == "all-untrusted" and config.dnsbl[1].errors == ["127.255.255.0/24"]
    bad = {
        '[network]\ntrusted_networks = ["81.2.69.300/28"]\n': "network.trusted_networks",
        '[[dnsbl]]\nname = "X"\nzone = "z.test"\nscope = "everyone"\n': "scope must be",
        '[[dnsbl]]\nname = "X"\nzone = "z.test"\nkind = "domain"\nscope = "all-untrusted"\n': "for ip",
        '[[dnsbl]]\nname = "X"\nzone = "z.test"\nbitmask = { 3 = [1.0, "x"] }\n': "power of two",
        '[[dnsbl]]\nname = "X"\nzone = "z.test"\nerrors = ["10.0.0.1"]\n': "inside 127.0.0.0/8",
        '[[dnsbl]]\nname = "X"\nzone = "z.test"\ncodes = { "127.0.0.2" = [1.0, "a"] }\n'
        'bitmask = { 2 = [1.0, "b"] }\n': "not both",
        '[auth]\ntrusted_arc_sealers = [""]\n': "auth.trusted_arc_sealers",
    }
    for text, message in bad.items():
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(cfg))


def _dns_metrics(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("mailsift_dns_cache"):
                out[sample.name + "".join(f":{v}" for v in sample.labels.values())] = sample.value
    return out


@pytest.mark.parametrize("workers", [1, -1], ids=["worker-process", "thread"])
def test_the_dns_cache_hit_rate_reaches_the_service_metrics(dns_server, workers):
    """The cache lives in the scoring process: each verdict brings its
    lookups back, so /metrics shows the whole pool's hit rate."""
    import asyncio

    from mailsift.serve import Service

    config = _filter(dns_server[0], zones=ZONES[:2]).config  # SERVFAIL answers are not cached
    context = Context(client_ip="81.2.69.51")

    async def go():
        service = Service(config, str(DEFAULT_MODEL), workers=workers)
        try:
            await service.score(HAM, context, door="test")
            first = _dns_metrics(service.metrics.render().decode())
            await service.score(HAM, context, door="test")
            return first, _dns_metrics(service.metrics.render().decode())
        finally:
            await service.close()

    first, second = asyncio.run(go())
    misses = first["mailsift_dns_cache_lookups_total:miss"]
    assert misses >= 1 and first["mailsift_dns_cache_lookups_total:hit"] == 0
    assert first["mailsift_dns_cache_hit_ratio"] == 0.0
    # the same message again: every lookup of the first is answered from the cache
    assert second["mailsift_dns_cache_lookups_total:miss"] == misses
    assert second["mailsift_dns_cache_lookups_total:hit"] == misses
    assert second["mailsift_dns_cache_hit_ratio"] == 0.5
