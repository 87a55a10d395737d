"""The SMTP door against what a new admin's trial threw at it: bytes that are
not UTF-8 in addresses, more connections than max_sessions, bad or late
XFORWARD, a relay address that is the proxy itself, SIGTERM with idle
sessions.  Real SMTP over loopback (smtplib as the MTA, an aiosmtpd sink as
the next hop)."""

from __future__ import annotations

import logging
import smtplib
import socket
from dataclasses import replace

import pytest
from aiosmtpd.smtp import Session
from conftest import HAM, ProxyThread, free_port

from mailsift.config import Config, ConfigError
from mailsift.proxy import ProxyServer


def _client(proxy: ProxyThread) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", proxy.port, timeout=10)


def _tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.mark.parametrize("command", ["MAIL FROM:<a\xff@example.com>", "RCPT TO:<b\xfe@example.net>"])
def test_an_address_that_is_not_utf8_gets_a_clean_553(make_proxy, sink, caplog, command):
    proxy = make_proxy()
    caplog.set_level("INFO")
    with _client(proxy) as c:
        c.ehlo()
        if command.startswith("RCPT"):
            assert c.docmd("MAIL FROM:<s@example.org>")[0] == 250
        c.send(command.encode("latin-1") + b"\r\n")  # the raw byte 0xff/0xfe, as a hostile client sends it
        code, text = c.getreply()
        assert code == 553 and b"not UTF-8" in text, (code, text)
        assert c.noop()[0] == 250  # the session goes on
    assert not _tracebacks(caplog)
    assert sink.received == []


def test_connections_over_max_sessions_get_421_and_one_log_line_each(make_proxy, sink, caplog):
    proxy = make_proxy(max_sessions=3)
    caplog.set_level("INFO")
    socks = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            socks.append(s)
        banners = [s.recv(200) for s in socks]
        assert sum(b.startswith(b"220") for b in banners) == 3
        assert [b for b in banners if not b.startswith(b"220")] == [
            b"421 4.3.2 too many connections, try again later\r\n"
        ] * 2
    finally:
        for s in socks:
            s.close()
    with _client(proxy) as c:  # the three counted sessions were given back
        assert c.noop()[0] == 250
    refused = [r for r in caplog.records if "too many sessions" in r.getMessage()]
    assert len(refused) == 2, [r.getMessage() for r in caplog.records]
    assert all("max_sessions=3" in r.getMessage() for r in refused)
    assert not _tracebacks(caplog), [r.getMessage() for r in _tracebacks(caplog)]


@pytest.mark.parametrize(
    "attrs",
    ["ADDR=not-an-ip", "ADDR=999.1.1.1", "PORT=http", "PORT=70000", "SOURCE=ELSEWHERE", "PROTO=UUCP"],
)
def test_xforward_with_a_bad_value_is_refused_and_changes_nothing(make_proxy, sink, caplog, attrs):
    proxy = make_proxy()
    caplog.set_level("INFO", logger="mailsift.proxy")
    with _client(proxy) as c:
        c.ehlo()
        assert c.docmd("XFORWARD ADDR=203.0.113.9")[0] == 250
        assert c.docmd(f"XFORWARD HELO=mx.example {attrs}")[0] == 501
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    line = [r.getMessage() for r in caplog.records if "outcome=" in r.getMessage()][-1]
    assert " client=203.0.113.9 " in line and "mx.example" not in line


def test_good_xforward_values_are_taken(make_proxy, sink, caplog):
    proxy = make_proxy()
    caplog.set_level("INFO", logger="mailsift.proxy")
    with _client(proxy) as c:
        c.ehlo()
        assert c.docmd("XFORWARD ADDR=IPV6:2001:db8::1 PORT=25 PROTO=ESMTP SOURCE=REMOTE")[0] == 250
        assert c.docmd("XFORWARD NAME=[UNAVAILABLE] HELO=mx.example IDENT=4XyZ")[0] == 250
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    line = [r.getMessage() for r in caplog.records if "outcome=" in r.getMessage()][-1]
    assert line.startswith("4XyZ client=IPV6:2001:db8::1 ")


def test_xforward_inside_a_transaction_gets_503(make_proxy, sink):
    proxy = make_proxy()
    with _client(proxy) as c:
        c.ehlo()
        assert c.docmd("MAIL FROM:<s@example.org>")[0] == 250
        assert c.docmd("XFORWARD ADDR=203.0.113.9")[0] == 503
        assert c.docmd("RCPT TO:<a@example.net>")[0] == 250
        assert c.docmd("XFORWARD ADDR=203.0.113.9")[0] == 503
        assert c.rset()[0] == 250
        assert c.docmd("XFORWARD ADDR=203.0.113.9")[0] == 250  # between transactions: fine


def test_xforward_is_offered_only_to_loopback_clients():
    from mailsift.proxy import _xforward_allowed

    # tests never leave 127.0.0.0/8, so a remote peer is a Session with its address
    for peer, allowed in [("127.0.0.1", True), ("::1", True), ("192.0.2.7", False), ("2001:db8::7", False)]:
        session = Session(loop=None)
        session.peer = (peer, 4711)
        assert _xforward_allowed(session) is allowed, peer


@pytest.mark.parametrize(
    "listen, relay",
    [
        ("127.0.0.1:10025", "127.0.0.1:10025"),
        ("localhost:10025", "127.0.0.1:10025"),
        ("0.0.0.0:10025", "127.0.0.1:10025"),
    ],
)
def test_relaying_to_the_proxys_own_listen_address_is_refused_at_start(listen, relay):
    config = Config()
    config.proxy = replace(config.proxy, listen=listen, relay=relay, allow_non_loopback=True)
    with pytest.raises(ConfigError, match="loop back into mailsift"):
        ProxyServer(config, workers=-1)


def test_a_different_port_is_not_a_loop():
    config = Config()
    config.proxy = replace(config.proxy, listen="127.0.0.1:10025", relay=f"127.0.0.1:{free_port()}")
    ProxyServer(config, workers=-1).scorer.close()


def test_serve_with_relay_equal_to_listen_exits_78(tmp_path):
    import os
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
    env.pop("MAILSIFT_CONFIG", None)
    addr = f"127.0.0.1:{port}"
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "serve", "--listen", addr, "--relay", addr],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert "loop back into mailsift" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_tells_idle_sessions_421_at_once_and_lets_transactions_finish(tmp_path, sink):
    """Postfix keeps cached connections open between messages: on SIGTERM
    they hear 421 at once instead of holding the shutdown for relay_timeout
    (60 s) and then being dropped; the session with a transaction in flight
    still completes and gets its 250."""
    import signal
    import time

    from test_serve import Served

    from mailsift.filter import DEFAULT_MODEL

    srv = Served(tmp_path, sink, DEFAULT_MODEL)
    try:
        idle = srv.client()
        idle.ehlo()
        with srv.client() as warm:  # an idle session that already delivered a message
            warm.sendmail("s@example.org", ["a@example.net"], HAM)
            busy = srv.client()
            busy.ehlo()
            assert busy.mail("s@example.org")[0] == 250
            assert busy.rcpt("a@example.net")[0] == 250
            srv.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            for c in (idle, warm):
                c.sock.settimeout(5)
                assert c.getreply() == (421, b"4.3.2 shutting down")
            assert time.monotonic() - signalled < 1.5
            assert busy.data(HAM)[0] == 250  # the transaction in flight completes
            assert busy.getreply()[0] == 421  # and then its session is closed too
        assert srv.proc.wait(20) == 0
        assert time.monotonic() - signalled < 5  # not relay_timeout (60 s)
        assert len(sink.received) == 2
        assert "still open" not in srv.log_text()
    finally:
        srv.stop()
