"""A DNS server that never answers, under a burst: every message is still
scored (none passes 'Unknown, unscanned'), at normal speed once the
resolver's circuit breaker is open.  Real parts: a UDP socket on 127.0.0.1
that reads queries and never replies, `mailsift serve` with two workers,
30 SMTP clients at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import email
import socket
import time

import pytest
from conftest import HAM
from test_serve import Served

from mailsift.filter import DEFAULT_MODEL
from mailsift.rules import resolver as resolver_mod
from mailsift.rules.resolver import TIMEOUT, Resolver


@pytest.fixture
def silent_dns():
    """A UDP port on loopback that takes DNS queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _send(port: int, n: int) -> str:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
        c.ehlo()
        assert c.docmd("XFORWARD ADDR=81.2.69.160 HELO=mx.example.org")[0] == 250
        c.sendmail("s@example.org", ["a@example.net"], HAM.replace(b"lunch-1", b"lunch-%d" % n))
    return "ok"


def test_a_burst_during_a_dns_outage_is_scored_not_passed_unscanned(tmp_path, sink, silent_dns):
    config = f'[auth]\nenabled = true\n[dns]\nservers = ["{silent_dns}"]\n'
    srv = Served(tmp_path, sink, DEFAULT_MODEL, config, ("--workers", "2"))
    try:
        srv.wait_for_workers(2)
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            assert list(pool.map(lambda n: _send(srv.port, n), range(30))) == ["ok"] * 30
        took = time.monotonic() - start
        statuses = [email.message_from_bytes(m[2])["X-Spam-Status"] for m in sink.received]
        assert len(statuses) == 30
        assert not [s for s in statuses if s.startswith("Unknown")], statuses
        assert sum("DNS_UNAVAILABLE" in s for s in statuses) >= 20, statuses
        # two workers, each paying the 2 s DNS deadline for its first two messages at most
        assert took < 15, took
        log = srv.log_text()
        assert 1 <= log.count("did not answer 3 lookups in a row") <= 2, log  # once per worker
    finally:
        srv.stop()


def test_the_breaker_opens_after_timeouts_skips_lookups_and_closes_on_an_answer(silent_dns, monkeypatch):
    async def run() -> None:
        r = Resolver([silent_dns], timeout=0.2)
        for _ in range(resolver_mod.TRIP_AFTER):
            assert (await r.query("a.example.org")).status == TIMEOUT
        assert r.breaker.is_open and r.queries == resolver_mod.TRIP_AFTER
        t = time.monotonic()
        answer = await r.query("b.example.org")
        assert answer.status == TIMEOUT and "DNS unavailable" in answer.detail
        assert time.monotonic() - t < 0.05 and r.queries == resolver_mod.TRIP_AFTER and r.skipped == 1
        # after the back-off one probe goes out; it fails: the back-off doubles
        r.breaker.open_until = 0.0
        assert (await r.query("c.example.org")).status == TIMEOUT
        assert (
            r.queries == resolver_mod.TRIP_AFTER + 1 and r.breaker.backoff == 2 * resolver_mod.BACKOFF_FIRST
        )
        # an answer (any: here the probe's) closes it
        r.breaker.open_until = 0.0
        r.breaker.answered()
        assert not r.breaker.is_open and r.breaker.backoff == resolver_mod.BACKOFF_FIRST

    asyncio.run(run())


def test_waiting_for_a_busy_worker_is_a_tempfail_not_a_killed_worker(silent_dns):
    """One worker held by a slow message: a message that finds no free
    worker within its window gets PoolBusy (the proxy answers 451 and the
    MTA retries), and the busy worker, which did not overrun, is not killed."""
    from dataclasses import replace

    from mailsift.config import Config
    from mailsift.pool import PoolBusy
    from mailsift.proxy import Scorer
    from mailsift.rules import Context, Zone

    config = Config()
    config.dns = replace(config.dns, servers=[silent_dns], timeout=10.0, deadline=1.5)
    config.dnsbl = [Zone(name="RCVD_IN_TEST", zone="bl.test.example")]
    scorer = Scorer(config, None, 1)
    try:

        async def go():
            slow = asyncio.create_task(scorer.score(HAM, 10, Context(client_ip="81.2.69.161")))
            await asyncio.sleep(0.3)
            with pytest.raises(PoolBusy):
                await scorer.score(HAM, 0.5)
            return await slow

        verdict = asyncio.run(go())
        assert "DNS_DEADLINE" in [h.name for h in verdict.hits]
        assert scorer.stats.timed_out == 0 and scorer.stats.died == 0
    finally:
        scorer.close()
