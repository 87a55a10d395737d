"""The SMTP content filter, over real SMTP on loopback: smtplib as the MTA in
front, an aiosmtpd sink as the next hop behind."""

from __future__ import annotations

import smtplib
import socket
import time
from dataclasses import replace

import pytest
from conftest import HAM, ProxyThread, free_port

from mailsift.config import Config, ConfigError
from mailsift.filter import Filter
from mailsift.proxy import ProxyServer, Scorer


def _client(proxy: ProxyThread) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", proxy.port, timeout=10)


def test_proxy_relays_with_headers_and_the_same_envelope(make_proxy, sink, sa_test):
    proxy = make_proxy()
    spam = [i for i in sa_test if i.spam][0].read()
    with _client(proxy) as c:
        c.sendmail("sender@example.org", ["a@example.net", "b@example.net"], HAM)
        c.sendmail("", ["c@example.net"], spam)  # null sender, as bounces use
    assert [(f, r) for f, r, _ in sink.received] == [
        ("sender@example.org", ["a@example.net", "b@example.net"]),
        ("<>", ["c@example.net"]),
    ]
    ham_out, spam_out = sink.received[0][2], sink.received[1][2]
    assert b"X-Spam-Status: No, score=" in ham_out and b"X-Spam-Flag" not in ham_out
    assert ham_out.endswith(HAM)
    assert b"X-Spam-Flag: YES" in spam_out and b"X-Spam-Status: Yes, score=" in spam_out
    assert b"X-Mailsift-Report: p=" in spam_out


def test_forged_spam_headers_from_outside_are_replaced(make_proxy, sink):
    proxy = make_proxy()
    forged = (
        b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-100\r\n\tfolded=yes\r\n"
        b"X-Spam-Checker-Version: SpamAssassin 4.0.0 on mx.elsewhere.example\r\n"
        b"x-spam-level: ***\r\nX-Spam-Report: all fine\r\n" + HAM
    )
    with _client(proxy) as c:
        c.sendmail("s@example.org", ["a@example.net"], forged)
    out = sink.received[0][2]
    assert out.count(b"X-Spam-Status:") == 1 and b"score=-100" not in out and b"folded" not in out
    assert b"X-Spam-Flag: NO" not in out
    assert b"Checker-Version" not in out and b"all fine" not in out and b"***" not in out
    assert out.endswith(HAM)


def test_spam_level_stars_are_written_as_spamassassin_does(make_proxy, sink, sa_test):
    """One star per whole point, so procmail's ^X-Spam-Level: \\*\\*\\*\\*\\* works."""
    import email

    proxy = make_proxy()
    spam = [i for i in sa_test if i.spam][0].read()
    with _client(proxy) as c:
        c.sendmail("s@example.org", ["a@example.net"], spam)
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    for _, _, content in sink.received:
        msg = email.message_from_bytes(content)
        score = float(msg["X-Spam-Score"])
        assert msg["X-Spam-Level"] == "*" * max(0, min(50, int(score)))
    assert float(email.message_from_bytes(sink.received[0][2])["X-Spam-Score"]) >= 5


def test_proxy_tempfails_when_next_hop_down(make_proxy, sink, caplog):
    proxy = make_proxy(relay=f"127.0.0.1:{free_port()}")
    caplog.set_level("INFO")
    with _client(proxy) as c:
        c.ehlo()
        code, msg = c.mail("s@example.org")
        assert code == 451 and b"next hop unavailable" in msg
        assert c.mail("s@example.org")[0] == 451  # tried again, still down
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down) == 2 and all(r.levelname == "WARNING" for r in down)
    assert "at EHLO" in down[0].getMessage() and "Errno 111" in down[0].getMessage()
    assert proxy.server.handler.stats.relay_failures == 2


def test_proxy_tempfails_when_next_hop_answers_4xx(make_proxy, sink):
    sink.data_reply = "452 4.3.1 insufficient system storage"
    proxy = make_proxy()
    with _client(proxy) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert err.value.smtp_code == 451 and b"452" in err.value.smtp_error
    assert sink.received == []


def test_proxy_tempfails_when_next_hop_is_slower_than_data_timeout(make_proxy, sink):
    sink.data_delay = 3.0
    proxy = make_proxy(data_timeout=1.0)
    with _client(proxy) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert err.value.smtp_code == 451


def test_end_of_data_waits_data_timeout_not_relay_timeout(make_proxy, sink):
    """RFC 5321 4.5.3.2 gives the final dot 10 minutes: a next hop slower
    than the per-command relay_timeout (2 s here) still gets the message,
    once, instead of a 451 after which Postfix would send it again."""
    assert Config().proxy.data_timeout == 600.0
    sink.data_delay = 3.0
    proxy = make_proxy(data_timeout=10.0)
    with _client(proxy) as c:
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert len(sink.received) == 1


def test_proxy_passes_5xx_from_next_hop_unchanged(make_proxy, sink):
    sink.refuse_rcpt = {"gone@example.net"}
    proxy = make_proxy()
    with _client(proxy) as c:
        refused = c.sendmail("s@example.org", ["gone@example.net", "here@example.net"], HAM)
    assert refused == {"gone@example.net": (550, b"5.1.1 no such user here")}
    assert [r for _, r, _ in sink.received] == [["here@example.net"]]
    sink.data_reply = "554 5.7.1 content refused"
    with _client(proxy) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("s@example.org", ["here@example.net"], HAM)
    assert err.value.smtp_code == 554 and err.value.smtp_error == b"5.7.1 content refused"


@pytest.mark.parametrize(
    "rcpt",
    [
        "<@relay.example:u@example.org>",
        "<@a.example,@b.example:u@example.org>",
        "@relay.example:u@example.org",
        "< @relay.example:u@example.org>",
        "<victim%elsewhere.example@example.net>",
        "<host!victim@example.net>",
    ],
)
def test_proxy_refuses_source_routes_and_routing_tricks(make_proxy, sink, rcpt):
    """Sent byte for byte (smtplib would rewrite the address first): aiosmtpd
    alone strips a source route and accepts the rest."""
    proxy = make_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"HELO client\r\n")
        assert f.readline().startswith(b"250")
        s.sendall(b"MAIL FROM:<s@example.org>\r\n")
        assert f.readline().startswith(b"250")
        s.sendall(b"RCPT TO:" + rcpt.encode() + b"\r\n")
        reply = f.readline()
        s.sendall(b"RCPT TO:<fine@example.net>\r\nDATA\r\n")
        assert f.readline().startswith(b"250")
        assert f.readline().startswith(b"354")
        s.sendall(HAM + b".\r\nQUIT\r\n")
        assert f.readline().startswith(b"250")
    assert reply.startswith(b"553 5.7.1"), reply
    assert [r for _, r, _ in sink.received] == [["fine@example.net"]]


def test_no_auth_is_offered_and_auth_gets_502(make_proxy, sink):
    proxy = make_proxy()
    with _client(proxy) as c:
        c.ehlo()
        assert not c.has_extn("auth")
        assert c.docmd("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=")[0] == 502
        assert c.docmd("AUTH LOGIN")[0] == 502
        c.sendmail("s@example.org", ["a@example.net"], HAM)  # and the session goes on
    assert len(sink.received) == 1


def test_dsn_is_offered_only_when_the_next_hop_offers_it(make_proxy, sink, dsn_sink):
    with _client(make_proxy()) as c:
        c.ehlo()
        assert not c.has_extn("dsn")
        assert c.mail("s@example.org", ["RET=HDRS"])[0] == 555  # not offered, not accepted
    with _client(make_proxy(relay=f"127.0.0.1:{dsn_sink.port}")) as c:
        c.ehlo()
        assert c.has_extn("dsn")


def test_dsn_parameters_reach_the_next_hop_as_sent(make_proxy, dsn_sink):
    proxy = make_proxy(relay=f"127.0.0.1:{dsn_sink.port}")
    with _client(proxy) as c:
        c.ehlo()
        assert c.mail("s@example.org", ["RET=HDRS", "ENVID=Q1x+2Bz"])[0] == 250
        assert c.rcpt("a@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;A@Example.NET"])[0] == 250
        assert c.rcpt("b@example.net", ["NOTIFY=NEVER"])[0] == 250
        assert c.rcpt("c@example.net", ["NOTIFY=SOMETIMES"])[0] == 501
        assert c.data(HAM)[0] == 250
    assert dsn_sink.dsn == [
        (
            ["RET=HDRS", "ENVID=Q1x+2Bz"],
            [["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;A@Example.NET"], ["NOTIFY=NEVER"]],
        )
    ]
    assert [r for _, r, _ in dsn_sink.received] == [["a@example.net", "b@example.net"]]


def test_workers_get_the_whole_message_and_xforward_source(make_proxy, sink, monkeypatch):
    """DKIM is computed over the whole message: the scorer gets all of a
    700 KB message (the parser still reads only its head), and Postfix's
    XFORWARD SOURCE reaches the rules."""
    seen = []
    real = Filter.score

    def spy(self, raw, evidence=6, context=None, user=None):
        seen.append((len(raw), context))
        return real(self, raw, evidence, context, user)

    monkeypatch.setattr(Filter, "score", spy)
    proxy = make_proxy()
    big = HAM + (b"x" * 76 + b"\r\n") * 9000  # ~700 KB
    with _client(proxy) as c:
        c.ehlo()
        assert c.docmd("XFORWARD ADDR=203.0.113.9 SOURCE=LOCAL")[0] == 250
        c.sendmail("s@example.org", ["a@example.net"], big)
    assert seen[0][0] == len(big) > 512 * 1024
    assert seen[0][1].source == "LOCAL" and seen[0][1].client_ip == "203.0.113.9"
    assert sink.received[0][2].endswith(big)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0", "mail.example.org:0"])
def test_a_listen_address_beyond_loopback_is_refused_unless_allowed(listen):
    config = Config()
    config.proxy = replace(config.proxy, listen=listen)
    with pytest.raises(ConfigError, match="not a loopback address.*allow_non_loopback"):
        ProxyServer(config, workers=-1)
    config.proxy = replace(config.proxy, allow_non_loopback=True)
    ProxyServer(config, workers=-1).scorer.close()  # allowed (not started: tests stay on loopback)


def test_proxy_answers_552_to_oversize_mail(make_proxy, sink):
    proxy = make_proxy(max_message_size=10_000)
    with _client(proxy) as c:
        c.ehlo()
        assert c.esmtp_features["size"] == "10000"
        code, _ = c.mail("s@example.org", ["SIZE=20000"])
        assert code == 552
        # a client that does not declare SIZE is stopped at DATA
        assert c.mail("s@example.org")[0] == 250
        assert c.rcpt("a@example.net")[0] == 250
        code, _ = c.data(HAM + (b"x" * 70 + b"\r\n") * 300)
        assert code == 552
    assert sink.received == []


def test_dot_stuffing_8bit_and_smtputf8_arrive_intact(make_proxy, sink):
    proxy = make_proxy()
    body = "Subject: Grüße\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\nÄÖÜ €\r\n".encode()
    with _client(proxy) as c:
        c.ehlo()
        assert c.has_extn("smtputf8") and c.has_extn("8bitmime")
        c.sendmail("jörg@example.de", ["zoë@example.net"], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    sender, rcpts, content = sink.received[0]
    assert (sender, rcpts) == ("jörg@example.de", ["zoë@example.net"])
    assert content.endswith(body)


def test_pipelined_commands_get_every_reply(make_proxy, sink):
    proxy = make_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # greeting
        s.sendall(
            b"EHLO client\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.net>\r\n"
            b"RCPT TO:<b@example.net>\r\nDATA\r\n"
        )
        lines = []
        while not lines or not lines[-1].startswith(b"354"):
            lines.append(f.readline())
        s.sendall(HAM + b".\r\nQUIT\r\n")
        final = [f.readline(), f.readline()]
    codes = [ln[:3] for ln in lines if ln[3:4] == b" "]
    assert codes == [b"250", b"250", b"250", b"250", b"354"]
    assert final[0].startswith(b"250") and final[1].startswith(b"221")
    assert [r for _, r, _ in sink.received] == [["a@example.net", "b@example.net"]]


def test_client_that_disconnects_mid_data_delivers_nothing_and_breaks_nothing(make_proxy, sink):
    proxy = make_proxy()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        for cmd in (
            b"HELO x\r\n",
            b"MAIL FROM:<s@example.org>\r\n",
            b"RCPT TO:<a@example.net>\r\n",
            b"DATA\r\n",
        ):
            s.sendall(cmd)
            f.readline()
        s.sendall(b"Subject: half\r\n\r\nthe first half of a mess")
    time.sleep(0.3)
    assert sink.received == []
    with _client(proxy) as c:  # the proxy still works
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert len(sink.received) == 1


def test_garbage_commands_are_answered_and_the_session_survives(make_proxy, sink):
    proxy = make_proxy()
    with _client(proxy) as c:
        assert c.docmd("FROBNICATE")[0] == 500
        assert c.docmd("X" * 2000)[0] == 500
        assert c.docmd("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=")[0] == 502
        assert c.docmd("RCPT TO:<a@example.net>")[0] == 503
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert len(sink.received) == 1


def test_scoring_failure_passes_the_message_marked_unknown(make_proxy, sink, monkeypatch):
    async def boom(self, raw, deadline, context=None, user=None):
        raise RuntimeError("injected")

    monkeypatch.setattr(Scorer, "score", boom)
    proxy = make_proxy()
    with _client(proxy) as c:
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert b"X-Spam-Status: Unknown" in sink.received[0][2]


def test_scoring_failure_tempfails_when_configured(make_proxy, sink, monkeypatch):
    async def slow(self, raw, deadline, context=None, user=None):
        raise TimeoutError

    monkeypatch.setattr(Scorer, "score", slow)
    proxy = make_proxy(on_scoring_error="tempfail")
    with _client(proxy) as c, pytest.raises(smtplib.SMTPDataError) as err:
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert err.value.smtp_code == 451
    assert sink.received == []


def test_before_queue_mode_rejects_spam_while_the_sender_is_connected(make_proxy, sink, sa_test):
    proxy = make_proxy(mode="before-queue")
    proxy.server.config.thresholds.reject = 6.0  # the default model alone stays under 7.5
    spam = [i for i in sa_test if i.spam][0].read()
    with _client(proxy) as c:
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("s@example.org", ["a@example.net"], spam)
        c.sendmail("s@example.org", ["a@example.net"], HAM)  # the session goes on
    assert err.value.smtp_code == 550 and b"spam" in err.value.smtp_error
    assert len(sink.received) == 1 and sink.received[0][2].endswith(HAM)


def test_sessions_over_the_limit_are_told_421(make_proxy, sink):
    proxy = make_proxy(max_sessions=1)
    with _client(proxy):
        with pytest.raises(smtplib.SMTPConnectError) as err:
            _client(proxy)
        assert err.value.smtp_code == 421


def test_xforward_is_offered_and_its_client_is_logged(make_proxy, sink, caplog):
    proxy = make_proxy()
    caplog.set_level("INFO", logger="mailsift.proxy")
    with _client(proxy) as c:
        c.ehlo()
        assert c.has_extn("xforward")
        assert c.docmd("XFORWARD ADDR=203.0.113.9 HELO=mx.sender.example IDENT=4XyZ123")[0] == 250
        assert c.docmd("XFORWARD BOGUS=1")[0] == 501
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    line = [r.getMessage() for r in caplog.records if "outcome=" in r.getMessage()][-1]
    assert line.startswith("4XyZ123 client=203.0.113.9 ") and "outcome=relay" in line


def test_every_message_the_filter_accepted_reached_the_next_hop(make_proxy, sink):
    """The never-lose-mail property, under a next hop that fails at random:
    a 250 from the filter always means the next hop has the message."""
    import random

    rng = random.Random(1)
    proxy = make_proxy(relay_timeout=0.5, data_timeout=0.5)
    accepted = []
    for n in range(40):
        choice = rng.random()
        sink.data_reply = "451 4.3.0 try later" if choice < 0.25 else None
        sink.data_delay = 1.0 if 0.25 <= choice < 0.35 else 0.0
        msg = HAM.replace(b"lunch", f"lunch {n}".encode())
        try:
            with _client(proxy) as c:
                c.sendmail("s@example.org", ["a@example.net"], msg)
            accepted.append(msg)
        except smtplib.SMTPDataError as err:
            assert err.smtp_code == 451
    delivered = [content for _, _, content in sink.received]
    assert accepted, "some messages must get through"
    assert len(accepted) < 40, "some must have been tempfailed"
    for msg in accepted:
        assert sum(d.endswith(msg) for d in delivered) >= 1


@pytest.mark.parametrize("setting, code", [("reject", 550), ("discard", 250)])
def test_after_queue_rejects_or_discards_at_reject_threshold(make_proxy, sink, sa_test, setting, code):
    proxy = make_proxy(**{setting: True})
    proxy.server.config.thresholds.reject = 6.0
    spam = [i for i in sa_test if i.spam][0].read()
    with _client(proxy) as c:
        c.ehlo()
        assert c.mail("s@example.org")[0] == 250
        assert c.rcpt("a@example.net")[0] == 250
        assert c.data(spam)[0] == code
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert [content.endswith(HAM) for _, _, content in sink.received] == [True]


def test_proxy_tempfails_when_next_hop_vanishes_between_rcpt_and_data(make_proxy, sink):
    proxy = make_proxy()
    with _client(proxy) as c:
        c.ehlo()
        assert c.mail("s@example.org")[0] == 250
        assert c.rcpt("a@example.net")[0] == 250
        sink.controller.stop()
        code, _ = c.data(HAM)
    assert code == 451
    assert sink.received == []


def test_idle_clients_are_disconnected_after_the_command_timeout(make_proxy, sink):
    proxy = make_proxy(command_timeout=0.5)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"HELO slow.example\r\n")
        assert f.readline().startswith(b"250")
        time.sleep(1.5)
        rest = f.read()  # the proxy closed the connection
    assert rest == b"" or rest.startswith(b"421")


def test_json_log_line_per_message(make_proxy, sink, caplog):
    import json

    proxy = make_proxy(log_format="json")
    caplog.set_level("INFO", logger="mailsift.proxy")
    with _client(proxy) as c:
        c.sendmail("s@example.org", ["a@example.net", "b@example.net"], HAM)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    assert len(records) == 1
    rec = records[0]
    assert rec["from"] == "s@example.org" and rec["to"] == ["a@example.net", "b@example.net"]
    assert rec["outcome"] == "relay" and rec["action"] == "accept" and rec["ms"] > 0


@pytest.mark.parametrize("on_error, code", [("tempfail", 451), ("pass", 250)])
def test_message_past_the_deadline_costs_its_worker_and_gets_on_scoring_error(sink, on_error, code):
    """A real worker process stuck on a message (its DNS server never
    answers) is killed at scoring_deadline and replaced; the message gets
    on_scoring_error, and the next one is scored by the replacement."""
    from mailsift.rules import Zone

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    config = Config()
    config.proxy = replace(
        config.proxy,
        listen="127.0.0.1:0",
        relay=f"127.0.0.1:{sink.port}",
        scoring_deadline=1.0,
        on_scoring_error=on_error,
    )
    config.dns.servers, config.dns.timeout, config.dns.deadline = (
        [f"127.0.0.1:{silent.getsockname()[1]}"],
        30.0,
        30.0,
    )
    config.dnsbl = [Zone(name="RCVD_IN_TEST", zone="bl.test.example")]
    proxy = ProxyThread(config, workers=1)
    try:
        [stuck] = proxy.server.scorer.pool.pids
        with _client(proxy) as c:
            c.ehlo()
            assert c.docmd("XFORWARD ADDR=81.2.69.160")[0] == 250
            assert c.mail("s@example.org")[0] == 250
            assert c.rcpt("a@example.net")[0] == 250
            started = time.monotonic()
            assert c.data(HAM)[0] == code
            assert time.monotonic() - started < 5
        with _client(proxy) as c:  # a new session, no client address: no DNS
            c.sendmail("s@example.org", ["a@example.net"], HAM)
        stats = proxy.server.handler.stats
        assert stats.scoring_errors == 1 and stats.pool.timed_out == 1
        assert stuck not in proxy.server.scorer.pool.pids
    finally:
        proxy.stop()
        silent.close()
    statuses = [c.split(b"X-Spam-Status: ")[1].split(b",")[0] for _, _, c in sink.received]
    assert statuses == ([b"No"] if on_error == "tempfail" else [b"Unknown", b"No"])
